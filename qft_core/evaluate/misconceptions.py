"""Known cryptography misconceptions: the curated list (`data/misconceptions.yaml`) and finding the
wrong claims it describes in an answer, while statements that deny or discuss them pass."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from qft_core.config import PathsConfig
from qft_core.data.terms import TERM_CATEGORIES, TermDictionary, matching_view

# Negation words, except where the character starts a word that negates nothing (不仅 "not only", 非常
# "very", 非对称 "asymmetric", 无论 "regardless", 无穷 "infinite", 未来 "future").
NEGATION = (
    r"不(?!仅|但|同|久|断|少|过|论|妨)|没|未(?!来|知)|非(?!常|对称)|无(?!论|穷|限|线)|勿|莫"
    r"|(?<![A-Za-z])(?:not|never|no|cannot)(?![A-Za-z])|n't"
)
_DEFAULT_GAP = 6
# A gap may not cross a clause or sentence mark, nor contain a negation: "MD5 并不是加密算法" never matches.
_GAP_CHAR = rf"(?:(?!{NEGATION}|\.\s)[^，。；：！？,;:!?\n])"
_END = r"(?=\s*(?:[，。；：！？,;:!?\n）)]|\.(?:\s|$)|$))"
_MACRO = re.compile(r"\{([a-z][a-z0-9_]*(?:\|[a-z][a-z0-9_]*)*)(?::(\d+))?\}")
_ID = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_ASCII_WORD = re.compile(r"[0-9A-Za-z_]")

_NEGATED = re.compile(NEGATION, re.IGNORECASE)
# Someone else's belief, a past one, or a hypothesis: "有人认为…", "曾被认为…", "如果认为…".
_REPORTED = re.compile(
    r"(?<!可)(?<!所)以为|有人(?:认为|说)|(?:很多|许多|不少|一些)人(?:认为|觉得)|常(?:被)?(?:认为|误认为)|被认为|被称为|所谓"
    r"|曾|过去|以前|早期|当时|原本|一度|历史上|如果|假如|假设|倘若|若(?!干)"
    r"|(?<![A-Za-z])(?:believed|thought|once|used to|if|suppose|claim(?:s|ed)?)(?![A-Za-z])",
    re.IGNORECASE,
)
# A sentence that talks about a misconception rather than making it.
_DISCUSSED = re.compile(
    r"误区|误解|误认为|误以为|错误地|错误(?:的)?(?:说法|观点|看法|认识|理解)|这种说法|是错误的|是错的|是不对的|不正确|"
    r"不成立|谣言|迷思|misconception|myth|incorrect|mistaken|wrongly|(?<![A-Za-z])(?:wrong|false|fallacy)(?![A-Za-z])",
    re.IGNORECASE,
)
# The next sentence refutes this one: "……。这种说法是错误的。"
_REFUTED_NEXT = re.compile(
    r"\s*(?:这|此|该|上述|以上)(?:种|个|一)?(?:说法|观点|看法|理解|认识)?(?:其实|完全|并)?(?:是)?"
    r"(?:错误|不对|不正确|误解|错的|谬误)|\s*(?:this|that) is (?:a )?(?:wrong|false|myth|misconception)",
    re.IGNORECASE,
)
_QUESTION_AFTER = re.compile(r"\s*(?:的)?(?:吗|么|呢|？|\?)")
SENTENCE_END = re.compile(r"[。！？!?；;\n]|\.(?=\s|$)")
_CLAUSE_END = re.compile(r"[，。；：！？,;:!?\n]|\.(?=\s|$)")


class MisconceptionListError(ValueError):
    """A misconception list that does not validate; the message names the file, line, entry and id."""


@dataclass(frozen=True)
class Misconception:
    """A wrong claim, the patterns that state it, and what is true instead."""

    id: str
    category: str
    claim: str
    correction: str
    patterns: tuple[re.Pattern[str], ...]
    unless: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class MisconceptionHit:
    misconception_id: str
    start: int
    end: int
    text: str


def compile_pattern(source: str, dictionary: TermDictionary) -> re.Pattern[str]:
    """A misconception pattern as a regex, matched case-insensitively on `matching_view` of the text.

    Macros: `{term_id}` is any surface form of that dictionary term (ASCII forms only at word
    boundaries, a space allowed between Latin and Chinese parts), `{id1|id2}` any form of either term
    (one flat alternation: a group of groups would stop the engine from skipping ahead); `{gap}` /
    `{gap:N}` is up to 6 / N characters that contain neither a clause mark nor a negation; `{end}` asserts that the clause ends
    here. Whitespace in the pattern matches any whitespace or none; `\b` is an ASCII word boundary, so
    it holds between "使用" and "AES". Unknown names raise KeyError.
    """
    pieces, position = [], 0
    for macro in _MACRO.finditer(source):
        pieces.append(_literal(source[position : macro.start()]))
        pieces.append(_expand(macro.group(1), macro.group(2), dictionary))
        position = macro.end()
    pieces.append(_literal(source[position:]))
    # Case-insensitivity comes from lower-casing text and pattern: re.IGNORECASE would stop the engine from
    # skipping ahead to the characters a pattern can start with, which makes matching some 30 times slower.
    return re.compile("".join(pieces), re.ASCII)


def load_misconceptions(path: str | Path, dictionary: TermDictionary) -> list[Misconception]:
    """Read a YAML file with a top-level `misconceptions:` list of entries with id, category, claim,
    correction, patterns (a list) and optionally unless (a pattern that, found in the clause, drops a hit)."""
    path = Path(path)
    entries, lines = _read_entries(path)
    misconceptions, seen = [], {}
    for index, (entry, line) in enumerate(zip(entries, lines, strict=True)):
        where = f"{path}:{line}: entry {index}"
        if not isinstance(entry, dict):
            raise MisconceptionListError(f"{where}: must be a mapping with id, category, claim, correction, patterns")
        where += f" (id '{entry.get('id')}')"
        misconception = _parse_entry(entry, where, dictionary)
        if misconception.id in seen:
            raise MisconceptionListError(f"{where}: duplicate id, first defined at {seen[misconception.id]}")
        seen[misconception.id] = where
        misconceptions.append(misconception)
    return misconceptions


@cache
def load_default_misconceptions(dictionary: TermDictionary) -> list[Misconception]:
    """The project's bundled list, `data/misconceptions.yaml`, against `dictionary`, for tests and benchmarks that
    have no configuration; everything that has one loads `config.paths.misconceptions` with `load_misconceptions`."""
    paths = PathsConfig()
    return load_misconceptions(paths.resolve(paths.misconceptions), dictionary)


def detect_misconceptions(text: str, misconceptions: list[Misconception]) -> list[MisconceptionHit]:
    """The misconceptions the text states, each once (its first claim), in list order.

    A pattern match is not a claim when its clause denies it before the match ("不能说…"), reports or
    supposes it ("有人认为", "曾被认为", "如果"), its sentence discusses it as a misconception ("误区",
    "是错误的"), it is asked ("…吗？"), the next sentence refutes it ("这种说法是错误的"), or the entry's
    `unless` pattern occurs in its clause.
    """
    if not text:
        return []
    view = _lowered(matching_view(text))
    hits = []
    for misconception in misconceptions:
        claim = next(
            (match for pattern in misconception.patterns for match in pattern.finditer(view)
             if _is_claim(view, match, misconception.unless)),
            None,
        )
        if claim is not None:
            start, end = claim.span()
            hits.append(MisconceptionHit(misconception.id, start, end, text[start:end]))
    return hits


def _is_claim(view: str, match: re.Match[str], unless: re.Pattern[str] | None) -> bool:
    clause_start = max((mark.end() for mark in _CLAUSE_END.finditer(view, 0, match.start())), default=0)
    sentence_start = max((mark.end() for mark in SENTENCE_END.finditer(view, 0, match.start())), default=0)
    sentence_end_mark = SENTENCE_END.search(view, match.end())
    sentence_end = sentence_end_mark.start() if sentence_end_mark else len(view)
    prefix = view[clause_start : match.start()]
    stated = prefix + match.group()
    if _NEGATED.search(prefix) or _REPORTED.search(stated) or (unless is not None and unless.search(stated)):
        return False
    if _DISCUSSED.search(view, sentence_start, sentence_end) or _QUESTION_AFTER.match(view, match.end()):
        return False
    return not (sentence_end_mark and _REFUTED_NEXT.match(view, sentence_end_mark.end()))


def _literal(source: str) -> str:
    """Pattern text lower-cased outside escapes (so `\\S` keeps its meaning), whitespace made optional."""
    pieces = re.split(r"(\\.)", source)
    return "".join(piece if piece.startswith("\\") else re.sub(r"\s+", r"\\s*", piece.lower()) for piece in pieces)


def _lowered(view: str) -> str:
    """The view lower-cased; the few characters whose lower case is longer than one character stay as they are."""
    lowered = view.lower()
    if len(lowered) == len(view):
        return lowered
    return "".join(char.lower() if len(char.lower()) == 1 else char for char in view)


def _expand(name: str, size: str | None, dictionary: TermDictionary) -> str:
    if name == "gap":
        return f"{_GAP_CHAR}{{0,{int(size) if size else _DEFAULT_GAP}}}"
    if name == "end":
        return _END
    forms = set()
    for term_id in name.split("|"):
        term = dictionary.get(term_id)
        if term is None:
            raise KeyError(f"unknown term '{term_id}'")
        forms |= {_lowered(matching_view(form)) for form in term.surface_forms()}
    return "(?:" + "|".join(_form_regex(form) for form in sorted(forms, key=len, reverse=True)) + ")"


def _form_regex(form: str) -> str:
    parts = []
    for index, char in enumerate(form):
        if char.isspace():
            continue
        previous = form[index - 1] if index else ""
        if previous.isspace() or (previous and previous.isascii() != char.isascii() and (previous + char).isalnum()):
            parts.append(r"\s*")
        parts.append(re.escape(char))
    if _ASCII_WORD.fullmatch(form[0]):
        # The boundary check follows the first character, so every alternative starts with a literal and the
        # engine can skip ahead to where a form may start.
        parts.insert(1, r"(?<![0-9a-z_].)")
    if _ASCII_WORD.fullmatch(form[-1]):
        parts.append(r"(?![0-9a-z_])")
    return "".join(parts)


def _parse_entry(entry: dict[str, Any], where: str, dictionary: TermDictionary) -> Misconception:
    for field in ("id", "category", "claim", "correction"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise MisconceptionListError(f"{where}: field '{field}' must be a non-empty string")
    unknown = set(entry) - {"id", "category", "claim", "correction", "patterns", "unless"}
    if unknown:
        raise MisconceptionListError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if not _ID.fullmatch(entry["id"]):
        raise MisconceptionListError(f"{where}: id must be an ascii slug like 'md5_is_encryption'")
    if entry["category"] not in TERM_CATEGORIES:
        raise MisconceptionListError(
            f"{where}: unknown category '{entry['category']}'; expected one of {', '.join(TERM_CATEGORIES)}"
        )
    sources = entry.get("patterns")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s.strip() for s in sources):
        raise MisconceptionListError(f"{where}: field 'patterns' must be a non-empty list of strings")
    patterns = tuple(
        _compile(source, f"{where}: pattern {number}", dictionary) for number, source in enumerate(sources)
    )
    unless = entry.get("unless")
    if unless is not None and (not isinstance(unless, str) or not unless.strip()):
        raise MisconceptionListError(f"{where}: field 'unless' must be a non-empty string")
    return Misconception(
        id=entry["id"], category=entry["category"], claim=entry["claim"].strip(),
        correction=entry["correction"].strip(), patterns=patterns,
        unless=_compile(unless, f"{where}: unless", dictionary) if unless else None,
    )


def _compile(source: str, where: str, dictionary: TermDictionary) -> re.Pattern[str]:
    try:
        return compile_pattern(source, dictionary)
    except KeyError as error:
        raise MisconceptionListError(f"{where}: {error.args[0]}") from None
    except re.error as error:
        raise MisconceptionListError(f"{where}: not a valid regex: {error}") from None


def _read_entries(path: Path) -> tuple[list[Any], list[int]]:
    """The raw `misconceptions` entries and the 1-based line each starts on."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MisconceptionListError(f"{path}: cannot read misconception list: {error.strerror}") from None
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MisconceptionListError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("misconceptions"), list):
        raise MisconceptionListError(f"{path}: the top level must be a mapping with a 'misconceptions' list")
    sequence = next(value for key, value in root.value if key.value == "misconceptions")
    return document["misconceptions"], [item.start_mark.line + 1 for item in sequence.value]
