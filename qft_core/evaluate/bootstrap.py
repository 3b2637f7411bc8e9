"""Aggregate per-example metric scores into means with bootstrap confidence intervals: BCa (bias-corrected and
accelerated) by default, which holds its coverage better than the percentile interval on the small, skewed samples
evaluation sets give."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np

Method = Literal["BCa", "percentile"]
# Resampled means are computed in blocks of at most this many drawn values, to bound memory on large sets.
_BLOCK_VALUES = 2_000_000


def bootstrap_interval(
    values: Sequence[float], *, samples: int = 1000, seed: int = 0, confidence: float = 0.95,
    method: Method = "BCa",
) -> tuple[float, float]:
    """The bootstrap interval of the mean of `values` from `samples` resamples.

    "percentile" takes the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled means. "BCa" moves
    those quantiles by the bias (z0, from where the sample mean falls among the resampled means) and the skew
    (the acceleration a, from the jackknife means) as scipy.stats.bootstrap(method="BCa") does; the mean's
    jackknife has a closed form, so this costs O(n) where scipy's costs O(n²) (14 s for one interval at
    n = 30,000). On the same resamples it gives scipy's interval (tests/core/evaluate/test_bootstrap.py). The
    same seed and values give the same interval. Values that cannot vary (one value, all equal) give
    (mean, mean); where BCa is undefined (every resampled mean on one side of the sample mean) the percentile
    interval is returned.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile', got {method!r}")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if data.size == 1 or np.all(data == data[0]):
        mean = float(data.mean())
        return mean, mean
    means = _resampled_means(data, samples, seed)
    levels = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    if method == "BCa":
        levels = _bca_levels(data, means, levels) or levels
    low, high = np.percentile(means, np.array(levels) * 100.0)
    return float(low), float(high)


def _resampled_means(data: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_VALUES // data.size)
    return np.concatenate([
        data[rng.integers(0, data.size, size=(min(rows, samples - start), data.size))].mean(axis=1)
        for start in range(0, samples, rows)
    ])


def _bca_levels(data: np.ndarray, means: np.ndarray, levels: list[float]) -> list[float] | None:
    """The quantile levels BCa reads the resampled means at (Efron & Tibshirani 1993, §14.3); None where BCa is
    undefined."""
    mean = data.mean()
    # The sample mean's mid-rank among the resampled means, as scipy counts it.
    below = (np.count_nonzero(means < mean) + np.count_nonzero(means <= mean)) / (2.0 * means.size)
    if not 0.0 < below < 1.0:
        return None
    normal = NormalDist()
    bias = normal.inv_cdf(below)
    jackknife = (data.sum() - data) / (data.size - 1)
    spread = jackknife.mean() - jackknife
    acceleration = float((spread**3).sum() / (6.0 * (spread**2).sum() ** 1.5))
    adjusted = []
    for level in levels:
        z = bias + normal.inv_cdf(level)
        denominator = 1.0 - acceleration * z
        if denominator <= 0.0:
            return None
        adjusted.append(normal.cdf(bias + z / denominator))
    return adjusted


def aggregate(
    per_example_scores: Iterable[Mapping[str, float]], *, samples: int = 1000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """{metric: {mean, ci_low, ci_high, n}} over the examples, metrics in order of first appearance.

    A metric's values are its finite values (NaN marks "not applicable to this example"), n how many there
    are; metrics without any finite value are left out. Every metric is resampled with the same seed and the
    interval is BCa.
    """
    columns: dict[str, list[float]] = {}
    for scores in per_example_scores:
        for metric, value in scores.items():
            column = columns.setdefault(metric, [])
            if value is not None and math.isfinite(value):
                column.append(float(value))
    summary = {}
    for metric, values in columns.items():
        if not values:
            continue
        low, high = bootstrap_interval(values, samples=samples, seed=seed, confidence=confidence)
        summary[metric] = {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high, "n": len(values)}
    return summary


def format_estimate(value: Mapping | None, signed: bool = False) -> str:
    """A bootstrap estimate as `mean [low, high] n=N` (with a sign for differences), `mean n=N` where too few values
    gave no interval; – where there is none. The n travels with every interval: one of 12 answers says less than
    one of 300."""
    if not value:
        return "–"
    sign = "+" if signed else ""
    interval = f" [{value['ci_low']:{sign}.3f}, {value['ci_high']:{sign}.3f}]" if value["ci_low"] is not None else ""
    return f"{value['mean']:{sign}.3f}{interval} n={value['n']}"
