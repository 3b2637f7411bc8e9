import math

import pytest

from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.professional import (
    KeyPoint,
    concept_accuracy,
    keypoint_coverage,
    key_points,
    professional_accuracy,
    security_coverage,
    security_points,
    standard_key,
    standards,
)

REFERENCE = "SM4（GB/T 32907—2016）的分组长度为 128 位，密钥长度为 16 字节，共 32 轮。加密时使用密钥。"


@pytest.fixture(scope="module")
def dictionary():
    return load_default_dictionary()


def test_key_points_are_terms_standards_and_quantities(dictionary):
    points = key_points(REFERENCE, dictionary)
    # 密钥长度, 加密 and 密钥 are basic vocabulary; "16 字节" is the fact "128 bit", already listed once.
    assert [(point.kind, point.key) for point in points] == [
        ("term", ("sm4",)),
        ("term", ("block_size",)),
        ("standard", ("GB/T", "32907")),
        ("quantity", (128.0, "bit")),
        ("quantity", (32.0, "round")),
    ]


def test_keypoint_coverage_by_hand_normalises_units(dictionary):
    coverage = keypoint_coverage("SM4 的分组是 128 bit，一共 32 rounds。", REFERENCE, dictionary)
    assert [point.key for point in coverage.covered] == [("sm4",), (128.0, "bit"), (32.0, "round")]
    assert [point.key for point in coverage.missing] == [("block_size",), ("GB/T", "32907")]
    assert coverage.coverage == pytest.approx(3 / 5)


def test_bytes_cover_the_same_number_of_bits(dictionary):
    coverage = keypoint_coverage("SM3 的杂凑值为 32 字节。", "SM3 输出 256-bit 的杂凑值。", dictionary)
    assert coverage.coverage == 1.0


def test_reference_without_key_points_has_no_coverage(dictionary):
    assert math.isnan(keypoint_coverage("任何回答", "这是一个问题。", dictionary).coverage)


def test_standard_citations_are_normalised():
    found = standards("参见 FIPS PUB 197、fips 203、RFC8446、NIST SP 800-38D、ISO/IEC 18033-3:2010、PKCS #1 和 ＧＢ／Ｔ　32905")
    assert [point.key for point in found] == [
        ("FIPS", "197"), ("FIPS", "203"), ("RFC", "8446"), ("SP", "800-38D"), ("ISO/IEC", "18033-3"), ("PKCS", "1"),
        ("GB/T", "32905"),
    ]
    assert standard_key("GM/T", "0003.2-2012") == standard_key("GM/T", "0003.2") == ("GM/T", "0003.2")
    assert standards("SHA-256 和 X25519") == []


def test_concept_accuracy_counts_misconceptions_as_wrong_statements():
    # 3 claims confirmed, 1 contradicted, 1 misconception stated: 3 of 5 checkable statements are right.
    assert concept_accuracy(3, 1, 1) == pytest.approx(3 / 5)
    assert concept_accuracy(0, 0, 2) == 0.0
    assert math.isnan(concept_accuracy(0, 0, 0))


def test_security_points_are_attacks_named_and_cautions_given(dictionary):
    text = "MD5 已不安全，易受碰撞攻击；切勿重用 nonce。"
    points = security_points(text, dictionary.term_ids(text), dictionary)
    assert points == {("term", "collision_attack"), ("caution", "deprecated"), ("caution", "avoid"),
                      ("caution", "reuse")}


def test_security_coverage_is_the_share_of_the_reference_considerations_raised(dictionary):
    reference = "RC4 已被弃用：存在偏差可被利用，也不要在 TLS 中使用它；并注意侧信道攻击。"
    answer = "RC4 已被弃用。"
    reference_points = security_points(reference, dictionary.term_ids(reference), dictionary)
    answer_points = security_points(answer, dictionary.term_ids(answer), dictionary)
    # Reference: deprecated, avoid, side_channel_attack; the answer raises only "deprecated".
    assert reference_points == {("caution", "deprecated"), ("caution", "avoid"), ("term", "side_channel_attack")}
    assert security_coverage(answer_points, reference_points) == pytest.approx(1 / 3)
    assert math.isnan(security_coverage(answer_points, set()))


def test_professional_accuracy_is_the_mean_of_the_parts_that_apply():
    assert professional_accuracy(0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert professional_accuracy(0.6, math.nan, 0.2) == pytest.approx(0.4)
    assert math.isnan(professional_accuracy(math.nan, math.nan, math.nan))


def test_key_point_keeps_the_reference_wording(dictionary):
    assert KeyPoint("standard", ("GB/T", "32907"), "GB/T 32907—2016") in key_points(REFERENCE, dictionary)
