"""How far the experts agree on the 1–5 rubric, per dimension: Cohen's kappa (plain and quadratic-weighted),
Fleiss' kappa and Krippendorff's ordinal alpha. A statistic that is undefined for the data (everyone gave the
same score, no item rated twice) is None, never a number that looks like an answer."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats import inter_rater

from qft_core.evaluate.experts import MAX_SCORE, MIN_SCORE, RUBRIC, Rating

SCALE = tuple(range(MIN_SCORE, MAX_SCORE + 1))
# Fewer items than this tell nothing about agreement: one item's kappa is −1 or undefined whatever the experts did.
MIN_ITEMS = 2


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def cohen_kappa(
    first: Sequence[int], second: Sequence[int], weighted: bool = False, scale: Sequence[int] = SCALE
) -> float | None:
    """Cohen's kappa of two raters over the same items, in the same order.

    The quadratic weights measure distance on the whole `scale` (the 1–5 rubric unless told), not between the
    scores that happen to occur.
    """
    if len(first) != len(second):
        raise ValueError(f"the two raters scored {len(first)} and {len(second)} items; kappa needs the same items")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        value = cohen_kappa_score(first, second, labels=list(scale), weights="quadratic" if weighted else None)
    return _defined(value)


def fleiss_kappa(items: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa; `items` holds every item's scores, the same number of raters for every item."""
    if not items:
        return None
    sizes = {len(scores) for scores in items}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"Fleiss' kappa needs the same number (≥ 2) of scores per item, got {sorted(sizes)}")
    counts, _categories = inter_rater.aggregate_raters(np.asarray(items))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _defined(inter_rater.fleiss_kappa(counts, method="fleiss"))


def krippendorff_alpha(reliability: Sequence[Sequence[float]]) -> float | None:
    """Krippendorff's alpha at the ordinal level over the 1–5 scale.

    `reliability` has one row per rater and one column per item, NaN where the rater did not score the item.
    """
    data = np.asarray(reliability, dtype=float)
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2).any() if data.size else False
    if not pairable:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = krippendorff.alpha(reliability_data=data, value_domain=list(SCALE), level_of_measurement="ordinal")
    return _defined(value)


@dataclass(frozen=True)
class DimensionAgreement:
    """Agreement on one rubric dimension over the items that at least two experts scored."""

    dimension: str
    items: int
    # Cohen's kappa is a two-rater statistic: the mean over expert pairs sharing MIN_ITEMS or more items.
    rater_pairs: int
    cohen_kappa: float | None
    weighted_kappa: float | None
    # Fleiss' kappa needs a fixed number of raters: the items with the most common count of raters.
    fleiss_items: int
    fleiss_kappa: float | None
    krippendorff_alpha: float | None


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return sum(defined) / len(defined) if defined else None


def _pairwise_kappa(
    table: dict[int, dict[int, int]], pairs: list[tuple[int, int, list[int]]], weighted: bool
) -> float | None:
    return _mean(
        cohen_kappa([table[task][first] for task in common], [table[task][second] for task in common], weighted)
        for first, second, common in pairs
    )


def rubric_agreement(ratings: Iterable[Rating]) -> dict[str, DimensionAgreement]:
    """Agreement per rubric dimension, in rubric order, over the items that at least two experts scored."""
    grid: dict[int, dict[int, dict[str, int]]] = {}
    for rating in ratings:
        grid.setdefault(rating.task_id, {})[rating.expert_id] = rating.score.values()
    rated_twice = {task: by_expert for task, by_expert in sorted(grid.items()) if len(by_expert) >= 2}
    shared = rated_twice if len(rated_twice) >= MIN_ITEMS else {}
    experts = sorted({expert for by_expert in shared.values() for expert in by_expert})
    pairs = []
    for first, second in itertools.combinations(experts, 2):
        common = [task for task, by_expert in shared.items() if first in by_expert and second in by_expert]
        if len(common) >= MIN_ITEMS:
            pairs.append((first, second, common))
    rater_counts = Counter(len(by_expert) for by_expert in shared.values())
    # The most common number of raters; on a tie the larger, which uses more of the scores.
    fleiss_raters = max(rater_counts, key=lambda count: (rater_counts[count], count)) if rater_counts else 0
    fleiss_tasks = [task for task, by_expert in shared.items() if len(by_expert) == fleiss_raters]
    if len(fleiss_tasks) < MIN_ITEMS:
        fleiss_tasks = []

    report = {}
    for dimension in RUBRIC:
        table = {
            task: {expert: scores[dimension] for expert, scores in by_expert.items()} for task, by_expert in shared.items()
        }
        report[dimension] = DimensionAgreement(
            dimension=dimension,
            items=len(rated_twice),
            rater_pairs=len(pairs),
            cohen_kappa=_pairwise_kappa(table, pairs, weighted=False),
            weighted_kappa=_pairwise_kappa(table, pairs, weighted=True),
            fleiss_items=len(fleiss_tasks),
            fleiss_kappa=fleiss_kappa([list(table[task].values()) for task in fleiss_tasks]),
            krippendorff_alpha=krippendorff_alpha(
                [[table[task].get(expert, math.nan) for task in table] for expert in experts]
            ),
        )
    return report
