"""Aggregate per-example metric scores into means with percentile-bootstrap confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# Resampled means are computed in blocks of at most this many drawn values, to bound memory on large sets.
_BLOCK_VALUES = 2_000_000


def bootstrap_interval(
    values: Sequence[float], *, samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean: resample `values` with replacement `samples` times and
    take the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled means. The same seed and values
    give the same interval; one value gives (value, value)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_VALUES // data.size)
    means = np.concatenate([
        data[rng.integers(0, data.size, size=(min(rows, samples - start), data.size))].mean(axis=1)
        for start in range(0, samples, rows)
    ])
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def aggregate(
    per_example_scores: Iterable[Mapping[str, float]], *, samples: int = 1000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """{metric: {mean, ci_low, ci_high, n}} over the examples, metrics in order of first appearance.

    A metric's values are its finite values (NaN marks "not applicable to this example"), n how many there
    are; metrics without any finite value are left out. Every metric is resampled with the same seed.
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
