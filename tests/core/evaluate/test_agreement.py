import math

import pytest

from qft_core.evaluate.agreement import cohen_kappa, fleiss_kappa, krippendorff_alpha, rubric_agreement
from qft_core.evaluate.experts import Rating, RubricScore

NAN = math.nan

# A 2×2 table of 50 items (yes = 4, no = 2): both yes 20, first yes / second no 5, first no / second yes 10,
# both no 15. p_o = 35/50 = 0.7; first says yes 25/50, second 30/50, so p_e = 0.5·0.6 + 0.5·0.4 = 0.5;
# kappa = (0.7 − 0.5) / (1 − 0.5) = 0.4.
FIRST = [4] * 20 + [4] * 5 + [2] * 10 + [2] * 15
SECOND = [4] * 20 + [2] * 5 + [4] * 10 + [2] * 15

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, counts per category 1–5; kappa ≈ 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_kappa_of_a_hand_computed_two_by_two_table() -> None:
    assert cohen_kappa(FIRST, SECOND) == pytest.approx(0.4)
    # With two categories every disagreement is equally far: the weighted kappa is the plain one.
    assert cohen_kappa(FIRST, SECOND, weighted=True) == pytest.approx(0.4)


def test_quadratic_weights_credit_near_misses() -> None:
    # Pairs (1,1) (1,2) (2,2) (2,3) (3,3) (3,3). Plain: p_o = 4/6, p_e = 1/3 → kappa 0.5.
    # Quadratic: observed Σw·p = (1 + 1)/6 = 1/3; marginals (1/3,1/3,1/3) and (1/6,1/3,1/2) give an expected
    # Σw·p of 1/3·(5/6 + 2·1/3 + 5/2) = 4/3; kappa_w = 1 − (1/3)/(4/3) = 0.75.
    first, second = [1, 1, 2, 2, 3, 3], [1, 2, 2, 3, 3, 3]
    assert cohen_kappa(first, second) == pytest.approx(0.5)
    assert cohen_kappa(first, second, weighted=True) == pytest.approx(0.75)


def test_weighted_kappa_measures_distance_on_the_whole_scale() -> None:
    # Scores 1, 2 and 5: 5 is 16 squared points from 1, not 4 as it would be if only the used scores counted.
    # Observed Σw·p = (1 + 1)/4 = 1/2; expected Σw·p = 2·(1/16)·1 + 2·(1/8)·16 + 2·(1/8)·9 = 51/8 → 1 − 4/51.
    assert cohen_kappa([1, 2, 5, 5], [2, 1, 5, 5], weighted=True) == pytest.approx(47 / 51)


def test_fleiss_kappa_of_the_classic_table_is_0_210() -> None:
    items = [[category + 1 for category, count in enumerate(row) for _ in range(count)] for row in FLEISS_TABLE]
    assert round(fleiss_kappa(items), 3) == 0.210


def test_fleiss_kappa_needs_equal_rater_counts() -> None:
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 2], [1, 2, 3]])


def test_krippendorff_ordinal_alpha_computed_by_hand() -> None:
    # Units (1,1) (2,2) (3,2): coincidences o_11 = 2, o_22 = 2, o_23 = o_32 = 1; n_1 = 2, n_2 = 3, n_3 = 1, n = 6.
    # Ordinal δ²: (1,2) = 2.5² = 6.25, (1,3) = (6 − 1.5)² = 20.25, (2,3) = 2² = 4.
    # D_o = (1 + 1)·4 / 6 = 4/3; D_e = 2·(2·3·6.25 + 2·1·20.25 + 3·1·4) / (6·5) = 6; alpha = 1 − (4/3)/6 = 7/9.
    assert krippendorff_alpha([[1, 2, 3], [1, 2, 2]]) == pytest.approx(7 / 9)


def test_krippendorff_ordinal_alpha_of_the_reference_example_with_missing_scores() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units; ordinal 0.815.
    reliability = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
    assert round(krippendorff_alpha(reliability), 3) == 0.815


def test_undefined_statistics_are_none_not_numbers() -> None:
    assert cohen_kappa([3, 3, 3], [3, 3, 3]) is None
    assert fleiss_kappa([[3, 3], [3, 3]]) is None
    assert krippendorff_alpha([[3, 3], [3, 3]]) is None
    assert krippendorff_alpha([[3, NAN], [NAN, 3]]) is None
    assert fleiss_kappa([]) is None


def ratings_of(expert_id: int, accuracy: list[int], completeness: list[int]) -> list[Rating]:
    return [
        Rating(task_id, expert_id, RubricScore(a, c, reasoning=3, language=4))
        for task_id, (a, c) in enumerate(zip(accuracy, completeness, strict=True), start=1)
    ]


def test_rubric_agreement_per_dimension_for_two_experts() -> None:
    varied = [1, 2, 3, 4, 5] * 10
    report = rubric_agreement(ratings_of(1, FIRST, varied) + ratings_of(2, SECOND, varied))
    accuracy = report["accuracy"]
    assert (accuracy.items, accuracy.rater_pairs, accuracy.fleiss_items) == (50, 1, 50)
    assert accuracy.cohen_kappa == pytest.approx(0.4)
    assert accuracy.weighted_kappa == pytest.approx(0.4)
    # Two raters: Fleiss' kappa is Scott's pi. Pooled yes = 55/100, p_e = 0.55² + 0.45² = 0.505;
    # pi = (0.7 − 0.505)/(1 − 0.505) = 13/33.
    assert accuracy.fleiss_kappa == pytest.approx(13 / 33)
    # Alpha = 1 − (n − 1)·(o_yn + o_ny)/(2·n_yes·n_no) = 1 − 99·30/(2·55·45) = 0.4.
    assert accuracy.krippendorff_alpha == pytest.approx(0.4)
    completeness = report["completeness"]
    assert (completeness.cohen_kappa, completeness.weighted_kappa, completeness.fleiss_kappa) == (1.0, 1.0, 1.0)
    assert completeness.krippendorff_alpha == pytest.approx(1.0)
    # Everyone gave reasoning 3: agreement is undefined, not perfect.
    assert report["reasoning"].cohen_kappa is None and report["reasoning"].krippendorff_alpha is None
    assert list(report) == ["accuracy", "completeness", "reasoning", "language"]


def test_cohen_kappa_is_the_mean_over_expert_pairs() -> None:
    varied = [1, 2, 3, 4, 5] * 10
    # Experts 1 and 2 agree fully (1.0); each against expert 3 is the 2×2 table (0.4): mean (1 + 0.4 + 0.4)/3.
    ratings = ratings_of(1, FIRST, varied) + ratings_of(2, FIRST, varied) + ratings_of(3, SECOND, varied)
    accuracy = rubric_agreement(ratings)["accuracy"]
    assert accuracy.rater_pairs == 3
    assert accuracy.cohen_kappa == pytest.approx(0.6)


def test_fleiss_uses_the_items_with_the_common_rater_count_and_single_ratings_are_ignored() -> None:
    def score(value: int) -> RubricScore:
        return RubricScore(value, value, value, value)

    ratings = [Rating(task, expert, score(value)) for task, expert, value in [
        (1, 1, 5), (1, 2, 5), (1, 3, 4),
        (2, 1, 2), (2, 2, 2), (2, 3, 2),
        (3, 1, 1), (3, 2, 5),  # two raters: not in Fleiss' kappa, still in alpha and the pairs
        (4, 1, 3),  # one rater: in no statistic
    ]]  # fmt: skip
    accuracy = rubric_agreement(ratings)["accuracy"]
    assert (accuracy.items, accuracy.fleiss_items) == (3, 2)
    # Items [5,5,4] and [2,2,2]: P_1 = 1/3, P_2 = 1, P̄ = 2/3; p = (0, 3/6, 0, 1/6, 2/6) → P̄e = 14/36;
    # kappa = (2/3 − 14/36)/(1 − 14/36) = (10/36)/(22/36) = 5/11.
    assert accuracy.fleiss_kappa == pytest.approx(5 / 11)


def test_one_item_rated_twice_gives_no_statistic() -> None:
    # A single item's Fleiss kappa would be −1 for any disagreement: too little data is None, not a verdict.
    ratings = [
        Rating(1, 1, RubricScore(5, 4, 4, 4)),
        Rating(1, 2, RubricScore(3, 4, 4, 4)),
        Rating(2, 1, RubricScore(5, 5, 5, 5)),
    ]
    accuracy = rubric_agreement(ratings)["accuracy"]
    assert accuracy.items == 1
    assert (accuracy.rater_pairs, accuracy.fleiss_items) == (0, 0)
    assert (accuracy.cohen_kappa, accuracy.fleiss_kappa, accuracy.krippendorff_alpha) == (None, None, None)
