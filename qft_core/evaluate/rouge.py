"""ROUGE-L for Chinese answers: the longest common subsequence over characters, jieba words, or
characters with each cryptography term as one unit weighted by its complexity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from rapidfuzz.distance import LCSseq

from qft_core.data.chinese import segment

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary, TermMatch

# Terms become characters of Supplementary Private Use Area-A, which Chinese text never contains,
# so a term can only match the same term.
_TERM_SYMBOL_BASE = 0xF0000
_TERM_SYMBOL_LIMIT = 0xFFFFE


@dataclass(frozen=True, slots=True)
class RougeScore:
    precision: float
    recall: float
    f1: float

    @classmethod
    def from_lcs(cls, lcs: float, prediction_weight: float, reference_weight: float) -> RougeScore:
        """P = lcs / prediction weight, R = lcs / reference weight, F1 their harmonic mean; 0 where a side is empty."""
        precision = lcs / prediction_weight if prediction_weight else 0.0
        recall = lcs / reference_weight if reference_weight else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1)


def lcs_rouge(prediction: Sequence, reference: Sequence) -> RougeScore:
    """ROUGE-L of two token sequences (strings are sequences of characters), each token weighing 1."""
    return RougeScore.from_lcs(LCSseq.similarity(prediction, reference), len(prediction), len(reference))


def char_tokens(text: str) -> str:
    """The characters ROUGE compares: whitespace dropped, letters lower-cased (no other folding, so "，" and ","
    differ: the output's punctuation is part of what is compared)."""
    return "".join(text.lower().split())


def word_tokens(text: str) -> list[str]:
    """jieba words (precise mode, HMM off), lower-cased, without whitespace; call `use_term_dictionary` first so
    terms come out as single words.

    Unlike `segment`'s default, the HMM that joins unknown characters into new words is off: it costs a third of
    the segmentation time, and for a subsequence of words an unknown word split into characters matches the
    same way on both sides.
    """
    return [word.lower() for word in segment(text, hmm=False)]


def term_weighted_tokens(text: str, matches: Sequence[TermMatch], dictionary: TermDictionary) -> str:
    """`char_tokens` of the text with every term match replaced by its term's symbol, repeated `complexity` times.

    The unweighted LCS of two such strings is the weighted LCS of the term-and-character sequences
    (a term token weighs its complexity, a character 1): copies of a term's symbol only ever stand in
    runs of whole terms, and an alignment that matches part of a run can always be rearranged into
    one matching whole runs with at least as many copies. The string's length is its total weight.
    `matches` are `dictionary.find(text)`.
    """
    symbols = _term_symbols(dictionary)
    pieces, position = [], 0
    for match in matches:
        pieces.append(char_tokens(text[position : match.start]))
        pieces.append(symbols[match.term_id])
        position = match.end
    pieces.append(char_tokens(text[position:]))
    return "".join(pieces)


def rouge_l_char(prediction: str, reference: str) -> RougeScore:
    return lcs_rouge(char_tokens(prediction), char_tokens(reference))


def rouge_l_word(prediction: str, reference: str) -> RougeScore:
    return lcs_rouge(word_tokens(prediction), word_tokens(reference))


def rouge_l_term(prediction: str, reference: str, dictionary: TermDictionary) -> RougeScore:
    """Term-weighted ROUGE-L: a matched term counts its complexity (1-5), any other character 1."""
    return lcs_rouge(
        term_weighted_tokens(prediction, dictionary.find(prediction), dictionary),
        term_weighted_tokens(reference, dictionary.find(reference), dictionary),
    )


@cache
def _term_symbols(dictionary: TermDictionary) -> dict[str, str]:
    if _TERM_SYMBOL_BASE + len(dictionary) > _TERM_SYMBOL_LIMIT:
        raise ValueError(f"term-weighted ROUGE supports at most {_TERM_SYMBOL_LIMIT - _TERM_SYMBOL_BASE} terms")
    return {
        term.id: chr(_TERM_SYMBOL_BASE + index) * term.complexity for index, term in enumerate(dictionary.terms)
    }
