import math

import pytest

from qft_core.data.terms import load_default_dictionary
from qft_core.data.thinking import extract_quantities
from qft_core.evaluate.facts import load_default_fact_base
from qft_core.evaluate.metrics import PairScorer, _TextAnalysis, score_many, score_pair
from qft_core.evaluate.misconceptions import load_default_misconceptions

REFERENCE = "SM3 是我国的密码杂凑算法（GB/T 32905—2016），输出 256 位杂凑值，消息分组为 512 位，共 64 轮迭代。"
FACTS = load_default_fact_base()
PREDICTION = "题目问 SM3。SM3 是杂凑算法，输出 256 位。因此答案是 256 位。</think>\n\nSM3 是密码杂凑算法，输出 128 位。SM3 是一种加密算法。"


@pytest.fixture(scope="module")
def dictionary():
    return load_default_dictionary()


@pytest.fixture(scope="module")
def misconceptions(dictionary):
    return load_default_misconceptions(dictionary)


def test_score_pair_gives_every_metric_by_flat_name(dictionary, misconceptions):
    scores = score_pair(PREDICTION, REFERENCE, dictionary=dictionary, misconceptions=misconceptions, facts=FACTS)
    assert scores["misconceptions"] == 2.0  # "输出 128 位" and "是一种加密算法"
    assert (scores["numeric_consistency"], scores["numeric_contradictions"]) == (0.0, 1.0)
    # Whether `</think>` was the model's own is a generation statistic, not a text metric.
    assert scores["thinking_present"] == 1.0 and "thinking_closed" not in scores
    assert 0.0 < scores["thinking_coherence"] <= 1.0
    # Terms of the answer {sm3, hash_function, encryption} and the reference {sm3, hash_function, message_digest}.
    assert scores["term_f1"] == pytest.approx(2 * 2 / (3 + 3))
    assert 0.0 < scores["rougeL_char_f1"] < 1.0 and 0.0 < scores["rougeL_term_f1"] < 1.0
    assert math.isnan(scores["thinking_rougeL_char_f1"]) and scores["traditional_chars"] == 0.0
    assert all(isinstance(value, float) for value in scores.values())


def test_every_pair_has_the_same_metric_names(dictionary, misconceptions):
    empty = score_pair("", REFERENCE, dictionary=dictionary, misconceptions=misconceptions, facts=FACTS)
    full = score_pair(PREDICTION, REFERENCE, reference_reasoning="SM3 输出 256 位。", dictionary=dictionary,
                      misconceptions=misconceptions, facts=FACTS)
    assert list(empty) == list(full)
    assert empty["rougeL_char_f1"] == empty["rougeL_word_f1"] == empty["rougeL_term_f1"] == 0.0
    assert empty["thinking_present"] == 0.0 and empty["answer_chars"] == 0.0
    # Reasoning terms {sm3, hash_function} against the reference reasoning's {sm3}.
    assert 0.0 < full["thinking_rougeL_char_f1"] < 1.0 and full["thinking_term_f1"] == pytest.approx(2 / 3)


def test_identical_answer_scores_full_marks(dictionary, misconceptions):
    scores = score_pair(
        f"想一想。</think>{REFERENCE}", REFERENCE, dictionary=dictionary, misconceptions=misconceptions, facts=FACTS
    )
    for metric in ("rougeL_char_f1", "rougeL_word_f1", "rougeL_term_f1", "term_f1", "keypoint_coverage",
                   "numeric_consistency"):
        assert scores[metric] == 1.0, metric
    assert scores["misconceptions"] == 0.0


def test_score_many_matches_score_pair_in_order(dictionary, misconceptions):
    predictions = [PREDICTION, "", f"</think>{REFERENCE}"]
    references = [REFERENCE, "AES 的分组长度为 128 位。", REFERENCE]
    many = score_many(predictions, references, dictionary=dictionary, misconceptions=misconceptions, facts=FACTS)
    single = [
        score_pair(prediction, reference, dictionary=dictionary, misconceptions=misconceptions, facts=FACTS)
        for prediction, reference in zip(predictions, references)
    ]
    assert _same(many, single)


def test_worker_processes_give_the_same_scores(dictionary, misconceptions):
    predictions = [f"想。</think>SM{i % 4 + 1} 的第 {i} 个回答，输出 {128 * (i % 3 + 1)} 位。" for i in range(40)]
    references = [f"SM{i % 4 + 1} 的参考答案，输出 256 位。" for i in range(40)]
    resources = {"dictionary": dictionary, "misconceptions": misconceptions, "facts": FACTS}
    serial = score_many(predictions, references, **resources, workers=1)
    parallel = score_many(predictions, references, **resources, workers=2)
    assert _same(serial, parallel)


def test_sentence_searches_answered_from_whole_text_equal_fresh_searches(dictionary):
    scorer = PairScorer(dictionary, [], FACTS)
    text = "AES-128 为 10 轮。DESIGN 不是 DES；SM4 的密钥长度为 128 位！ChaCha20 和 Poly1305 组合成 AEAD。\n3DES 已淘汰。"
    scorer.dictionary.search_within([_TextAnalysis(text, scorer.dictionary, scorer.facts)])
    for sentence in ["AES-128 为 10 轮", "DESIGN 不是 DES", "SM4 的密钥长度为 128 位", "3DES 已淘汰", "ES-128 为 10"]:
        assert scorer.dictionary.find(sentence) == dictionary.find(sentence), sentence
    assert extract_quantities(text, scorer.dictionary) == extract_quantities(text, dictionary)


def test_mismatched_lengths_are_rejected(dictionary, misconceptions):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_many(["a", "b"], ["a"], dictionary=dictionary, misconceptions=misconceptions, facts=FACTS)


def _same(first: list[dict[str, float]], second: list[dict[str, float]]) -> bool:
    return all(
        list(a) == list(b) and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
        for a, b in zip(first, second, strict=True)
    )


def test_wrong_round_count_is_caught_where_term_overlap_is_perfect(dictionary, misconceptions):
    scores = score_pair("</think>AES-256 有 10 轮。", "AES-256 有 14 轮。", dictionary=dictionary,
                        misconceptions=misconceptions, facts=FACTS)
    assert scores["term_f1"] == 1.0
    assert (scores["numeric_consistency"], scores["numeric_contradictions"]) == (0.0, 1.0)
    assert (scores["fact_confirmed"], scores["fact_contradicted"], scores["fact_accuracy"]) == (0.0, 1.0, 0.0)
    # Key points: term aes and the quantity "10 轮" vs "14 轮" (1 of 2 covered); concept accuracy 0 of 1; the
    # reference raises no security consideration.
    assert scores["keypoint_coverage"] == 0.5 and scores["concept_accuracy"] == 0.0
    assert math.isnan(scores["security_coverage"])
    assert scores["professional_accuracy"] == pytest.approx(0.25)
