import math

import numpy as np
import pytest

from qft_core.evaluate.bootstrap import aggregate, bootstrap_interval

SAMPLE = [0.2, 0.4, 0.4, 0.5, 0.6, 0.7, 0.9, 1.0]


def test_interval_is_deterministic_for_a_seed():
    first = bootstrap_interval(SAMPLE, samples=500, seed=11)
    assert bootstrap_interval(SAMPLE, samples=500, seed=11) == first
    assert bootstrap_interval(SAMPLE, samples=500, seed=12) != first


def test_interval_contains_the_mean_and_stays_within_the_data():
    low, high = bootstrap_interval(SAMPLE, samples=2000, seed=0)
    assert min(SAMPLE) <= low < np.mean(SAMPLE) < high <= max(SAMPLE)
    # The standard error is about 0.09, so a 95% interval is about 0.35 wide.
    assert 0.25 < high - low < 0.45


def test_interval_narrows_as_the_sample_grows():
    rng = np.random.default_rng(5)
    widths = []
    for size in (20, 200, 2000):
        low, high = bootstrap_interval(rng.uniform(size=size), samples=1000, seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # Width scales like 1/sqrt(n): ten times the data, about a third of the width.
    assert widths[2] / widths[1] == pytest.approx(10**-0.5, rel=0.25)


def test_constant_or_single_values_have_a_point_interval():
    assert bootstrap_interval([0.5] * 10, samples=100) == (0.5, 0.5)
    assert bootstrap_interval([3.0], samples=100) == (3.0, 3.0)


def test_large_samples_are_resampled_in_blocks_around_the_mean():
    values = np.random.default_rng(1).normal(size=30_000)
    low, high = bootstrap_interval(values, samples=100, seed=2)
    assert low < values.mean() < high


def test_aggregate_skips_nan_and_counts_values():
    scores = [
        {"f1": 1.0, "recall": math.nan},
        {"f1": 0.0, "recall": 0.5},
        {"f1": 0.5, "recall": math.nan, "x": math.nan},
    ]
    summary = aggregate(scores, samples=200, seed=3)
    assert list(summary) == ["f1", "recall"]
    assert summary["f1"]["mean"] == pytest.approx(0.5) and summary["f1"]["n"] == 3
    assert summary["recall"] == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 1}
    assert summary["f1"]["ci_low"] <= 0.5 <= summary["f1"]["ci_high"]


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(SAMPLE, confidence=1.0)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_interval([])
