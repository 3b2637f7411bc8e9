import pytest

from qft_core.data.terms import TERM_CATEGORIES, TermDictionary
from qft_core.data.thinking import (
    CATEGORY_LABELS_ZH,
    classify_question,
    extract_quantities,
    generate_thinking,
    score_thinking,
    split_sentences,
)
from qft_core.records import CryptoTerm, ThinkingExample, render_thinking


@pytest.fixture(scope="module")
def dictionary() -> TermDictionary:
    return TermDictionary(
        [
            CryptoTerm(id="sm3", zh="SM3", en="SM3 hash algorithm", synonyms=["SM3 杂凑算法"], category="chinese_standard", complexity=3),
            CryptoTerm(id="md5", zh="MD5", en="MD5 message digest", category="hash_mac", complexity=2),
            CryptoTerm(id="hash_function", zh="哈希函数", en="hash function", synonyms=["杂凑函数"], category="hash_mac", complexity=2),
            CryptoTerm(id="collision_attack", zh="碰撞攻击", en="collision attack", category="cryptanalysis", complexity=3),
            CryptoTerm(id="aes", zh="高级加密标准", en="Advanced Encryption Standard", abbreviation="AES", category="symmetric", complexity=3),
            CryptoTerm(id="block_cipher", zh="分组密码", en="block cipher", category="symmetric", complexity=2),
            CryptoTerm(id="cryptography", zh="密码学", en="cryptography", category="fundamentals", complexity=1),
        ]
    )


QUESTION = "SM3 和 MD5 有什么区别？"
ANSWER = "SM3 是我国发布的哈希函数，输出 256 位摘要。MD5 只输出 128 位，并且已经被碰撞攻击攻破。因此新系统应当选用 SM3。"


def example(question: str = QUESTION, answer: str = ANSWER) -> ThinkingExample:
    return ThinkingExample(id="q1", question=question, answer=answer, source_file="t.md", source_line=1, thinking=[])


def test_generated_thinking_is_deterministic(dictionary):
    first = generate_thinking(example(), dictionary)
    second = generate_thinking(example(), dictionary)
    assert [root.model_dump() for root in first] == [root.model_dump() for root in second]


def test_generated_thinking_is_one_root_with_the_four_phases(dictionary):
    thinking = generate_thinking(example(), dictionary)
    assert len(thinking) == 1
    phases = [child.text.split("：", 1)[0] for child in thinking[0].children]
    assert phases == ["分析问题", "回忆相关概念", "逐步推理", "得出结论"]
    assert thinking[0].depth() == 3


def test_generated_thinking_names_the_question_kind_and_compared_objects(dictionary):
    analysis = generate_thinking(example(), dictionary)[0].children[0]
    assert "比较题" in analysis.text
    assert analysis.children[0].text == "需要对照的对象是SM3和MD5，要看它们在同一维度上有什么不同。"


def test_compared_objects_are_the_terms_joined_by_conjunctions(dictionary):
    thinking = generate_thinking(example("密码学里 SM3、MD5 与 AES 有什么区别？", ANSWER), dictionary)
    assert thinking[0].children[0].children[0].text == "需要对照的对象是SM3、MD5和高级加密标准，要看它们在同一维度上有什么不同。"


def test_generated_thinking_recalls_every_term_with_english_name_and_category(dictionary):
    recall = generate_thinking(example(), dictionary)[0].children[1]
    assert [child.text for child in recall.children] == [
        "SM3（SM3 hash algorithm）属于国密标准方面的概念，题目里直接提到了它。",
        "MD5（MD5 message digest）属于哈希与消息认证方面的概念，题目里直接提到了它。",
        "哈希函数（hash function）属于哈希与消息认证方面的概念，回答时要用到它。",
        "碰撞攻击（collision attack）属于密码分析方面的概念，回答时要用到它。",
    ]


def test_generated_thinking_reaches_every_term_of_the_answer(dictionary):
    reasoning = render_thinking(generate_thinking(example(), dictionary))
    assert set(dictionary.term_ids(QUESTION + ANSWER)) <= set(dictionary.term_ids(reasoning))
    assert score_thinking(reasoning, ANSWER, dictionary).key_term_coverage == 1.0


def test_each_answer_sentence_becomes_a_step_linked_to_its_concepts(dictionary):
    steps = generate_thinking(example(), dictionary)[0].children[2].children
    assert [step.text for step in steps] == [
        "首先，结合SM3、哈希函数来看：SM3 是我国发布的哈希函数，输出 256 位摘要。",
        "其次，结合MD5、碰撞攻击来看：MD5 只输出 128 位，并且已经被碰撞攻击攻破。",
        "最后，结合SM3来看：因此新系统应当选用 SM3。",
    ]


def test_conclusion_restates_the_concluding_sentence(dictionary):
    conclusion = generate_thinking(example(), dictionary)[0].children[3]
    assert conclusion.text == f"得出结论：回到问题“{QUESTION}”，综上，新系统应当选用 SM3。"


def test_numeric_question_lists_the_answers_quantities(dictionary):
    thinking = generate_thinking(example("SM3 的输出长度是多少位？", "SM3 的输出长度为 256 位。"), dictionary)
    assert "数值题" in thinking[0].children[0].text
    assert thinking[0].children[3].children[0].text == "关键数值是256 位，单位与题目所问一致。"


def test_question_without_terms_still_gets_all_phases(dictionary):
    thinking = generate_thinking(example("什么是频率分析？", "统计密文中各字母出现的频率来猜测明文。"), dictionary)
    assert len(thinking[0].children) == 4
    assert thinking[0].children[1].text.startswith("回忆相关概念：这里没有术语表里的专门概念")


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("AES 和 SM4 有什么区别？", "comparison"),
        ("为什么 AES 需要 10 轮？", "why"),
        ("如何安全地存储口令？", "how"),
        ("SM3 的输出长度是多少？", "numeric"),
        ("什么是分组密码？", "definition"),
        ("请谈谈前向安全。", "explanation"),
    ],
)
def test_questions_are_classified_by_their_cue_words(question, kind):
    assert classify_question(question) == kind


def test_sentences_split_at_chinese_marks_and_drop_list_markers():
    assert split_sentences("第一句。第二句！\n- 列表项\n|---|\n1. 编号项；") == ["第一句。", "第二句！", "列表项", "编号项；"]


def test_every_term_category_has_a_chinese_label():
    assert set(CATEGORY_LABELS_ZH) == set(TERM_CATEGORIES)


def test_quantities_carry_term_attribute_and_bits(dictionary):
    found = extract_quantities("AES 使用 128 位的分组和 128、192 或 256 位的密钥。SM3 的杂凑值为 32 字节，共 64 轮。", dictionary)
    assert [(q.value, q.unit, q.context, q.attribute) for q in found] == [
        (128.0, "bit", "aes", "block"),
        (128.0, "bit", "aes", "key"),
        (192.0, "bit", "aes", "key"),
        (256.0, "bit", "aes", "key"),
        (256.0, "bit", "sm3", "output"),
        (64.0, "round", "sm3", None),
    ]


def test_quantities_of_a_text_read_again_are_equal_and_independent(dictionary):
    first = extract_quantities(ANSWER, dictionary)
    first.clear()
    again = extract_quantities(ANSWER, dictionary)
    assert [(quantity.value, quantity.context) for quantity in again] == [(256.0, "sm3"), (128.0, "md5")]


def test_identifiers_exponents_fractions_and_ordinals_are_not_quantities(dictionary):
    assert extract_quantities("SHA-256 的强度是 2^128，即 n/2 位；第 3 位是校验位。", dictionary) == []


def test_copy_of_the_answer_scores_zero_on_non_trivial(dictionary):
    score = score_thinking(ANSWER, ANSWER, dictionary)
    assert score.non_trivial == 0.0
    assert score.key_term_coverage == 1.0
    assert score.score < 0.7


def test_numeric_contradiction_is_detected_and_listed(dictionary):
    score = score_thinking("SM3 输出 128 位，所以它和 MD5 一样长。", "SM3 的输出长度为 256 位。", dictionary)
    assert score.contradictions == ["SM3 输出：推理写 128 位，答案写 256 位"]
    assert score.numeric_consistency == 0.0


def test_same_length_in_bytes_and_bits_does_not_contradict(dictionary):
    assert score_thinking("SM3 输出 32 字节。", "SM3 输出 256 位。", dictionary).contradictions == []


def test_one_value_of_a_listed_range_is_consistent(dictionary):
    score = score_thinking("AES 的密钥可以是 128 位。", "AES 的密钥长度可以是 128、192 或 256 位。", dictionary)
    assert score.contradictions == []
    assert score.numeric_consistency == 1.0


def test_lengths_of_different_algorithms_are_not_compared(dictionary):
    score = score_thinking("MD5 输出 128 位，比 SM3 短。", "SM3 输出 256 位。", dictionary)
    assert score.contradictions == []


GOOD_TRACE = (
    "题目要比较两种摘要算法。SM3 是国家密码管理局发布的杂凑函数，结构上沿用 Merkle–Damgård 迭代，"
    "但压缩函数加入了更复杂的消息扩展。MD5 早在 2004 年就被王小云团队找到实际碰撞攻击，"
    "签名和证书场景已经无法信任它。长度方面 SM3 输出 256 位，MD5 输出 128 位。综上，新系统应当选 SM3。"
)


def test_a_good_trace_scores_higher_than_a_bad_one(dictionary):
    good = score_thinking(GOOD_TRACE, ANSWER, dictionary)
    bad = score_thinking("SM3 输出 128 位。SM3 输出 128 位。", ANSWER, dictionary)
    assert good.contradictions == [] and good.concluded and good.key_term_coverage == 1.0
    assert bad.contradictions == ["SM3 输出：推理写 128 位，答案写 256 位"]
    assert bad.missing_terms == ["hash_function", "md5", "collision_attack"]
    assert good.score > 0.9 > 0.5 > bad.score


def test_score_combines_its_parts_with_the_documented_weights(dictionary):
    # Reaches SM3 but not MD5 (coverage 1/2), long, varied and copied from nowhere (non_trivial 1),
    # no shared quantity (consistency 1), ends on 所以 (concluded): 0.35·0.5 + 0.35 + 0.2 + 0.1 = 0.825.
    reasoning = "先回忆 SM3 的设计背景：它是国家密码管理局在二零一零年公布的杂凑标准，压缩函数采用双字并行的布尔函数与置换。所以它可以替代旧算法。"
    score = score_thinking(reasoning, "SM3 和 MD5 都是迭代结构。", dictionary)
    assert (score.key_term_coverage, score.non_trivial, score.numeric_consistency, score.concluded) == (0.5, 1.0, 1.0, True)
    assert score.score == pytest.approx(0.825)


def test_unclosed_thinking_tag_halves_the_score(dictionary):
    closed = score_thinking(GOOD_TRACE, ANSWER, dictionary)
    unclosed = score_thinking("<think>" + GOOD_TRACE, ANSWER, dictionary)
    assert closed.closed and not unclosed.closed
    assert unclosed.score == pytest.approx(closed.score / 2, abs=1e-5)


def test_empty_reasoning_scores_zero(dictionary):
    score = score_thinking("  \n", ANSWER, dictionary)
    assert (score.present, score.score) == (False, 0.0)
    assert score.missing_terms == ["sm3", "hash_function", "md5", "collision_attack"]


def test_generated_thinking_scores_as_present_closed_and_concluded(dictionary):
    reasoning = render_thinking(generate_thinking(example(), dictionary))
    score = score_thinking(reasoning, ANSWER, dictionary)
    assert score.present and score.closed and score.concluded
    assert 0.0 < score.non_trivial <= 1.0
    assert score.contradictions == []
