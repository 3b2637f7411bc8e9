"""Chinese language quality of a generated answer: script mix, punctuation, repetition and
traditional characters leaking into simplified output."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qft_core.data.chinese import count_cjk, count_content_words, punctuation_score, repetition_ratio
from qft_core.data.normalize import count_traditional

if TYPE_CHECKING:
    from qft_core.data.terms import TermMatch

_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")
# Acronyms (IV, NIST, CPU) and one-letter symbols (模数 n) belong in Chinese technical prose.
_ACRONYM = re.compile(r"[A-Z0-9][A-Z0-9-]*")


@dataclass(frozen=True, slots=True)
class LanguageQuality:
    """cjk_ratio, punctuation and repetition as in `qft_core.data.chinese.chinese_metrics`; mixed_script is
    the share of words that are Latin-script words other than terms, acronyms and one-letter symbols."""

    cjk_ratio: float
    punctuation: float
    mixed_script: float
    repetition: float
    traditional_chars: int

    def as_metrics(self) -> dict[str, float]:
        return {
            "cjk_ratio": self.cjk_ratio,
            "punctuation_score": self.punctuation,
            "mixed_script": self.mixed_script,
            "answer_repetition": self.repetition,
            "traditional_chars": float(self.traditional_chars),
        }


def foreign_latin_words(text: str, terms: Sequence[TermMatch]) -> int:
    """Latin-script words of the text outside every term match that are neither acronyms nor single letters."""
    covered = sorted((match.start, match.end) for match in terms)
    count, cursor = 0, 0
    for word in _LATIN_WORD.finditer(text):
        while cursor < len(covered) and covered[cursor][1] <= word.start():
            cursor += 1
        inside_term = cursor < len(covered) and covered[cursor][0] <= word.start()
        if not inside_term and len(word.group()) > 1 and not _ACRONYM.fullmatch(word.group()):
            count += 1
    return count


def language_quality(text: str, words: Sequence[str], terms: Sequence[TermMatch]) -> LanguageQuality:
    """Quality of `text` given its jieba `words` and its term matches; NaN ratios for text without content.

    mixed_script = foreign Latin words / words that contain a letter, digit or CJK character.
    """
    visible = "".join(text.split())
    content_words = count_content_words(words)
    return LanguageQuality(
        cjk_ratio=count_cjk(visible) / len(visible) if visible else math.nan,
        punctuation=punctuation_score(text) if visible else math.nan,
        mixed_script=foreign_latin_words(text, terms) / content_words if content_words else math.nan,
        repetition=repetition_ratio(visible) if visible else math.nan,
        traditional_chars=count_traditional(text),
    )
