import pytest

from qft_core.config import DataConfig
from qft_core.data.annotate import annotate_examples
from qft_core.data.terms import TermDictionary
from qft_core.data.thinking import generate_thinking, score_thinking
from qft_core.records import CryptoTerm, ThinkingExample, ThinkingStructure


@pytest.fixture(scope="module")
def dictionary() -> TermDictionary:
    return TermDictionary(
        [
            CryptoTerm(id="sm2", zh="SM2", en="SM2 public key algorithm", category="chinese_standard", complexity=3),
            CryptoTerm(id="ecdsa", zh="椭圆曲线数字签名算法", en="Elliptic Curve Digital Signature Algorithm", abbreviation="ECDSA", category="signature", complexity=4),
            CryptoTerm(id="digital_signature", zh="数字签名", en="digital signature", category="signature", complexity=1),
            CryptoTerm(id="private_key", zh="私钥", en="private key", category="fundamentals", complexity=1),
            CryptoTerm(id="nonce", zh="随机数", en="nonce", category="fundamentals", complexity=2),
        ]
    )


def make(question: str, answer: str, thinking: list[ThinkingStructure] | None = None, category: str | None = None) -> ThinkingExample:
    return ThinkingExample(
        id="a1", question=question, answer=answer, source_file="t.md", source_line=3, category=category, thinking=thinking or []
    )


EXPERT = make(
    "SM2 签名和 ECDSA 有什么不同？",
    "两者都基于椭圆曲线，但 SM2 的签名方程不同，并在摘要中加入用户身份。",
    [ThinkingStructure(text="先看签名时用到的随机数：一旦重复就会泄露私钥。", line=4)],
)


def test_annotation_fills_terms_categories_and_complexity_from_all_three_texts(dictionary):
    [annotated] = annotate_examples([EXPERT], dictionary, DataConfig())
    assert annotated.terms == ["sm2", "ecdsa", "nonce", "private_key"]
    assert annotated.term_categories == ["chinese_standard", "fundamentals", "signature"]
    # complexities 3, 4, 2, 1: 0.5 * max 4 + 0.5 * mean 2.5
    assert annotated.term_complexity == pytest.approx(3.25)
    assert annotated.thinking_origin == "expert"
    assert annotated.thinking == EXPERT.thinking


def test_annotation_adds_answer_metrics_and_thinking_quality(dictionary):
    [annotated] = annotate_examples([EXPERT], dictionary, DataConfig())
    assert annotated.metrics is not None
    assert annotated.metrics.char_count == len("".join(EXPERT.answer.split()))
    assert annotated.thinking_quality == score_thinking(EXPERT.reasoning, EXPERT.answer, dictionary).score


def test_missing_thinking_gets_the_template_marked_template(dictionary):
    bare = make("ECDSA 签名为什么需要随机数？", "每次签名的随机数必须保密且不重复，否则可以解出私钥。")
    [annotated] = annotate_examples([bare], dictionary, DataConfig())
    assert annotated.thinking_origin == "template"
    assert annotated.thinking == generate_thinking(bare, dictionary)
    assert annotated.thinking_quality is not None and annotated.thinking_quality > 0


def test_generated_reasoning_adds_no_terms_of_its_own(dictionary):
    # The recall phase says ECDSA "属于数字签名方面的概念": that label must not become a term of the example.
    bare = make("什么是 ECDSA？", "ECDSA 是基于椭圆曲线的签名算法。")
    [annotated] = annotate_examples([bare], dictionary, DataConfig())
    assert "数字签名" in annotated.reasoning
    assert annotated.terms == ["ecdsa"]


def test_missing_thinking_stays_empty_when_generation_is_off(dictionary):
    bare = make("什么是 ECDSA？", "ECDSA 是基于椭圆曲线的签名算法。")
    [annotated] = annotate_examples([bare], dictionary, DataConfig(generate_missing_thinking=False))
    assert (annotated.thinking, annotated.thinking_origin, annotated.thinking_quality) == ([], "none", None)
    assert annotated.terms == ["ecdsa"]


def test_front_matter_category_stands_in_when_no_term_is_found(dictionary):
    config = DataConfig(generate_missing_thinking=False)
    no_terms = ("凯撒移位怎样破解？", "穷举全部 25 种移位即可。")
    [classical] = annotate_examples([make(*no_terms, category="classical")], dictionary, config)
    [unknown] = annotate_examples([make(*no_terms, category="not_a_category")], dictionary, config)
    assert (classical.terms, classical.term_categories, classical.term_complexity) == ([], ["classical"], 0.0)
    assert unknown.term_categories == []


def test_annotation_returns_new_objects_and_is_deterministic(dictionary):
    bare = make("ECDSA 签名为什么需要随机数？", "每次签名的随机数必须保密且不重复，否则可以解出私钥。")
    before = bare.model_dump()
    first = annotate_examples([bare, EXPERT], dictionary, DataConfig())
    second = annotate_examples([bare, EXPERT], dictionary, DataConfig())
    assert bare.model_dump() == before
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]
    assert [e.id for e in first] == [bare.id, EXPERT.id]
