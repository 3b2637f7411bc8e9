"""Correctness against the fact base (`data/crypto_facts.yaml`): which of the claims an answer makes about known
algorithms (found by claims.py) the facts confirm or contradict, and the file's validation."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from qft_core.config import PathsConfig
from qft_core.data.terms import compile_surface_matcher, surface_key
from qft_core.evaluate.claims import (
    BIT_ATTRIBUTES,
    KINDS,
    NUMERIC_ATTRIBUTES,
    STRUCTURES,
    Claim,
    find_claims,
    standard_identity,
)
from qft_core.evaluate.professional import STANDARD_CITATION, standard_key

CATEGORICAL_ATTRIBUTES = {"kind": KINDS, "structure": STRUCTURES, "standard": None}
_VALUE_KEYS = {"bits": 1.0, "bytes": 8.0, "rounds": 1.0, "level": 1.0, "is": None}
# Calling a block cipher "symmetric" or a signature scheme "public-key" is right, not a different kind.
_SYMMETRIC = {"block_cipher", "stream_cipher", "mac", "aead"}
_PUBLIC_KEY = {"signature", "kem", "public_key_encryption", "key_agreement", "identity_based"}


class FactBaseError(ValueError):
    """A fact base that does not validate; the message names the file, line and subject."""


@dataclass(frozen=True, slots=True)
class Fact:
    """What the fact base says of one attribute of a subject: every right value, and where the standard says so."""

    subject: str
    attribute: str
    values: frozenset
    source: str


@dataclass(frozen=True, slots=True)
class Verdict:
    claim: Claim
    fact: Fact
    agrees: bool

    def describe(self) -> str:
        """'aes_256 rounds: stated 10, fact 14 (FIPS 197 §5, Figure 4)'; lengths in bits ('stated 512 bits')."""
        unit = " bits" if self.claim.attribute in BIT_ATTRIBUTES else ""
        stated = ", ".join(_format(value) for value in self.claim.values) + unit
        right = ", ".join(_format(value) for value in sorted(self.fact.values, key=str)) + unit
        return f"{self.claim.subject} {self.claim.attribute}: stated {stated}, fact {right} ({self.fact.source})"


@dataclass(frozen=True)
class FactCheck:
    """The checkable claims of a text: those the fact base confirms and those it contradicts."""

    confirmed: list[Verdict]
    contradicted: list[Verdict]

    @property
    def accuracy(self) -> float:
        """confirmed / (confirmed + contradicted); NaN when the text makes no checkable claim."""
        total = len(self.confirmed) + len(self.contradicted)
        return len(self.confirmed) / total if total else math.nan


class FactBase:
    """Subjects (algorithms, protocols) by id with their names and facts; a subject's parent supplies the facts it
    does not state itself."""

    def __init__(
        self, names: dict[str, list[str]], facts: dict[str, dict[str, Fact]], parents: dict[str, str | None]
    ) -> None:
        self._facts = facts
        self._parents = parents
        self._subject_by_key: dict[str, str] = {}
        for subject, subject_names in names.items():
            for form in _spellings(subject_names):
                self._subject_by_key[surface_key(form)] = subject
        # Subjects by matched text as it stood: the same few spellings recur in every answer.
        self._subject_by_match: dict[str, str] = {}
        self._standard_owners: dict[tuple[str, str], set[str]] = {}
        for subject in facts:
            standard = self.fact(subject, "standard")
            for key in standard.values if standard else ():
                self._standard_owners.setdefault(key, set()).add(subject)
        self._names = compile_surface_matcher(
            [form for subject_names in names.values() for form in _spellings(subject_names)]
        )

    @classmethod
    def load(cls, path: str | Path) -> FactBase:
        """Read a YAML file with a `subjects:` list (see data/crypto_facts.yaml for the fields)."""
        path = Path(path)
        entries = _read_subjects(path)
        names: dict[str, list[str]] = {}
        facts: dict[str, dict[str, Fact]] = {}
        parents: dict[str, str | None] = {}
        owner_of_name: dict[str, str] = {}
        for entry, line in entries:
            subject = entry.get("id")
            where = f"{path}:{line}: subject '{subject}'"
            if not isinstance(subject, str) or not re.fullmatch(r"[a-z0-9]+(?:_[a-z0-9]+)*", subject):
                raise FactBaseError(f"{where}: id must be an ascii slug like 'aes_128'")
            if subject in names:
                raise FactBaseError(f"{where}: duplicate id")
            subject_names = entry.get("names")
            if not isinstance(subject_names, list) or not subject_names or not all(
                isinstance(name, str) and name.strip() for name in subject_names
            ):
                raise FactBaseError(f"{where}: 'names' must be a non-empty list of names")
            for name in subject_names:
                for spelling in _spellings([name]):
                    other = owner_of_name.setdefault(surface_key(spelling), subject)
                    if other != subject:
                        raise FactBaseError(f"{where}: name '{name}' already belongs to subject '{other}'")
            names[subject] = subject_names
            parents[subject] = entry.get("parent")
            facts[subject] = _read_facts(entry.get("facts") or [], subject, where)
        for subject, parent in parents.items():
            if parent is not None and parent not in names:
                raise FactBaseError(f"{path}: subject '{subject}': unknown parent '{parent}'")
        return cls(names, facts, parents)

    def fact(self, subject: str, attribute: str) -> Fact | None:
        """The subject's fact about the attribute, else its parent's (and so on); None when none is known."""
        while subject is not None:
            found = self._facts[subject].get(attribute)
            if found is not None:
                return found
            subject = self._parents[subject]
        return None

    def claims(self, text: str) -> list[Claim]:
        """The claims the text makes about known subjects, each distinct claim once, in text order."""
        return find_claims(text, self._names, self._subject)

    def _subject(self, matched: str) -> str:
        subject = self._subject_by_match.get(matched)
        if subject is None:
            subject = self._subject_by_match[matched] = self._subject_by_key[surface_key(matched)]
        return subject

    def check(self, claims: Iterable[Claim]) -> FactCheck:
        """Which claims the facts confirm and which they contradict; claims about attributes the fact base does not
        know, and lists of values some of which are right, count as neither."""
        confirmed, contradicted = [], []
        for claim in claims:
            verdict = self._verdict(claim)
            if verdict is not None:
                (confirmed if verdict.agrees else contradicted).append(verdict)
        return FactCheck(confirmed, contradicted)

    def check_text(self, text: str) -> FactCheck:
        return self.check(self.claims(text))

    def _verdict(self, claim: Claim) -> Verdict | None:
        if claim.attribute == "standard":
            return self._standard_verdict(claim)
        fact = self.fact(claim.subject, claim.attribute)
        if fact is None:
            return None
        right = fact.values
        if claim.attribute == "kind":
            right = _with_umbrella_kinds(right)
        inside = [value in right for value in claim.values]
        if all(inside):
            return Verdict(claim, fact, True)
        if not any(inside):
            return Verdict(claim, fact, False)
        return None

    def _standard_verdict(self, claim: Claim) -> Verdict | None:
        """A cited standard is right when the fact base lists it for the subject, wrong when it lists it only for
        other subjects ("ML-KEM（FIPS 204）"), and unknown otherwise (a profile or protocol that uses it)."""
        fact = self.fact(claim.subject, "standard")
        (cited,) = claim.values
        if fact is not None and cited in fact.values:
            return Verdict(claim, fact, True)
        owners = self._standard_owners.get(cited)
        if not owners or fact is None:
            return None
        return Verdict(claim, fact, False)


@cache
def load_default_fact_base() -> FactBase:
    """The project's bundled fact base, `data/crypto_facts.yaml` under the repository root, loaded once, for tests
    and benchmarks that have no configuration; everything that has one loads `config.paths.fact_base`."""
    paths = PathsConfig()
    return FactBase.load(paths.resolve(paths.fact_base))


# ---- names and kinds ---------------------------------------------------------------------------------------------

def _spellings(names: Sequence[str]) -> list[str]:
    """The names and, for those with a hyphen, the same with a space, which also matches no space ("AES 128",
    "AES128"): answers write all three."""
    spellings = list(names)
    spellings += [name.replace("-", " ") for name in names if "-" in name]
    return list(dict.fromkeys(spellings))


def _with_umbrella_kinds(kinds: frozenset) -> frozenset:
    extra = {"symmetric"} if kinds & _SYMMETRIC else set()
    if kinds & _PUBLIC_KEY:
        extra.add("public_key")
    return kinds | extra


# ---- reading the file -------------------------------------------------------------------------------------------


def _read_subjects(path: Path) -> list[tuple[dict[str, Any], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FactBaseError(f"{path}: cannot read fact base: {error.strerror}") from None
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise FactBaseError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("subjects"), list):
        raise FactBaseError(f"{path}: the top level must be a mapping with a 'subjects' list")
    sequence = next(value for key, value in root.value if key.value == "subjects")
    entries = []
    for entry, node in zip(document["subjects"], sequence.value, strict=True):
        line = node.start_mark.line + 1
        if not isinstance(entry, dict):
            raise FactBaseError(f"{path}:{line}: a subject must be a mapping of fields")
        entries.append((entry, line))
    return entries


def _read_facts(items: Any, subject: str, where: str) -> dict[str, Fact]:
    if not isinstance(items, list):
        raise FactBaseError(f"{where}: 'facts' must be a list")
    facts: dict[str, Fact] = {}
    for item in items:
        attribute = item.get("attribute") if isinstance(item, dict) else None
        here = f"{where}, fact '{attribute}'"
        if attribute not in NUMERIC_ATTRIBUTES and attribute not in CATEGORICAL_ATTRIBUTES:
            raise FactBaseError(f"{here}: unknown attribute; expected one of "
                                f"{', '.join((*NUMERIC_ATTRIBUTES, *CATEGORICAL_ATTRIBUTES))}")
        if attribute in facts:
            raise FactBaseError(f"{here}: stated twice")
        source = item.get("source")
        if not isinstance(source, str) or not source.strip():
            raise FactBaseError(f"{here}: every fact needs its 'source' (standard and section)")
        value_keys = [key for key in _VALUE_KEYS if key in item]
        if len(value_keys) != 1 or not isinstance(item[value_keys[0]], list) or not item[value_keys[0]]:
            raise FactBaseError(f"{here}: give exactly one non-empty list of bits, bytes, rounds, level or is")
        facts[attribute] = Fact(subject, attribute, _fact_values(attribute, value_keys[0], item[value_keys[0]], here),
                                source)
    return facts


def _fact_values(attribute: str, unit: str, values: list, where: str) -> frozenset:
    expected_unit = ("is",) if attribute in CATEGORICAL_ATTRIBUTES else (
        ("rounds",) if attribute == "rounds" else ("level",) if attribute == "category" else ("bits", "bytes")
    )
    if unit not in expected_unit:
        raise FactBaseError(f"{where}: values must be given as {' or '.join(expected_unit)}, not {unit}")
    if unit == "is":
        allowed = CATEGORICAL_ATTRIBUTES[attribute]
        if not all(isinstance(value, str) for value in values):
            raise FactBaseError(f"{where}: values must be names")
        if attribute == "standard":
            parsed = []
            for value in values:
                citation = STANDARD_CITATION.fullmatch(value)
                if citation is None:
                    raise FactBaseError(f"{where}: '{value}' is not a standard citation like 'FIPS 197'")
                parsed.append(standard_identity(*standard_key(citation["family"], citation["number"])))
            return frozenset(parsed)
        unknown = [value for value in values if value not in allowed]
        if unknown:
            raise FactBaseError(f"{where}: unknown {attribute} {unknown}; expected one of {', '.join(allowed)}")
        return frozenset(values)
    if not all(isinstance(value, int | float) and not isinstance(value, bool) and value > 0 for value in values):
        raise FactBaseError(f"{where}: values must be positive numbers")
    return frozenset(float(value) * _VALUE_KEYS[unit] for value in values)


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
