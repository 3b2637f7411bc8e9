from collections.abc import Callable
from dataclasses import asdict

import pytest

from qft_core.evaluate.expert_performance import (
    MIN_INTERVAL_ITEMS,
    ExpertPerformanceError,
    Resampling,
    expert_agreement,
    gold_set_drift,
    performance_tables,
    performance_report,
    version_drift,
)
from qft_core.evaluate.experts import GoldItem, GoldSnapshot, Rating, RubricScore

# Six items whose scores vary on every dimension, so that kappa is defined.
ITEMS = [(3, 4, 2, 5), (4, 4, 3, 4), (2, 3, 3, 3), (5, 5, 4, 4), (1, 2, 2, 3), (4, 3, 5, 4)]


def rating(task: int, expert: int, scores: tuple[int, int, int, int]) -> Rating:
    return Rating(task, expert, RubricScore(*scores))


def panel(third: Callable[[tuple], tuple] = lambda scores: scores) -> list[Rating]:
    """Experts 1 and 2 give ITEMS; expert 3 gives `third` of them."""
    return [
        rating(task, expert, scores if expert < 3 else third(scores))
        for task, scores in enumerate(ITEMS, start=1)
        for expert in (1, 2, 3)
    ]


def one_more_accuracy(scores: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(scores[0] + 1, 5), *scores[1:])


def test_an_expert_identical_to_the_others_has_agreement_one_and_no_deviation() -> None:
    performance = {row.expert_id: row for row in expert_agreement(panel())}
    for row in performance.values():
        assert (row.rated, row.shared) == (6, 6)
        assert row.weighted_kappa == pytest.approx(1.0)
        assert {d.dimension: d.weighted_kappa for d in row.dimensions} == pytest.approx(
            {"accuracy": 1.0, "completeness": 1.0, "reasoning": 1.0, "language": 1.0}
        )
        assert (row.absolute_deviation.mean, row.absolute_deviation.n) == (0.0, 6)
        assert row.biased_dimensions == ()


def test_an_expert_one_point_above_on_accuracy_is_biased_on_exactly_that_dimension() -> None:
    # Expert 3 gives accuracy + 1, capped at 5: on item 4 (accuracy 5) it matches; the others match everywhere.
    performance = {row.expert_id: row for row in expert_agreement(panel(one_more_accuracy))}
    third = performance[3]
    assert third.biased_dimensions == ("accuracy",)
    accuracy = third.dimensions[0]
    assert accuracy.bias.mean == pytest.approx(5 / 6)
    assert accuracy.bias.ci_low > 0 and accuracy.bias.n == 6
    assert accuracy.absolute_deviation.mean == pytest.approx(5 / 6)
    # Per item, mean |deviation| over the four dimensions: 1/4 on five items, 0 on item 4.
    assert third.absolute_deviation.mean == pytest.approx(5 / 24)
    for other in third.dimensions[1:]:
        assert (other.bias.mean, other.bias.ci_low, other.bias.ci_high, other.biased) == (0.0, 0.0, 0.0, False)
    # Experts 1 and 2 are compared with the median of the other two: half a point below on five items.
    for expert in (1, 2):
        assert performance[expert].dimensions[0].bias.mean == pytest.approx(-5 / 12)
        assert performance[expert].biased_dimensions == ("accuracy",)


def test_weighted_kappa_against_a_half_point_median_matches_the_hand_computed_value() -> None:
    # Expert 1 gives 1, 2, 3 on accuracy; experts 2 and 3 give (1, 2), (2, 3), (3, 4): medians 1.5, 2.5, 3.5.
    # On the doubled scale: observed squared distances 1, 1, 1 (mean 1); expected over the 3 × 3 pairings of
    # {2, 4, 6} with {3, 5, 7}: (1 + 9 + 25 + 1 + 1 + 9 + 9 + 1 + 1) / 9 = 57/9. kappa = 1 − 9/57.
    ratings = [
        rating(task, expert, (score, 3, 3, 3))
        for task, scores in enumerate([(1, 1, 2), (2, 2, 3), (3, 3, 4)], start=1)
        for expert, score in zip((1, 2, 3), scores, strict=True)
    ]
    first = expert_agreement(ratings)[0]
    assert first.dimensions[0].weighted_kappa == pytest.approx(1 - 9 / 57)
    # Every score of completeness is 3: kappa is undefined there, and the mean skips it.
    assert first.dimensions[1].weighted_kappa is None


def test_intervals_are_left_out_below_the_minimum_items() -> None:
    ratings = [r for r in panel(one_more_accuracy) if r.task_id < MIN_INTERVAL_ITEMS]
    accuracy = {row.expert_id: row for row in expert_agreement(ratings)}[3].dimensions[0]
    assert accuracy.bias.n == MIN_INTERVAL_ITEMS - 1
    assert (accuracy.bias.ci_low, accuracy.bias.ci_high, accuracy.biased) == (None, None, False)


def test_no_ratings_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(ExpertPerformanceError, match="no ratings yet: score tasks with `qft experts score`"):
        expert_agreement([])


def test_one_expert_only_is_reported_with_nothing_shared() -> None:
    report = performance_report([rating(1, 7, (4, 4, 4, 4))], names={7: "王芳"})
    (only,) = report.experts
    assert (only.rated, only.shared, only.weighted_kappa, only.absolute_deviation) == (1, 0, None, None)
    assert report.notes[0] == "only 王芳 (id 7) has scored: agreement needs a second expert scoring the same items"


def test_an_expert_with_no_shared_items_is_named_in_the_notes() -> None:
    ratings = [*panel(), rating(99, 4, (5, 5, 5, 5))]
    report = performance_report(ratings, names={4: "李雷"})
    assert {row.expert_id: row.shared for row in report.experts} == {1: 6, 2: 6, 3: 6, 4: 0}
    assert "李雷 (id 4) shares no item with another expert: nothing to compare" in report.notes


def gold(task: int, scores: tuple[float, float, float, float]) -> GoldItem:
    return GoldItem(
        example_id=f"ex{task}", model_id="m", question="q", reference_answer="r", predicted_answer="a",
        task_id=task, raters=2, scores=dict(zip(("accuracy", "completeness", "reasoning", "language"), scores)),
    )


def test_drift_shows_the_consensus_shift_the_changed_items_and_who_rescored() -> None:
    before = GoldSnapshot(
        1,
        (gold(1, (4, 4, 4, 4)), gold(2, (5, 4, 4, 4)), gold(3, (4, 4, 4, 4))),
        (rating(1, 1, (4, 4, 4, 4)), rating(1, 2, (4, 4, 4, 4)), rating(2, 1, (5, 4, 4, 4)), rating(2, 2, (5, 4, 4, 4)),
         rating(3, 1, (4, 4, 4, 4)), rating(3, 2, (4, 4, 4, 4))),
    )
    # Version 2: expert 2 rescored item 1 (accuracy 4 → 5), item 3 left, item 4 came in.
    after = GoldSnapshot(
        2,
        (gold(1, (4.5, 4, 4, 4)), gold(2, (5, 4, 4, 4)), gold(4, (5, 5, 5, 5))),
        (rating(1, 1, (4, 4, 4, 4)), rating(1, 2, (5, 4, 4, 4)), rating(2, 1, (5, 4, 4, 4)), rating(2, 2, (5, 4, 4, 4)),
         rating(4, 1, (5, 5, 5, 5)), rating(4, 2, (5, 5, 5, 5))),
    )
    drift = version_drift(before, after)
    assert (drift.before, drift.after, drift.shared, drift.added, drift.removed) == (1, 2, 2, 1, 1)
    assert drift.consensus_shift == {"accuracy": 0.25, "completeness": 0.0, "reasoning": 0.0, "language": 0.0}
    assert [(change.task_id, change.example_id) for change in drift.changed] == [(1, "ex1")]
    assert drift.expert_scores_kept
    assert [(e.expert_id, e.items, e.rescored, e.shift["accuracy"]) for e in drift.experts] == [
        (1, 2, 0, 0.0), (2, 2, 1, 0.5)
    ]
    assert gold_set_drift([after, before]) == (drift,)


def test_drift_from_a_version_without_kept_scores_shows_only_the_consensus() -> None:
    before = GoldSnapshot(1, (gold(1, (4, 4, 4, 4)),), ())
    after = GoldSnapshot(2, (gold(1, (5, 4, 4, 4)),), (rating(1, 1, (5, 4, 4, 4)),))
    report = performance_report(panel(), [before, after])
    (drift,) = report.drift
    assert (drift.expert_scores_kept, drift.experts, drift.consensus_shift["accuracy"]) == (False, (), 1.0)
    assert report.notes == (
        "gold-set versions 1 → 2: one was made before the store kept the experts' scores with each version, "
        "so only the consensus drift is shown",
    )


def test_the_tables_show_the_flag_and_the_interval_with_n() -> None:
    report = performance_report(panel(one_more_accuracy), names={3: "韩梅"}, resampling=Resampling(samples=200))
    tables = {title: (header, rows) for title, header, rows in performance_tables(asdict(report))}
    header, rows = tables["Agreement with the other experts' median (leave-one-out)"]
    assert rows[2][:3] == ["韩梅 (3)", "6", "6"] and rows[2][-1] == "accuracy"
    bias_header, bias_rows = next(value for title, value in tables.items() if title.startswith("Bias"))
    assert bias_header == ["expert", "accuracy", "completeness", "reasoning", "language"]
    assert bias_rows[2][1].endswith("n=6 *") and bias_rows[2][2] == "+0.000 [+0.000, +0.000] n=6"
    assert report.notes == ("0 gold-set version(s): drift needs two",)
