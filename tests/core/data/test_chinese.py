import subprocess
import sys

import pytest

from qft_core.config import REPO_ROOT
from qft_core.data.chinese import (
    chinese_metrics,
    count_cjk,
    count_content_words,
    jieba,
    normalize_chinese,
    normalize_punctuation,
    pos_tag,
    punctuation_score,
    repetition_ratio,
    segment,
    to_halfwidth,
    use_term_dictionary,
)
from qft_core.data.terms import load_default_dictionary
from qft_core.records import ChineseMetrics


@pytest.fixture(scope="module", autouse=True)
def domain_words() -> None:
    use_term_dictionary(load_default_dictionary())


# --- jieba with the term dictionary -----------------------------------------------------------------


def test_user_dictionary_keeps_domain_terms_as_one_word():
    assert segment("椭圆曲线和分组密码都会遇到侧信道攻击") == [
        "椭圆曲线",
        "和",
        "分组密码",
        "都",
        "会",
        "遇到",
        "侧信道攻击",
    ]


def test_use_term_dictionary_is_idempotent():
    assert use_term_dictionary(load_default_dictionary()) == 0


def test_pos_tag_marks_domain_terms_nz():
    assert pos_tag("椭圆曲线和分组密码") == [("椭圆曲线", "nz"), ("和", "c"), ("分组密码", "nz")]


def test_segment_and_pos_tag_drop_whitespace_tokens():
    assert segment("AES  加密\n") == ["AES", "加密"]
    assert [word for word, _ in pos_tag(" AES 加密 ")] == ["AES", "加密"]


@pytest.mark.parametrize("hmm", [True, False])
def test_hyphenated_domain_words_stay_whole(hmm):
    assert segment("用平方-乘算法做模幂", hmm=hmm) == ["用", "平方-乘算法", "做", "模幂"]


def test_segment_without_hmm_keeps_unknown_characters_single():
    text = "AES-128 与 SM4，x--y 3.14% C++\n\t密钥ＡＥＳ"
    assert segment(text, hmm=False) == [
        "AES", "-", "128", "与", "SM4", "，", "x", "-", "-", "y", "3", ".", "14", "%", "C++", "密钥", "Ａ", "Ｅ", "Ｓ",
    ]
    assert segment(text)[6:12] == ["x", "--", "y", "3.14%", "C++", "密钥"]


def test_segment_without_hmm_is_jieba_lcut_without_whitespace():
    text = "RSA 的平方-乘算法（square-and-multiply）在 2048 位模数上逐位处理指数；ECC/ECDSA 与 SM2 则用标量乘。\r\n" * 3
    assert segment(text, hmm=False) == [word for word in jieba.lcut(text, HMM=False) if word.strip()]


def test_segment_without_hmm_is_jieba_lcut_on_the_whole_corpus():
    corpus = "\n".join(path.read_text(encoding="utf-8") for path in sorted((REPO_ROOT / "data/corpus").glob("*.md")))
    assert segment(corpus, hmm=False) == [word for word in jieba.lcut(corpus, HMM=False) if word.strip()]


def test_count_cjk_counts_ideographs_of_every_cjk_block():
    assert count_cjk("AES 是分组密码。\U00020001") == 6
    assert count_cjk("") == 0


def test_content_words_contain_a_letter_digit_or_cjk_character():
    assert count_content_words(["AES", "，", "是", "--", "C++", "_", "3.14%"]) == 4


def test_jieba_start_up_is_silent_on_stderr():
    script = "from qft_core.data.chinese import segment, pos_tag; segment('测试分词'); pos_tag('测试')"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stderr == ""


# --- width and punctuation --------------------------------------------------------------------------


def test_to_halfwidth_converts_letters_digits_and_ideographic_space_only():
    text = "ＡＥＳ－１２８　ＳＭ４，好"
    assert to_halfwidth(text) == "AES－128 SM4，好"
    assert len(to_halfwidth(text)) == len(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("密码学,是一门学科.它研究加密:对吗?是的!", "密码学，是一门学科。它研究加密：对吗？是的！"),
        ("包括AES-128和TLS 1.2;还有SM4", "包括AES-128和TLS 1.2；还有SM4"),
        ("使用AES,然后用SM4", "使用AES，然后用SM4"),
        ("结束.\n下一行", "结束。\n下一行"),
        ("椭圆曲线(ECC)更快", "椭圆曲线（ECC）更快"),
        ("见(图1)", "见（图1）"),
        ("函数H(m)的输出", "函数H(m)的输出"),
        ("[链接](说明)", "[链接](说明)"),
        ("1.概述", "1.概述"),
        ("版本v1.2发布", "版本v1.2发布"),
        ("文件说明.txt", "文件说明.txt"),
        ("网址:https://example.com", "网址:https://example.com"),
        ("等等...", "等等..."),
        ("f(x) = x^2, g(y)", "f(x) = x^2, g(y)"),
    ],
)
def test_normalize_punctuation(text, expected):
    assert normalize_punctuation(text) == expected


def test_normalize_chinese_applies_width_script_and_punctuation():
    assert normalize_chinese("橢圓曲線,ＥＣＣ與ＲＳＡ.") == "椭圆曲线，ECC与RSA."
    assert normalize_chinese("雜湊函數.") == "杂凑函数。"


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_of_mixed_text():
    metrics = chinese_metrics("椭圆曲线，分组密码。")
    assert metrics == ChineseMetrics(
        char_count=10,
        word_count=2,
        cjk_ratio=0.8,
        punctuation_score=1.0,
        repetition_ratio=0.0,
        traditional_chars=0,
        quality_score=1.0,
    )


def test_whitespace_is_not_counted():
    metrics = chinese_metrics("AES 加密 \n")
    assert metrics.char_count == 5
    assert metrics.cjk_ratio == pytest.approx(2 / 5)


def test_quality_scales_with_chinese_share_below_half():
    metrics = chinese_metrics("加密ABCDEF")
    assert metrics.cjk_ratio == pytest.approx(0.25)
    assert metrics.quality_score == pytest.approx(0.25 / 0.5)


def test_repetition_ratio_counts_repeated_character_4grams():
    assert repetition_ratio("密码学ABC") == 0.0
    assert repetition_ratio("哈哈哈哈哈哈") == pytest.approx(1 - 1 / 3)
    assert repetition_ratio("abababab") == pytest.approx(1 - 2 / 5)
    assert repetition_ratio("哈哈哈") == 0.0
    assert chinese_metrics("ab ab ab ab").repetition_ratio == pytest.approx(1 - 2 / 5)


def test_looping_text_has_zero_quality():
    metrics = chinese_metrics("哈" * 100)
    assert metrics.repetition_ratio == pytest.approx(1 - 1 / 97)
    assert metrics.quality_score == 0.0


def test_repetition_above_the_free_share_lowers_quality_linearly():
    # 4-grams 椭圆曲线 圆曲线椭 曲线椭圆 线椭圆曲 椭圆曲线: 5, of which 4 distinct.
    metrics = chinese_metrics("椭圆曲线椭圆曲线")
    assert metrics.repetition_ratio == pytest.approx(0.2)
    assert metrics.quality_score == pytest.approx(1 - (0.2 - 0.15) / (0.6 - 0.15))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("好的，没问题。", 1.0),
        ("没有标点", 1.0),
        ("好的,没问题", 0.0),
        ("（对", 0.0),
        ("这是一个测试。。。真的吗？？？好的,没问题(对", 1 - 6 / 8),
        ("“引用”和（括号）都成对。", 1.0),
    ],
)
def test_punctuation_score(text, expected):
    assert punctuation_score(text) == pytest.approx(expected)


def test_traditional_characters_are_counted():
    assert chinese_metrics("橢圓曲線").traditional_chars == 3


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_gives_zeros(text):
    assert chinese_metrics(text) == ChineseMetrics(
        char_count=0,
        word_count=0,
        cjk_ratio=0.0,
        punctuation_score=0.0,
        repetition_ratio=0.0,
        traditional_chars=0,
        quality_score=0.0,
    )
