import math

import pytest

from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.term_overlap import TermScores, term_overlap, term_scores


@pytest.fixture(scope="module")
def dictionary():
    return load_default_dictionary()


def test_term_scores_by_hand(dictionary):
    overlap = term_overlap(["aes", "sm4", "rsa", "aes"], ["aes", "sm4", "sm3", "ecb"], dictionary)
    # Shared {aes, sm4}: P = 2/3, R = 2/4, F1 = 2*2 / (3 + 4).
    assert vars_of(overlap.overall) == pytest.approx((2 / 3, 2 / 4, 4 / 7))


def test_per_category_breakdown_by_hand(dictionary):
    overlap = term_overlap(["aes", "sm4", "rsa"], ["aes", "sm4", "sm3", "ecb"], dictionary)
    # symmetric: {aes} vs {aes, ecb}; chinese_standard: {sm4} vs {sm4, sm3}; asymmetric: {rsa} vs {}.
    assert vars_of(overlap.by_category["symmetric"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert vars_of(overlap.by_category["chinese_standard"]) == pytest.approx((1.0, 0.5, 2 / 3))
    asymmetric = overlap.by_category["asymmetric"]
    assert (asymmetric.precision, asymmetric.f1) == (0.0, 0.0) and math.isnan(asymmetric.recall)
    assert all(math.isnan(value) for value in vars_of(overlap.by_category["hash_mac"]))
    assert set(overlap.by_category) == set(dictionary.categories)


def test_metric_names_are_flat_with_category_suffixes(dictionary):
    metrics = term_overlap(["aes"], ["aes"], dictionary).as_metrics()
    assert metrics["term_f1"] == 1.0 and metrics["term_recall.symmetric"] == 1.0
    assert len(metrics) == 3 + 3 * len(dictionary.categories)


def test_empty_sides_follow_the_nan_conventions():
    empty_prediction = term_scores(set(), {"aes"})
    assert math.isnan(empty_prediction.precision) and (empty_prediction.recall, empty_prediction.f1) == (0.0, 0.0)
    assert all(math.isnan(value) for value in vars_of(term_scores(set(), set())))


def vars_of(scores: TermScores) -> tuple[float, float, float]:
    return scores.precision, scores.recall, scores.f1


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("最小熵很低", "香农熵很低"),
        ("选用 SHA-512/256", "选用 SHA-512"),
        ("这是第二原像攻击", "这是原像攻击"),
        ("Rainbow签名已被攻破", "多变量密码已被攻破"),
        ("这是FREAK攻击", "这是降级攻击"),
        ("电子签名有效", "数字签名有效"),
    ],
)
def test_answer_naming_a_close_but_different_concept_shares_no_term(dictionary, answer, reference):
    overlap = term_overlap(dictionary.term_ids(answer), dictionary.term_ids(reference), dictionary)
    assert overlap.overall.f1 == 0.0
