import math

import pytest

from qft_core.data.terms import load_default_dictionary
from qft_core.data.thinking import score_thinking
from qft_core.evaluate.thinking_quality import Generation, split_generation, thinking_quality


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("先想一想。\n</think>\n\n答案。", Generation("先想一想。", "答案。", closed=True)),
        ("<think>先想一想。</think>答案。", Generation("先想一想。", "答案。", closed=True)),
        ("想 </think> 再想 </think> 答案", Generation("想 </think> 再想", "答案", closed=True)),
        ("</think>答案", Generation("", "答案", closed=True)),
        ("<think>想到一半就被截断", Generation("想到一半就被截断", "", closed=False)),
        ("只有答案。", Generation("", "只有答案。", closed=False)),
    ],
)
def test_reasoning_is_the_text_before_the_last_closing_tag(text, expected):
    assert split_generation(text) == expected


def test_thinking_metrics_reuse_the_data_side_score():
    dictionary = load_default_dictionary()
    reasoning = "题目问 SM3 的输出长度。SM3 是国密杂凑算法，输出 256 位，分组 512 位。因此答案是 256 位。"
    answer = "SM3 的杂凑值长度为 256 位。"
    quality = thinking_quality(split_generation(f"{reasoning}</think>{answer}"), dictionary)
    assert quality.present
    # Letters and digits only: the non-whitespace text less its punctuation (3 '。', 2 '，').
    assert quality.chars == len("".join(reasoning.split())) - 5
    assert quality.coherence == score_thinking(reasoning, answer, dictionary).score > 0.5
    assert 0.0 <= quality.repetition < 0.2


def test_missing_reasoning_scores_zero_coherence_and_no_repetition():
    quality = thinking_quality(split_generation("只有答案。"), load_default_dictionary())
    assert (quality.present, quality.chars, quality.coherence) == (False, 0, 0.0)
    assert math.isnan(quality.repetition)


def test_looping_reasoning_has_high_repetition():
    looping = "我需要再想一想。" * 20
    quality = thinking_quality(split_generation(f"{looping}</think>答案"), load_default_dictionary())
    assert quality.repetition > 0.8


def test_punctuation_only_reasoning_is_absent_with_zero_chars_not_present_with_192():
    """The issue's qwen3-tiny: 192 commas of reasoning read `thinking_present 0` beside `thinking_chars 192`."""
    quality = thinking_quality(split_generation("，" * 192 + "</think>，，"), load_default_dictionary())
    assert quality.as_metrics()["thinking_present"] == 0.0 and quality.as_metrics()["thinking_chars"] == 0.0
    assert "thinking_closed" not in quality.as_metrics()
