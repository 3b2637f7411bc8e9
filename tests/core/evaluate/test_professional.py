import math

import pytest

from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.professional import (
    KeyPoint,
    keypoint_coverage,
    key_points,
    numeric_consistency,
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


def test_numeric_consistency_flags_disagreeing_numbers_for_the_same_thing(dictionary):
    wrong = numeric_consistency("SM3 的输出长度为 128 位。", "SM3 的输出长度为 256 位。", dictionary)
    assert (wrong.compared, wrong.contradicted, wrong.score) == (1, 1, 0.0)
    agreeing = numeric_consistency("SM3 的输出长度为 256 比特。", "SM3 的输出为 32 字节。", dictionary)
    assert (agreeing.compared, agreeing.contradicted, agreeing.score) == (1, 0, 1.0)
    assert math.isnan(numeric_consistency("今天天气很好。", "SM3 的输出长度为 256 位。", dictionary).score)


def test_key_point_keeps_the_reference_wording(dictionary):
    assert KeyPoint("standard", ("GB/T", "32907"), "GB/T 32907—2016") in key_points(REFERENCE, dictionary)
