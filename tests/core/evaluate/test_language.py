import math

import pytest

from qft_core.data.chinese import use_term_dictionary
from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.language import foreign_latin_words, language_quality
from qft_core.evaluate.rouge import word_tokens


@pytest.fixture(scope="module")
def dictionary():
    dictionary = load_default_dictionary()
    use_term_dictionary(dictionary)
    return dictionary


def quality(text, dictionary):
    return language_quality(text, word_tokens(text), dictionary.find(text))


def test_cjk_ratio_counts_non_whitespace_characters(dictionary):
    # "AES是分组密码。": 9 visible characters, 5 of them CJK.
    assert quality("AES 是分组密码。", dictionary).cjk_ratio == pytest.approx(5 / 9)


def test_terms_acronyms_and_symbols_are_not_mixed_script(dictionary):
    text = "使用 AES-GCM 和 block cipher，IV 为 n 字节"
    assert foreign_latin_words(text, dictionary.find(text)) == 0


def test_english_words_outside_terms_are_mixed_script(dictionary):
    text = "这个 key 很 important"
    assert word_tokens(text) == ["这个", "key", "很", "important"]
    assert foreign_latin_words(text, dictionary.find(text)) == 2
    assert quality(text, dictionary).mixed_script == pytest.approx(2 / 4)


def test_traditional_characters_are_counted(dictionary):
    assert quality("這個演算法的密鑰長度", dictionary).traditional_chars == 4
    assert quality("这个算法的密钥长度", dictionary).traditional_chars == 0


def test_empty_answer_has_no_ratios(dictionary):
    empty = quality("", dictionary)
    ratios = (empty.cjk_ratio, empty.punctuation, empty.mixed_script, empty.repetition)
    assert all(math.isnan(value) for value in ratios)
    assert empty.traditional_chars == 0
