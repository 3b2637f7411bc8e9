import math

import numpy as np
import pytest
from scipy import stats

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


@pytest.mark.parametrize("values", [[1.0, 2.0], [0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 6.0]])
def test_degenerate_small_samples_give_an_interval_within_the_data(values):
    for method in ("BCa", "percentile"):
        low, high = bootstrap_interval(values, samples=500, seed=1, method=method)
        assert min(values) <= low <= high <= max(values)


def test_bca_is_scipys_bca_interval():
    """Same resamples (scipy draws them the same way from the same generator), same interval."""
    values = np.random.default_rng(7).lognormal(0.0, 1.0, size=20)
    ours = bootstrap_interval(values, samples=5000, seed=1)
    theirs = stats.bootstrap((values,), np.mean, n_resamples=5000, method="BCa", rng=np.random.default_rng(1))
    assert ours == pytest.approx((theirs.confidence_interval.low, theirs.confidence_interval.high), rel=1e-9)
    # BCa leans toward the long right tail where the percentile interval stays symmetric about the resamples.
    percentile = bootstrap_interval(values, samples=5000, seed=1, method="percentile")
    assert ours[0] > percentile[0] and ours[1] > percentile[1]


def test_bca_covers_a_skewed_mean_more_often_than_the_percentile_interval():
    """200 samples of 15 from lognormal(0, 1), whose mean is e^0.5: how often each 95% interval contains it.

    Measured (seeded, so exact): BCa 0.825, percentile 0.805. Neither reaches 0.95 at this n and skew; BCa
    closes part of the gap (at n = 30: 0.88 against 0.8675 over 400 samples). Read intervals of n < 30 as rough.
    """
    true_mean = math.exp(0.5)
    rng = np.random.default_rng(2026)
    samples = [rng.lognormal(0.0, 1.0, size=15) for _ in range(200)]
    coverage = {}
    for method in ("BCa", "percentile"):
        hits = [low <= true_mean <= high for index, sample in enumerate(samples)
                for low, high in [bootstrap_interval(sample, samples=1000, seed=index, method=method)]]
        coverage[method] = sum(hits) / len(hits)
    assert coverage == {"BCa": 0.825, "percentile": 0.805}


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
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval(SAMPLE, method="basic")
