"""Term precision, recall and F1 of a prediction against its reference, overall and per term category."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary

NAN = math.nan


@dataclass(frozen=True, slots=True)
class TermScores:
    """Set-based scores over distinct term ids; NaN marks a score with nothing to measure."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class TermOverlap:
    overall: TermScores
    by_category: dict[str, TermScores]

    def as_metrics(self, prefix: str = "term") -> dict[str, float]:
        """Flat metric names: `term_precision`, … and `term_precision.symmetric`, … per category."""
        metrics = {f"{prefix}_precision": self.overall.precision, f"{prefix}_recall": self.overall.recall,
                   f"{prefix}_f1": self.overall.f1}
        for category, scores in self.by_category.items():
            metrics[f"{prefix}_precision.{category}"] = scores.precision
            metrics[f"{prefix}_recall.{category}"] = scores.recall
            metrics[f"{prefix}_f1.{category}"] = scores.f1
        return metrics


def term_scores(predicted: set[str], reference: set[str]) -> TermScores:
    """P = |P∩R|/|P| (NaN if the prediction has no terms), R = |P∩R|/|R| (NaN if the reference has none),
    F1 = 2|P∩R| / (|P| + |R|): 0 when exactly one side is empty, NaN when both are."""
    shared = len(predicted & reference)
    precision = shared / len(predicted) if predicted else NAN
    recall = shared / len(reference) if reference else NAN
    total = len(predicted) + len(reference)
    return TermScores(precision, recall, 2 * shared / total if total else NAN)


def term_overlap(predicted: Iterable[str], reference: Iterable[str], dictionary: TermDictionary) -> TermOverlap:
    """Scores over the distinct term ids of prediction and reference, and the same restricted to each
    category of the dictionary (every category is reported, NaN where neither side has its terms)."""
    predicted, reference = set(predicted), set(reference)
    predicted_by, reference_by = _by_category(predicted, dictionary), _by_category(reference, dictionary)
    by_category = {
        category: term_scores(predicted_by.get(category, set()), reference_by.get(category, set()))
        for category in dictionary.categories
    }
    return TermOverlap(term_scores(predicted, reference), by_category)


def _by_category(term_ids: set[str], dictionary: TermDictionary) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for term_id in term_ids:
        grouped.setdefault(dictionary[term_id].category, set()).add(term_id)
    return grouped
