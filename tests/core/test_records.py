import pytest
from pydantic import ValidationError

from qft_core.records import (
    ChineseMetrics,
    ThinkingExample,
    ThinkingStructure,
    read_jsonl,
    read_parquet,
    render_thinking,
    write_jsonl,
    write_parquet,
)


def _example(**changes) -> ThinkingExample:
    values = dict(
        id="ex1",
        question="SM3 的输出长度是多少？",
        answer="SM3 输出 256 位杂凑值。",
        source_file="data/corpus/a.md",
        source_line=12,
        category_path=["国密", "杂凑"],
        difficulty=2,
        tags=["SM3"],
        thinking=[
            ThinkingStructure(
                text="先回忆 SM3 的设计。",
                line=13,
                children=[ThinkingStructure(text="它基于 Merkle-Damgård 结构。", line=14)],
            ),
            ThinkingStructure(text="输出 256 位。", line=16),
        ],
        terms=["sm3"],
        term_categories=["chinese_standard"],
        term_complexity=2.5,
        metrics=ChineseMetrics(
            char_count=14, word_count=6, cjk_ratio=0.5, punctuation_score=1.0, repetition_ratio=0.0, quality_score=0.9
        ),
        split="train",
    )
    values.update(changes)
    return ThinkingExample(**values)


def test_thinking_tree_depth_and_rendering_follow_document_order():
    example = _example()
    assert example.thinking_depth() == 2
    assert example.reasoning == "先回忆 SM3 的设计。\n\n它基于 Merkle-Damgård 结构。\n\n输出 256 位。"
    assert render_thinking([]) == ""


def test_parquet_round_trip_is_lossless(tmp_path):
    examples = [_example(), _example(id="ex2", thinking=[], thinking_origin="none", metrics=None, difficulty=None)]
    path = write_parquet(examples, ThinkingExample, tmp_path / "x.parquet")
    assert read_parquet(path, ThinkingExample) == examples


def test_jsonl_round_trip_is_lossless(tmp_path):
    examples = [_example(), _example(id="ex2", tags=[])]
    path = write_jsonl(examples, tmp_path / "x.jsonl")
    assert read_jsonl(path, ThinkingExample) == examples
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_empty_parquet_round_trip(tmp_path):
    path = write_parquet([], ThinkingExample, tmp_path / "empty.parquet")
    assert read_parquet(path, ThinkingExample) == []


@pytest.mark.parametrize("field, value", [("question", "  "), ("difficulty", 6), ("source_line", 0)])
def test_invalid_values_are_rejected(field, value):
    with pytest.raises(ValidationError, match=field):
        _example(**{field: value})
