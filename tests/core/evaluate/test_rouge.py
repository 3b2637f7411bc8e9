import random

import pytest

from qft_core.data.chinese import use_term_dictionary
from qft_core.data.terms import TermDictionary, load_default_dictionary
from qft_core.evaluate.rouge import (
    RougeScore,
    char_tokens,
    lcs_rouge,
    rouge_l_char,
    rouge_l_term,
    rouge_l_word,
    term_weighted_tokens,
    word_tokens,
)
from qft_core.records import CryptoTerm


@pytest.fixture(scope="module")
def dictionary() -> TermDictionary:
    dictionary = load_default_dictionary()
    use_term_dictionary(dictionary)
    return dictionary


def close(score: RougeScore, precision: float, recall: float, f1: float) -> bool:
    return (score.precision, score.recall, score.f1) == pytest.approx((precision, recall, f1))


def test_char_rouge_on_chinese_counts_the_common_subsequence():
    # LCS("密码学很有趣", "密码学真有趣") = "密码学有趣": 5 of 6 characters on each side.
    assert close(rouge_l_char("密码学很有趣", "密码学真有趣"), 5 / 6, 5 / 6, 5 / 6)
    # LCS("对称加密算法", "非对称加密") = "对称加密": P = 4/6, R = 4/5, F = 2*4/(6+5).
    assert close(rouge_l_char("对称加密算法", "非对称加密"), 4 / 6, 4 / 5, 8 / 11)


def test_char_rouge_on_mixed_text_ignores_spaces_and_case():
    # "aes密钥128位" (9) against "aes-256的密钥是256位" (15): LCS "aes" + "密钥" + "2位" = 7.
    assert char_tokens("AES 密钥 128 位") == "aes密钥128位"
    assert close(rouge_l_char("AES 密钥 128 位", "AES-256 的密钥是 256 位"), 7 / 9, 7 / 15, 14 / 24)
    assert rouge_l_char("aes", "AES").f1 == 1.0


def test_word_rouge_uses_jieba_words_with_domain_terms(dictionary):
    assert word_tokens("SM4是一种分组密码") == ["sm4", "是", "一种", "分组密码"]
    assert word_tokens("SM4是分组密码算法") == ["sm4", "是", "分组密码算法"]
    # Common words: "sm4", "是" -> P = 2/4, R = 2/3, F = 2*2/(4+3).
    assert close(rouge_l_word("SM4是一种分组密码", "SM4是分组密码算法"), 2 / 4, 2 / 3, 4 / 7)


def test_word_rouge_on_mixed_chinese_and_english(dictionary):
    assert word_tokens("AES 是 block cipher") == ["aes", "是", "block", "cipher"]
    assert word_tokens("AES是分组密码") == ["aes", "是", "分组密码"]
    assert close(rouge_l_word("AES 是 block cipher", "AES是分组密码"), 2 / 4, 2 / 3, 4 / 7)


def test_term_rouge_weighs_terms_by_complexity(dictionary):
    assert (dictionary["sm4"].complexity, dictionary["block_cipher"].complexity) == (3, 2)
    # [SM4:3, 是, 一, 种, 分组密码:2] = 8 against [SM4:3, 是, 分组密码算法:2] = 6; the LCS keeps SM4, 是 and the
    # block-cipher term (another surface form of it): 3 + 1 + 2 = 6.
    assert close(rouge_l_term("SM4是一种分组密码", "SM4是分组密码算法", dictionary), 6 / 8, 6 / 6, 12 / 14)


def test_term_rouge_punishes_the_wrong_algorithm_more_than_char_rouge(dictionary):
    # Characters: "es是分组密码" matches 7 of 8. Terms: AES (2) != DES (2), so only 是 + 分组密码 (2) = 3 of 5.
    assert rouge_l_char("AES是分组密码", "DES是分组密码").f1 == pytest.approx(7 / 8)
    assert rouge_l_term("AES是分组密码", "DES是分组密码", dictionary).f1 == pytest.approx(3 / 5)


@pytest.mark.parametrize("prediction", ["", "   \n"])
def test_empty_prediction_scores_zero(dictionary, prediction):
    reference = "SM4 的分组长度为 128 位。"
    assert rouge_l_char(prediction, reference) == RougeScore(0.0, 0.0, 0.0)
    assert rouge_l_word(prediction, reference) == RougeScore(0.0, 0.0, 0.0)
    assert rouge_l_term(prediction, reference, dictionary) == RougeScore(0.0, 0.0, 0.0)
    assert lcs_rouge("", "") == RougeScore(0.0, 0.0, 0.0)


def test_identical_texts_score_one(dictionary):
    text = "SM2 基于椭圆曲线离散对数问题，而 RSA 基于大整数分解（RFC 8017）。"
    assert rouge_l_char(text, text) == RougeScore(1.0, 1.0, 1.0)
    assert rouge_l_word(text, text) == RougeScore(1.0, 1.0, 1.0)
    assert rouge_l_term(text, text, dictionary) == RougeScore(1.0, 1.0, 1.0)


def _weighted_lcs(first: list[tuple[str, int]], second: list[tuple[str, int]]) -> int:
    """The textbook O(n·m) dynamic program: a match of equal tokens earns the token's weight."""
    table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
    for i, (token, weight) in enumerate(first, 1):
        for j, (other, _) in enumerate(second, 1):
            table[i][j] = max(table[i - 1][j], table[i][j - 1], table[i - 1][j - 1] + weight * (token == other))
    return table[-1][-1]


def test_term_weighted_tokens_give_the_weighted_lcs_of_term_and_character_tokens():
    terms = [
        CryptoTerm(id="alpha", zh="甲乙", en="alpha", category="symmetric", complexity=3),
        CryptoTerm(id="beta", zh="丙丁", en="beta", category="symmetric", complexity=2),
        CryptoTerm(id="gamma", zh="甲乙丙", en="gamma", category="symmetric", complexity=5),
    ]
    dictionary = TermDictionary(terms)
    rng = random.Random(3)

    def tokens(text: str) -> list[tuple[str, int]]:
        result, position = [], 0
        for match in dictionary.find(text):
            result += [(char, 1) for char in text[position : match.start]]
            result.append((match.term_id, dictionary[match.term_id].complexity))
            position = match.end
        return result + [(char, 1) for char in text[position:]]

    for _ in range(300):
        first, second = ("".join(rng.choices("甲乙丙丁子", k=rng.randint(0, 14))) for _ in range(2))
        first_string = term_weighted_tokens(first, dictionary.find(first), dictionary)
        second_string = term_weighted_tokens(second, dictionary.find(second), dictionary)
        expected = _weighted_lcs(tokens(first), tokens(second))
        total_first, total_second = sum(w for _, w in tokens(first)), sum(w for _, w in tokens(second))
        assert (len(first_string), len(second_string)) == (total_first, total_second)
        assert lcs_rouge(first_string, second_string) == RougeScore.from_lcs(expected, total_first, total_second)
