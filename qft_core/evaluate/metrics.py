"""Every text metric of a generated answer against its reference answer, for one pair (`score_pair`) or a
whole evaluation set (`score_many`, which analyses each text once and can use several processes)."""

from __future__ import annotations

import math
import multiprocessing
import warnings
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from qft_core.data.chinese import use_term_dictionary
from qft_core.data.normalize import to_simplified
from qft_core.data.terms import TermDictionary, TermMatch
from qft_core.evaluate.claims import Claim, compare_claims
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.language import language_quality
from qft_core.evaluate.misconceptions import Misconception, detect_misconceptions
from qft_core.evaluate.professional import (
    KeyPoint,
    concept_accuracy,
    cover,
    key_points,
    professional_accuracy,
    security_coverage,
    security_points,
)
from qft_core.evaluate.rouge import RougeScore, char_tokens, lcs_rouge, term_weighted_tokens, word_tokens
from qft_core.evaluate.term_overlap import term_overlap
from qft_core.evaluate.thinking_quality import split_generation, thinking_quality

# Below this many pairs per worker, starting processes costs more than it saves.
_MIN_PAIRS_PER_WORKER = 16
# Small chunks keep every worker busy to the end even when one of them runs slower (other work on its core).
_CHUNKS_PER_WORKER = 16
_REFERENCES_KEPT = 256


def score_pair(
    prediction_text: str,
    reference_answer: str,
    *,
    reference_reasoning: str | None = None,
    dictionary: TermDictionary,
    misconceptions: Sequence[Misconception],
    facts: FactBase,
) -> dict[str, float]:
    """The metrics of one raw model output (reasoning, `</think>`, answer) against the reference answer.

    Flat names, every pair the same keys; NaN marks a metric with nothing to measure in this pair (a
    reference without terms has no term recall), which `bootstrap.aggregate` leaves out:
    - rougeL_{char,word,term}_{precision,recall,f1}: ROUGE-L of the answer over characters, over jieba
      words (domain dictionary loaded), and over characters with terms as units weighted by complexity;
    - term_{precision,recall,f1} and the same per category (`term_f1.symmetric`, …): distinct term ids;
    - keypoint_coverage: share of the reference's key facts the answer states;
    - misconceptions: how many listed misconceptions the answer states;
    - fact_confirmed / fact_contradicted / fact_accuracy: the answer's claims about known algorithms that the fact
      base (`facts`, the configured `paths.fact_base`) confirms and contradicts, and confirmed / both;
    - numeric_consistency / numeric_contradictions: agreement of the numbers answer and reference state about the
      same algorithm and attribute ("AES-256 有 10 轮" against "AES-256 有 14 轮": 0.0 and 1);
    - concept_accuracy: confirmed claims / (claims checked + misconceptions stated); security_coverage: share of the
      reference's security considerations (attacks named, cautions given) the answer raises; professional_accuracy:
      the mean of keypoint_coverage, concept_accuracy and security_coverage where they apply;
    - thinking_{present,chars,coherence,repetition}: the reasoning block; with a reference reasoning
      also thinking_rougeL_char_f1 and thinking_term_f1 against it (NaN without one);
    - answer_chars, cjk_ratio, punctuation_score, mixed_script, answer_repetition, traditional_chars: the
      answer's language.
    """
    return score_many(
        [prediction_text], [reference_answer], reference_reasonings=[reference_reasoning],
        dictionary=dictionary, misconceptions=misconceptions, facts=facts,
    )[0]


def score_many(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    reference_reasonings: Sequence[str | None] | None = None,
    dictionary: TermDictionary,
    misconceptions: Sequence[Misconception],
    facts: FactBase,
    workers: int = 1,
) -> list[dict[str, float]]:
    """`score_pair` for every pair, in order; each text is segmented and searched once, a recurring reference once
    for all its pairs.

    With workers > 1 (and enough pairs) the pairs are shared among forked processes; where the platform
    cannot fork, they are scored in this process.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if reference_reasonings is None:
        reference_reasonings = [None] * len(predictions)
    elif len(reference_reasonings) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(reference_reasonings)} reference reasonings")
    pairs = list(zip(predictions, references, reference_reasonings, strict=True))
    workers = min(workers, len(pairs) // _MIN_PAIRS_PER_WORKER)
    scorer = PairScorer(dictionary, misconceptions, facts)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return scorer.score_all(pairs)
    chunk = math.ceil(len(pairs) / (workers * _CHUNKS_PER_WORKER))
    chunks = [pairs[start : start + chunk] for start in range(0, len(pairs), chunk)]
    # Forked workers inherit the loaded dictionary, jieba and compiled patterns instead of rebuilding them
    # (seconds each). Python warns about forking next to native threads (numpy's BLAS pool); the workers
    # only run Python and regex code and never touch those threads' locks.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)
        with multiprocessing.get_context("fork").Pool(workers, initializer=_install_worker, initargs=(scorer,)) as pool:
            return [scores for part in pool.map(_score_in_worker, chunks) for scores in part]


class PairScorer:
    """Scores pairs with one dictionary, misconception list and fact base, keeping each distinct text's analysis."""

    def __init__(
        self, dictionary: TermDictionary, misconceptions: Sequence[Misconception], facts: FactBase
    ) -> None:
        # Loads jieba's dictionary now: forked workers then share it instead of each loading it.
        use_term_dictionary(dictionary)
        # Searching once compiles the matcher in the original, so the view below shares it.
        dictionary.find("密码")
        self.dictionary = _RememberingDictionary(dictionary)
        self.misconceptions = list(misconceptions)
        self.facts = facts
        self._references: OrderedDict[str, _TextAnalysis] = OrderedDict()

    def score_all(self, pairs: Sequence[tuple[str, str, str | None]]) -> list[dict[str, float]]:
        return [self.score(*pair) for pair in pairs]

    def score(self, prediction_text: str, reference_answer: str, reference_reasoning: str | None) -> dict[str, float]:
        generation = split_generation(prediction_text)
        answer = _TextAnalysis(generation.answer, self.dictionary, self.facts)
        reasoning = _TextAnalysis(generation.reasoning, self.dictionary, self.facts)
        reference = self._reference(reference_answer)
        reference_thinking = self._reference(reference_reasoning) if reference_reasoning is not None else None
        self.dictionary.search_within(
            [analysis for analysis in (answer, reference, reasoning, reference_thinking) if analysis is not None]
        )
        metrics: dict[str, float] = {}
        _put_rouge(metrics, "rougeL_char", lcs_rouge(answer.chars, reference.chars))
        _put_rouge(metrics, "rougeL_word", lcs_rouge(answer.words, reference.words))
        _put_rouge(metrics, "rougeL_term", lcs_rouge(answer.term_string, reference.term_string))
        metrics.update(term_overlap(answer.term_ids, reference.term_ids, self.dictionary).as_metrics())
        metrics["keypoint_coverage"] = cover(answer.key_points, reference.key_points).coverage
        misconceptions = len(detect_misconceptions(answer.text, self.misconceptions))
        metrics["misconceptions"] = float(misconceptions)
        checked = self.facts.check(answer.claims)
        metrics["fact_confirmed"] = float(len(checked.confirmed))
        metrics["fact_contradicted"] = float(len(checked.contradicted))
        metrics["fact_accuracy"] = checked.accuracy
        numbers = compare_claims(answer.claims, reference.claims)
        metrics["numeric_consistency"] = numbers.score
        metrics["numeric_contradictions"] = float(numbers.contradicted)
        metrics["concept_accuracy"] = concept_accuracy(
            len(checked.confirmed), len(checked.contradicted), misconceptions
        )
        metrics["security_coverage"] = security_coverage(answer.security_points, reference.security_points)
        metrics["professional_accuracy"] = professional_accuracy(
            metrics["keypoint_coverage"], metrics["concept_accuracy"], metrics["security_coverage"]
        )
        metrics.update(thinking_quality(generation, self.dictionary).as_metrics())
        if reference_thinking is None:
            metrics["thinking_rougeL_char_f1"] = metrics["thinking_term_f1"] = math.nan
        else:
            metrics["thinking_rougeL_char_f1"] = lcs_rouge(reasoning.chars, reference_thinking.chars).f1
            metrics["thinking_term_f1"] = term_overlap(
                reasoning.term_ids, reference_thinking.term_ids, self.dictionary
            ).overall.f1
        metrics["answer_chars"] = float(len(answer.chars))
        metrics.update(language_quality(answer.text, answer.words, answer.matches).as_metrics())
        return metrics

    def _reference(self, text: str) -> _TextAnalysis:
        """References recur (several predictions per question, several models): the recent ones stay analysed."""
        analysis = self._references.get(text)
        if analysis is None:
            analysis = self._references[text] = _TextAnalysis(text, self.dictionary, self.facts)
            if len(self._references) > _REFERENCES_KEPT:
                self._references.popitem(last=False)
        else:
            self._references.move_to_end(text)
        return analysis


@dataclass
class _TextAnalysis:
    """What the metrics need from one text, each part computed on first use."""

    text: str
    dictionary: TermDictionary = field(repr=False)
    facts: FactBase = field(repr=False)

    @cached_property
    def matches(self) -> list[TermMatch]:
        return TermDictionary.find(self.dictionary, self.text)

    @cached_property
    def term_ids(self) -> list[str]:
        return list(dict.fromkeys(match.term_id for match in self.matches))

    @cached_property
    def chars(self) -> str:
        return char_tokens(self.text)

    @cached_property
    def words(self) -> list[str]:
        return word_tokens(self.text)

    @cached_property
    def term_string(self) -> str:
        return term_weighted_tokens(self.text, self.matches, self.dictionary)

    @cached_property
    def key_points(self) -> list[KeyPoint]:
        return key_points(self.text, self.dictionary)

    @cached_property
    def claims(self) -> list[Claim]:
        return self.facts.claims(self.text)

    @cached_property
    def security_points(self) -> set[tuple[str, str]]:
        return security_points(self.text, self.term_ids, self.dictionary)

    @cached_property
    def simplified_keeps_length(self) -> bool:
        return len(to_simplified(self.text)) == len(self.text)


class _RememberingDictionary(TermDictionary):
    """The dictionary answering `find` for slices of the texts being scored from their whole-text matches.

    The data-side helpers (quantities, thinking score) search a text sentence by sentence; re-running the
    matcher on each sentence would double the cost of scoring. A slice is answered from its text's matches
    when no match crosses its ends and the characters around it are neither letters, digits nor '_' (the
    matcher's word-boundary rule and its traditional-to-simplified view then see exactly the same thing;
    the dictionary's non-terms are Chinese words, which cannot reach across such a character);
    otherwise, and for any other text, the matcher runs.
    """

    def __init__(self, dictionary: TermDictionary) -> None:
        # Shares the terms and the compiled matcher: a view of the same dictionary, not a copy to maintain.
        self.__dict__.update(dictionary.__dict__)
        self._texts: list[_TextAnalysis] = []
        self._answered: dict[str, list[TermMatch]] = {}

    def search_within(self, analyses: Sequence[_TextAnalysis]) -> None:
        """Answer slices of these texts from their matches until the next call."""
        self._texts = [analysis for analysis in analyses if analysis.simplified_keeps_length]
        self._answered = {}

    def find(self, text: str) -> list[TermMatch]:
        # The same sentences are searched again by each helper that reads quantities.
        matches = self._answered.get(text)
        if matches is None:
            matches = next(
                (found for analysis in self._texts if (found := _slice_matches(analysis, text)) is not None), None
            )
            if matches is None:
                matches = super().find(text)
            self._answered[text] = matches
        return list(matches)


def _slice_matches(analysis: _TextAnalysis, text: str) -> list[TermMatch] | None:
    whole = analysis.text
    if text == whole:
        return list(analysis.matches)
    start = whole.find(text)
    if start < 0 or not text:
        return None
    end = start + len(text)
    if _word_like(whole[start - 1 : start]) or _word_like(whole[end : end + 1]):
        return None
    matches = analysis.matches
    first = bisect_right(matches, start, key=lambda match: match.end)
    inside = []
    for match in matches[first:]:
        if match.start >= end:
            break
        if match.start < start or match.end > end:
            return None
        inside.append(TermMatch(match.term_id, match.surface, match.start - start, match.end - start))
    return inside


def _word_like(char: str) -> bool:
    return bool(char) and (char.isalnum() or char == "_")


def _put_rouge(metrics: dict[str, float], name: str, score: RougeScore) -> None:
    metrics[f"{name}_precision"] = score.precision
    metrics[f"{name}_recall"] = score.recall
    metrics[f"{name}_f1"] = score.f1


_worker_scorer: PairScorer | None = None


def _install_worker(scorer: PairScorer) -> None:
    global _worker_scorer
    _worker_scorer = scorer


def _score_in_worker(pairs: list[tuple[str, str, str | None]]) -> list[dict[str, float]]:
    return _worker_scorer.score_all(pairs)


def mean_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    dictionary: TermDictionary,
    misconceptions: Sequence[Misconception],
    facts: FactBase,
) -> dict[str, float]:
    """Each metric's mean over the pairs (pairs where it does not apply are left out): a compact score_fn for
    comparing model variants side by side."""
    scores = score_many(predictions, references, dictionary=dictionary, misconceptions=misconceptions, facts=facts)
    names = scores[0].keys() if scores else ()
    means = {}
    for name in names:
        values = [row[name] for row in scores if not math.isnan(row[name])]
        if values:
            means[name] = sum(values) / len(values)
    return means
