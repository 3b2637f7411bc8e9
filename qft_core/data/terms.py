"""The cryptography term dictionary: load it from YAML, find its terms in Chinese and English text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qft_core.config import PathsConfig
from qft_core.data.chinese import to_halfwidth
from qft_core.data.normalize import to_simplified
from qft_core.records import CryptoTerm

TERM_CATEGORIES = (
    "classical",
    "symmetric",
    "asymmetric",
    "hash_mac",
    "signature",
    "key_exchange",
    "pki_protocol",
    "cryptanalysis",
    "post_quantum",
    "chinese_standard",
    "fundamentals",
)

MIN_SURFACE_LENGTH = 2

_ID_PATTERN = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_WORD_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NOT_WORD_BEFORE = r"(?<![0-9A-Za-z_])"
_NOT_WORD_AFTER = r"(?![0-9A-Za-z_])"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Beyond to_halfwidth, the matcher folds full-width punctuation ("ＧＭ／Ｔ", "ＡＥＳ－１２８") and dash
# look-alikes ("Diffie–Hellman") to ASCII; the em dash stays, Chinese uses "——" as its own mark.
_MATCH_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F) if not chr(code - 0xFEE0).isalnum()}
_MATCH_FOLD |= {code: ord("-") for code in (0x2010, 0x2011, 0x2012, 0x2013, 0x2212)}
_MATCH_FOLD[0x00A0] = ord(" ")
# Chinese text has few characters to fold (its commas and parentheses): replacing just those is some ten times
# faster than translating every character.
_FOLDED = {chr(code): chr(folded) for code, folded in _MATCH_FOLD.items()}
_FOLDABLE = re.compile(f"[{re.escape(''.join(sorted(_FOLDED)))}]")
# Trie nodes with more children than this get them in guarded groups (see _alternatives).
_TRIE_FAN_OUT = 8


class TermDictionaryError(ValueError):
    """A term dictionary that does not validate; the message names the file, line, entry and id."""


@dataclass(frozen=True, slots=True)
class TermMatch:
    """One occurrence of a term: `surface` is exactly `text[start:end]` of the searched text."""

    term_id: str
    surface: str
    start: int
    end: int


# Evaluation reads the same answer with the dictionary and with the fact base: the last few views are kept.
@lru_cache(maxsize=8)
def matching_view(text: str) -> str:
    """The text as the matcher sees it, character for character the same length as `text`.

    Full-width letters, digits and punctuation become half-width, dash look-alikes become '-', and
    traditional characters become simplified ones when that keeps the length (it almost always
    does), so positions in the view are positions in the original text.
    """
    view = _FOLDABLE.sub(_fold, to_halfwidth(text))
    simplified = to_simplified(view)
    return simplified if len(simplified) == len(view) else view


def _fold(match: re.Match[str]) -> str:
    return _FOLDED[match.group()]


def surface_key(form: str) -> str:
    """The identity of a surface form: its matching view without whitespace, ASCII lower-cased."""
    return _view_key(matching_view(form))


class TermDictionary:
    """Terms by id, each with its surface forms; every surface form belongs to exactly one term.

    `non_terms` are everyday words that share a character with a term across a word boundary
    (增加 in 增加密钥, 中国 in 中国密码学会). They compete with the terms for the text in `find` and
    are never reported, so 增加密度 does not yield 加密 and 增加密钥 yields 密钥.
    """

    def __init__(
        self,
        terms: Iterable[CryptoTerm],
        non_terms: Iterable[str] = (),
        source: str = "<memory>",
        locations: list[str] | None = None,
    ) -> None:
        """Errors name `source` and, where given, `locations[i]` for term i ("file:line: entry i (id ...)")."""
        terms = list(terms)
        locations = locations or [f"{source}: term {index} (id '{term.id}')" for index, term in enumerate(terms)]
        self._terms: dict[str, CryptoTerm] = {}
        self._owner_by_key: dict[str, str | None] = {}
        self._spaced_forms: list[list[tuple[str, bool]]] = []
        # Owners by matched text as it stood in the view: `find` meets the same few hundred spellings in every text.
        self._owner_by_view: dict[str, str | None] = {}
        first_location: dict[str, str] = {}
        for term, where in zip(terms, locations, strict=True):
            _check_term(term, where)
            if term.id in self._terms:
                raise TermDictionaryError(f"{where}: duplicate id, first defined at {first_location[term.id]}")
            self._terms[term.id] = term
            first_location[term.id] = where
            for form in term.surface_forms():
                self._add_form(form, term.id, where)
        for word in non_terms:
            self._add_form(word, None, f"{source}: non-term '{word}'")
        self._categories = sorted({term.category for term in self._terms.values()})

    def _add_form(self, form: str, term_id: str | None, where: str) -> None:
        key = surface_key(form)
        if len(key) < MIN_SURFACE_LENGTH:
            raise TermDictionaryError(f"{where}: surface form '{form}' is shorter than {MIN_SURFACE_LENGTH} characters")
        owner = self._owner_by_key.setdefault(key, term_id)
        if owner != term_id:
            raise TermDictionaryError(
                f"{where}: surface form '{form}' already belongs to "
                + (f"term '{owner}'" if owner else "the non-terms")
            )
        self._spaced_forms.append(_spaced(form))

    @classmethod
    def load(cls, path: str | Path) -> TermDictionary:
        """Read a YAML file with a `terms:` list of `CryptoTerm` entries and an optional `non_terms:` list."""
        path = Path(path)
        document, term_lines = _read_document(path)
        terms, locations = [], []
        for index, (entry, line) in enumerate(zip(document["terms"], term_lines, strict=True)):
            where = f"{path}:{line}: entry {index}"
            if not isinstance(entry, dict):
                raise TermDictionaryError(f"{where}: must be a mapping of term fields")
            where += f" (id '{entry.get('id')}')"
            try:
                terms.append(CryptoTerm.model_validate(entry))
            except ValidationError as error:
                problems = "; ".join(
                    f"field '{'.'.join(str(part) for part in item['loc'])}': {item['msg']}" for item in error.errors()
                )
                raise TermDictionaryError(f"{where}: {problems}") from None
            locations.append(where)
        non_terms = document.get("non_terms") or []
        if not isinstance(non_terms, list) or not all(isinstance(word, str) for word in non_terms):
            raise TermDictionaryError(f"{path}: 'non_terms' must be a list of words")
        return cls(terms, non_terms, str(path), locations)

    @property
    def terms(self) -> list[CryptoTerm]:
        return list(self._terms.values())

    @property
    def categories(self) -> list[str]:
        """The categories that have at least one term, sorted."""
        return list(self._categories)

    def get(self, term_id: str) -> CryptoTerm | None:
        return self._terms.get(term_id)

    def __getitem__(self, term_id: str) -> CryptoTerm:
        try:
            return self._terms[term_id]
        except KeyError:
            raise KeyError(f"unknown term id '{term_id}'") from None

    def __contains__(self, term_id: object) -> bool:
        return term_id in self._terms

    def __len__(self) -> int:
        return len(self._terms)

    def __iter__(self) -> Iterator[CryptoTerm]:
        return iter(self._terms.values())

    def surface_forms(self) -> Mapping[str, str]:
        """Every surface form as written in the dictionary, mapped to its term id."""
        return {form: term.id for term in self._terms.values() for form in term.surface_forms()}

    def find(self, text: str) -> list[TermMatch]:
        """Term occurrences in text order: leftmost-longest, never overlapping.

        Scanning left to right, the longest surface form starting at a position wins, so 公钥密码学
        is one term, not 公钥 + 密码学, and non-terms claim their characters first where they start
        earlier (增加密钥 gives 密钥, not 加密). ASCII letters match case-insensitively, and a surface form that
        starts (ends) with an ASCII letter, digit or '_' only matches where no such character comes
        before (after) it: "DES" is not found in "DESIGN" nor "SM2" in "SM23", but "AES" is found
        in "AES-128" and "使用AES加密". A space inside a surface form matches any whitespace or none
        ("TLS 1.3" finds "TLS1.3"). Matching runs on `matching_view(text)`, so full-width and
        traditional spellings are found; spans and surfaces refer to the original text.
        """
        if self._matcher is None or not text:
            return []
        owners = self._owner_by_view
        matches = []
        for match in self._matcher.finditer(matching_view(text)):
            found = match.group()
            if found not in owners:
                owners[found] = self._owner_by_key[_view_key(found)]
            owner = owners[found]
            if owner is not None:
                start, end = match.span()
                matches.append(TermMatch(owner, text[start:end], start, end))
        return matches

    def term_ids(self, text: str) -> list[str]:
        """The distinct terms found in `text`, in order of first occurrence."""
        return list(dict.fromkeys(match.term_id for match in self.find(text)))

    def complexity(self, term_ids: Iterable[str]) -> float:
        """How demanding an example's terminology is: 0.5 * max + 0.5 * mean of the distinct terms' complexity.

        The mean says how technical the vocabulary is overall and the max keeps one research-level
        term from being averaged away by the basic words around it. Terms {1, 5} give 0.5*5 + 0.5*3
        = 4.0; one term of complexity c gives c; no terms give 0.0. Unknown ids raise KeyError.
        """
        levels = [self[term_id].complexity for term_id in dict.fromkeys(term_ids)]
        if not levels:
            return 0.0
        return 0.5 * max(levels) + 0.5 * sum(levels) / len(levels)

    def categories_of(self, term_ids: Iterable[str]) -> list[str]:
        """The sorted distinct categories of the given terms; unknown ids raise KeyError."""
        return sorted({self[term_id].category for term_id in term_ids})

    @cached_property
    def _matcher(self) -> re.Pattern[str] | None:
        return _compile_matcher(self._spaced_forms) if self._spaced_forms else None


def compile_surface_matcher(forms: Iterable[str]) -> re.Pattern[str]:
    """One regex finding the forms as `TermDictionary.find` does: leftmost-longest, ASCII case-insensitive, at word
    boundaries, a space matching any whitespace or none. Search `matching_view(text)`; `surface_key` of a match
    says which form it is."""
    return _compile_matcher([_spaced(form) for form in forms])


def _view_key(view: str) -> str:
    return "".join(view.split()).translate(_ASCII_LOWER)


def _spaced(form: str) -> list[tuple[str, bool]]:
    """The surface key's characters, each with whether the form had whitespace before it."""
    pairs, space = [], False
    for char in matching_view(form).translate(_ASCII_LOWER):
        if char.isspace():
            space = bool(pairs)
            continue
        pairs.append((char, space))
        space = False
    return pairs


def _check_term(term: CryptoTerm, where: str) -> None:
    if not _ID_PATTERN.fullmatch(term.id):
        raise TermDictionaryError(f"{where}: id must be an ascii slug like 'hash_function'")
    if term.category not in TERM_CATEGORIES:
        raise TermDictionaryError(
            f"{where}: unknown category '{term.category}'; expected one of {', '.join(TERM_CATEGORIES)}"
        )
    if not term.zh.strip() or not term.en.strip():
        raise TermDictionaryError(f"{where}: zh and en names must not be empty")


def _read_document(path: Path) -> tuple[dict[str, Any], list[int]]:
    """The parsed file and the 1-based line on which each `terms` entry starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TermDictionaryError(f"{path}: cannot read term dictionary: {error.strerror}") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as error:
        raise TermDictionaryError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()
    if not isinstance(document, dict) or not isinstance(document.get("terms"), list):
        raise TermDictionaryError(f"{path}: the top level must be a mapping with a 'terms' list")
    sequence = next(value for key, value in root.value if key.value == "terms")
    return document, [item.start_mark.line + 1 for item in sequence.value]


class _TrieNode:
    __slots__ = ("children", "space_before", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.space_before: set[str] = set()
        self.terminal = False


def _compile_matcher(spaced_forms: Iterable[list[tuple[str, bool]]]) -> re.Pattern[str]:
    """One regex for all surface forms, shaped as a trie so one left-to-right pass in C finds them.

    Children of a trie node start with distinct characters, so at most one branch can go on, and
    trying the children before "stop here" makes each match the longest form starting there.
    """
    root = _TrieNode()
    for chars in spaced_forms:
        node = root
        for char, space_before in chars:
            if space_before:
                node.space_before.add(char)
            node = node.children.setdefault(char, _TrieNode())
        node.terminal = True
    first_chars = sorted(root.children)
    # The character set lets the engine skip, with one test, the many positions where no form starts.
    starts = _character_set(first_chars)
    return re.compile(f"(?={starts})" + _render_node(root, "", at_root=True), re.IGNORECASE | re.ASCII)


def _render_edge(node: _TrieNode, char: str, at_root: bool = False) -> str:
    gap = r"\s*" if char in node.space_before else ""
    boundary = _NOT_WORD_BEFORE if at_root and char in _WORD_CHARS else ""
    return boundary + gap + re.escape(char) + _render_node(node.children[char], char)


def _render_node(node: _TrieNode, last_char: str, at_root: bool = False) -> str:
    chars = sorted(node.children)
    # An edge with a gap in front starts with whitespace, not its character: it stays outside the guarded groups.
    guarded = [(char, _render_edge(node, char, at_root)) for char in chars if char not in node.space_before]
    branches = _alternatives(guarded)
    branches += [_render_edge(node, char, at_root) for char in chars if char in node.space_before]
    if node.terminal:
        branches.append(_NOT_WORD_AFTER if last_char in _WORD_CHARS else "")
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def _alternatives(edges: list[tuple[str, str]]) -> list[str]:
    """The (first character, regex) edges as alternatives, in a tree of groups each guarded by its first characters.

    The engine tries alternatives one after the other; at a node with hundreds of children (the root) a lookahead
    for a group's first characters rules out the whole group with one test, which makes matching about four
    times faster. Which edge matches, and so the result, is unchanged.
    """
    if len(edges) <= _TRIE_FAN_OUT:
        return [regex for _, regex in edges]
    size = -(-len(edges) // _TRIE_FAN_OUT)
    groups = []
    for start in range(0, len(edges), size):
        group = edges[start : start + size]
        inner = _alternatives(group)
        guard = _character_set(char for char, _ in group)
        groups.append(inner[0] if len(inner) == 1 else f"(?={guard})(?:{'|'.join(inner)})")
    return groups


def _character_set(chars: Iterable[str]) -> str:
    return "[" + "".join(re.escape(char) for char in chars) + "]"


@cache
def load_default_dictionary() -> TermDictionary:
    """The project's bundled dictionary, `data/crypto_terms.yaml` under the repository root, loaded once, for tests
    and benchmarks that have no configuration; everything that has one loads `config.paths.term_dictionary`."""
    paths = PathsConfig()
    return TermDictionary.load(paths.resolve(paths.term_dictionary))
