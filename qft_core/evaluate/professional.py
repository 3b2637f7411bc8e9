"""Professional accuracy against the reference: which of its key facts the prediction states, whether its
concepts are right, whether it raises the reference's security considerations, and the score combining them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qft_core.data.normalize import fullwidth_to_ascii
from qft_core.data.thinking import extract_quantities

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary

KeyPointKind = Literal["term", "standard", "quantity"]

# A standard's family and number: "GB/T 32907-2016", "GM/T 0003", "FIPS PUB 197", "FIPS 203",
# "RFC 8446", "NIST SP 800-38D", "ISO/IEC 18033-3:2010", "PKCS #1".
# The leading lookahead lets the engine skip to the letters a family can start with (IGNORECASE alone would not).
STANDARD_CITATION = re.compile(
    r"(?=[FGINPRSfginprs])(?<![0-9A-Za-z])"
    r"(?P<family>GB/T|GB/Z|GB|GM/T|GM|FIPS(?:\s*PUB)?|RFC|(?:NIST\s*)?SP|ISO/IEC|ISO|IEEE|PKCS\s*#?)"
    r"\s*(?P<number>\d+(?:[-—–.]\d+)*[A-Za-z]?)(?::(?:19|20)\d\d)?(?![0-9A-Za-z])",
    re.IGNORECASE,
)
# Full-width letters, digits or slash: only then is folding worth its cost (it is slow on Chinese text).
_FULLWIDTH_CITATION = re.compile("[Ａ-Ｚａ-ｚ０-９／]")
# Chinese national and sector standards carry their year: the same standard is cited with and without it.
_DATED_FAMILIES = ("GB", "GB/T", "GB/Z", "GM", "GM/T")
_STANDARD_YEAR = re.compile(r"-(?:19|20)\d\d$")
# Everyday words of the field (加密, 密钥, 明文) are not facts an answer can be checked for.
_BASIC_CATEGORY = "fundamentals"
_BASIC_COMPLEXITY = 1


@dataclass(frozen=True, slots=True)
class KeyPoint:
    """A checkable fact of an answer; `key` is what makes two mentions the same fact, `text` how it was written."""

    kind: KeyPointKind
    key: tuple
    text: str


@dataclass(frozen=True)
class KeyPointCoverage:
    covered: list[KeyPoint]
    missing: list[KeyPoint]

    @property
    def coverage(self) -> float:
        """Share of the reference's key points the prediction states; NaN when the reference has none."""
        total = len(self.covered) + len(self.missing)
        return len(self.covered) / total if total else math.nan


def standard_key(family: str, number: str) -> tuple[str, str]:
    """The identity of a standard citation: family upper-cased without spaces, 'PUB', 'NIST' or '#', number with
    ASCII dashes and, for Chinese standards, without the year ("GB/T 32907—2016" and "GB/T 32907" are equal)."""
    family = re.sub(r"\s+|#|PUB$|^NIST", "", family.upper())
    number = re.sub("[—–]", "-", number.upper())
    if family in _DATED_FAMILIES and "-" in number:
        number = _STANDARD_YEAR.sub("", number)
    return family, number


def standards(text: str) -> list[KeyPoint]:
    """Standard citations in the text, in order, each once."""
    found: dict[tuple, KeyPoint] = {}
    if _FULLWIDTH_CITATION.search(text):
        text = fullwidth_to_ascii(text)
    for match in STANDARD_CITATION.finditer(text):
        key = standard_key(match["family"], match["number"])
        found.setdefault(key, KeyPoint("standard", key, text[match.start() : match.end()]))
    return list(found.values())


def key_points(text: str, dictionary: TermDictionary) -> list[KeyPoint]:
    """The facts of an answer: its terms (except the basic vocabulary: fundamentals of complexity 1), its
    standard citations, and its numbers with units (位/bit/比特, 字节/byte as 8 bits, 轮/round).

    Quantities are keyed by value and unit only ("64 字节" is the fact "512 bit"); which algorithm a number
    belongs to is the business of `facts.compare_claims`.
    """
    points: dict[tuple, KeyPoint] = {}
    for match in dictionary.find(text):
        term = dictionary[match.term_id]
        if term.category == _BASIC_CATEGORY and term.complexity <= _BASIC_COMPLEXITY:
            continue
        points.setdefault(("term", term.id), KeyPoint("term", (term.id,), match.surface))
    for point in standards(text):
        points.setdefault(("standard", point.key), point)
    for quantity in extract_quantities(text, dictionary):
        key = (quantity.value, quantity.unit)
        points.setdefault(("quantity", key), KeyPoint("quantity", key, quantity.text))
    return list(points.values())


def keypoint_coverage(prediction: str, reference: str, dictionary: TermDictionary) -> KeyPointCoverage:
    """Which key points of the reference the prediction states: the same term (any surface form), the same
    standard, or the same value in the same unit (so "256-bit", "256 位" and "32 字节" are one fact)."""
    return cover(key_points(prediction, dictionary), key_points(reference, dictionary))


def cover(predicted: list[KeyPoint], reference: list[KeyPoint]) -> KeyPointCoverage:
    """Split the reference's key points into those the predicted ones state and those they miss."""
    stated = {(point.kind, point.key) for point in predicted}
    covered, missing = [], []
    for point in reference:
        (covered if (point.kind, point.key) in stated else missing).append(point)
    return KeyPointCoverage(covered, missing)


def concept_accuracy(confirmed: int, contradicted: int, misconceptions: int) -> float:
    """Share of an answer's checkable statements that are right: claims the fact base confirms, against those it
    contradicts plus each misconception stated; NaN when the answer says nothing checkable."""
    total = confirmed + contradicted + misconceptions
    return confirmed / total if total else math.nan


# Cautions an expert answer raises, by kind: "MD5 已不安全", "切勿重用 nonce", "私钥泄露", "量子计算机的威胁".
_CAUTIONS = {
    "deprecated": r"弃用|淘汰|不再安全|不安全|已被攻破|已被破解|禁用|不推荐|(?<![A-Za-z])(?:deprecated|insecure|broken"
                  r"|obsolete|disallowed)(?![A-Za-z])",
    "avoid": r"避免|切勿|不要|不得|禁止|不应|(?<![A-Za-z])(?:never|avoid|must\s+not|should\s+not)(?![A-Za-z])",
    "reuse": r"重用|复用|重复使用|(?<![A-Za-z])reus",
    "leak": r"泄露|泄漏|(?<![A-Za-z])leak",
    "quantum": r"量子|(?<![A-Za-z])quantum",
}
# The lookahead lets the engine skip, with one test, the many positions where no caution starts.
_CAUTION = re.compile(
    "(?=[弃淘不已禁避切重复泄漏量dibonamsrlq])(?:"
    + "|".join(f"(?P<{name}>{pattern})" for name, pattern in _CAUTIONS.items()) + ")",
    re.IGNORECASE,
)
# Attacks, side channels and other weaknesses are the dictionary's cryptanalysis terms.
_SECURITY_CATEGORY = "cryptanalysis"


def security_points(text: str, term_ids: list[str], dictionary: TermDictionary) -> set[tuple[str, str]]:
    """The security considerations a text raises: the attacks and weaknesses it names (cryptanalysis terms) and the
    kinds of caution it gives (deprecated, avoid, reuse, leak, quantum)."""
    points = {("term", term_id) for term_id in term_ids if dictionary[term_id].category == _SECURITY_CATEGORY}
    points.update(("caution", match.lastgroup) for match in _CAUTION.finditer(text))
    return points


def security_coverage(predicted: set[tuple[str, str]], reference: set[tuple[str, str]]) -> float:
    """Share of the reference's security considerations the prediction raises too; NaN when the reference has none."""
    return len(predicted & reference) / len(reference) if reference else math.nan


def professional_accuracy(keypoint: float, concept: float, security: float) -> float:
    """The seed's "professional accuracy": the mean of key-point coverage, concept accuracy and security-consideration
    coverage, over those that apply to the pair (NaN when none does). Equal weights: no data says one matters more."""
    parts = [part for part in (keypoint, concept, security) if not math.isnan(part)]
    return sum(parts) / len(parts) if parts else math.nan
