"""The Qwen3-Thinking-2507 training format: ids equal the official template's, and the loss masks are exact."""

from __future__ import annotations

import pytest

from qft_core.model.chat import (
    IGNORE_INDEX,
    ChatFormatError,
    Turn,
    conversation_messages,
    encode_conversation,
    encode_example,
    generation_prompt_ids,
    split_reasoning,
)
from qft_core.records import ThinkingExample, ThinkingStructure

SYSTEM = "你是一位密码学专家。"
THINK_CLOSE_ID = 151668
IM_END_ID = 151645
NEWLINE_ID = 198


def thinking_example(question: str, answer: str, steps: list[str]) -> ThinkingExample:
    return ThinkingExample(
        id="ex-1",
        question=question,
        answer=answer,
        source_file="corpus/01.md",
        source_line=1,
        thinking=[ThinkingStructure(text=step) for step in steps],
        thinking_origin="expert" if steps else "none",
    )


AES = thinking_example("什么是AES？", "AES是分组密码。", ["先回忆定义。"])


def official_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)


def trained_pieces(tokenizer, encoded) -> list[str]:
    return [tokenizer.decode([token]) for token in encoded.labels if token != IGNORE_INDEX]


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_single_turn_ids_equal_the_official_template(qwen3_tokenizer, system):
    encoded = encode_example(AES, qwen3_tokenizer, system=system)
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": "什么是AES？"},
        {"role": "assistant", "content": "AES是分组密码。", "reasoning_content": "先回忆定义。"},
    ]
    assert encoded.input_ids == official_ids(qwen3_tokenizer, messages)


def test_target_equals_what_the_model_generates_after_the_prompt(qwen3_tokenizer):
    # The official template parses a raw completion (reasoning, closing tag, answer) the same way.
    completion = "先回忆定义。\n</think>\n\nAES是分组密码。"
    messages = [{"role": "user", "content": "什么是AES？"}, {"role": "assistant", "content": completion}]
    assert encode_example(AES, qwen3_tokenizer).input_ids == official_ids(qwen3_tokenizer, messages)


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_multi_turn_ids_equal_the_official_template_which_drops_earlier_reasoning(qwen3_tokenizer, system):
    turns = [
        Turn("什么是哈希函数？", "把任意长消息映射为定长摘要的函数。", "回忆哈希的定义。"),
        Turn("SM3的输出多长？", "256位。", "SM3是国密哈希算法。"),
        Turn("它安全吗？", "目前没有实际攻击。", "考虑碰撞攻击的现状。"),
    ]
    encoded = encode_conversation(turns, qwen3_tokenizer, system=system)
    messages = [{"role": "system", "content": system}] if system else []
    for turn in turns:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer, "reasoning_content": turn.reasoning})
    assert encoded.input_ids == official_ids(qwen3_tokenizer, messages)
    text = qwen3_tokenizer.decode(encoded.input_ids)
    assert "回忆哈希的定义" not in text and "SM3是国密哈希算法" not in text and "考虑碰撞攻击的现状" in text


def test_multi_turn_trains_only_the_final_assistant_turn(qwen3_tokenizer):
    turns = [Turn("问一", "答一", "想一"), Turn("问二", "答二", "想二")]
    encoded = encode_conversation(turns, qwen3_tokenizer)
    assert "".join(trained_pieces(qwen3_tokenizer, encoded)) == "想二\n</think>\n\n答二<|im_end|>"


def test_only_the_final_turn_keeps_its_reasoning_in_the_messages():
    messages = conversation_messages([Turn("q1", "a1", "r1"), Turn("q2", "a2", "r2")], system="s")
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["reasoning_content"] == "" and messages[4]["reasoning_content"] == "r2"


def test_an_empty_conversation_is_refused(qwen3_tokenizer):
    with pytest.raises(ChatFormatError, match="at least one turn"):
        encode_conversation([], qwen3_tokenizer)


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_loss_starts_at_the_first_reasoning_token_right_after_the_generation_prompt(qwen3_tokenizer, system):
    encoded = encode_example(AES, qwen3_tokenizer, system=system)
    prompt = generation_prompt_ids(AES.question, qwen3_tokenizer, system=system)
    first_trained = next(index for index, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert first_trained == len(prompt) == encoded.reasoning_span[0]
    assert encoded.input_ids[:first_trained] == prompt
    assert encoded.input_ids[first_trained] == qwen3_tokenizer.encode("先")[0]


def test_trained_tokens_are_reasoning_close_tag_answer_and_im_end_exactly(qwen3_tokenizer):
    encoded = encode_example(AES, qwen3_tokenizer)
    # Hand-checked: "。" fuses with the scaffold's "\n" into one token, which starts in the reasoning.
    assert trained_pieces(qwen3_tokenizer, encoded) == [
        "先", "回忆", "定义", "。\n", "</think>", "\n\n", "AES", "是", "分", "组", "密码", "。", "<|im_end|>",
    ]  # fmt: skip
    assert encoded.input_ids[-2:] == [IM_END_ID, NEWLINE_ID]
    assert encoded.labels[-2:] == [IM_END_ID, IGNORE_INDEX]
    assert THINK_CLOSE_ID in [label for label in encoded.labels if label != IGNORE_INDEX]
    assert encoded.trained_tokens == 13


def test_spans_cover_the_reasoning_and_the_answer(qwen3_tokenizer):
    encoded = encode_example(AES, qwen3_tokenizer)
    start, end = encoded.reasoning_span
    assert qwen3_tokenizer.decode(encoded.input_ids[start:end]) == "先回忆定义。\n"
    start, end = encoded.answer_span
    assert qwen3_tokenizer.decode(encoded.input_ids[start:end]) == "AES是分组密码。"
    assert encoded.input_ids[end] == IM_END_ID


def test_no_loss_on_reasoning_masks_exactly_the_reasoning_tokens(qwen3_tokenizer):
    example = thinking_example("SM2基于什么？", "椭圆曲线离散对数问题。", ["SM2是公钥算法。", "它用椭圆曲线。"])
    full = encode_example(example, qwen3_tokenizer)
    answer_only = encode_example(example, qwen3_tokenizer, loss_on_reasoning=False)
    start, end = full.reasoning_span
    assert end - start > 5
    assert answer_only.input_ids == full.input_ids
    for index, (kept, masked) in enumerate(zip(full.labels, answer_only.labels, strict=True)):
        expected = IGNORE_INDEX if start <= index < end else kept
        assert masked == expected, f"token {index}"
    assert answer_only.labels[end] == THINK_CLOSE_ID


def test_empty_thinking_masks_the_scaffold_and_trains_the_answer(qwen3_tokenizer):
    example = thinking_example("什么是SM4？", "国密分组密码。", [])
    encoded = encode_example(example, qwen3_tokenizer)
    messages = [
        {"role": "user", "content": "什么是SM4？"},
        {"role": "assistant", "content": "国密分组密码。", "reasoning_content": ""},
    ]
    assert encoded.input_ids == official_ids(qwen3_tokenizer, messages)
    assert encoded.reasoning_span[0] == encoded.reasoning_span[1]
    assert "".join(trained_pieces(qwen3_tokenizer, encoded)) == "国密分组密码。<|im_end|>"


def test_empty_thinking_scaffold_is_trained_when_not_masked(qwen3_tokenizer):
    example = thinking_example("什么是SM4？", "国密分组密码。", [])
    encoded = encode_example(example, qwen3_tokenizer, mask_empty_thinking=False)
    # "<think>\n" + "\n</think>" fuses into "\n\n", which starts in the prompt and stays context.
    assert trained_pieces(qwen3_tokenizer, encoded)[:3] == ["</think>", "\n\n", "国"]
    assert "".join(trained_pieces(qwen3_tokenizer, encoded)) == "</think>\n\n国密分组密码。<|im_end|>"


def test_newlines_around_reasoning_and_answer_are_dropped_as_the_template_does(qwen3_tokenizer):
    turn = Turn("问题", "\n\n答案\n", "\n推理\n\n")
    encoded = encode_conversation([turn], qwen3_tokenizer)
    messages = [
        {"role": "user", "content": "问题"},
        {"role": "assistant", "content": "\n\n答案\n", "reasoning_content": "\n推理\n\n"},
    ]
    assert encoded.input_ids == official_ids(qwen3_tokenizer, messages)
    assert "".join(trained_pieces(qwen3_tokenizer, encoded)) == "推理\n</think>\n\n答案\n<|im_end|>"


def test_nested_thinking_is_rendered_in_document_order(qwen3_tokenizer):
    step = ThinkingStructure(text="总体思路。", children=[ThinkingStructure(text="细节一。")])
    example = AES.model_copy(update={"thinking": [step]})
    encoded = encode_example(example, qwen3_tokenizer)
    start, end = encoded.reasoning_span
    assert qwen3_tokenizer.decode(encoded.input_ids[start:end]) == "总体思路。\n\n细节一。\n"


def test_generation_prompt_opens_thinking(qwen3_tokenizer):
    ids = generation_prompt_ids("你好", qwen3_tokenizer, system=SYSTEM)
    assert ids[-5:] == [151644, 77091, NEWLINE_ID, 151667, NEWLINE_ID]
    assert qwen3_tokenizer.decode(ids).startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("推理过程\n</think>\n\n答案", ("推理过程", "答案")),
        ("<think>\n推理\n</think>\n\n答案<|im_end|>", ("推理", "答案")),
        ("一</think>二</think>\n\n三", ("一</think>二", "三")),
        ("没有思考标签的回答", ("", "没有思考标签的回答")),
        ("<think>\n想到一半", ("想到一半", "")),
        ("推理</think>答案<|im_end|>\n<|im_start|>user", ("推理", "答案")),
        ("推理</think>答案<|endoftext|>垃圾", ("推理", "答案")),
        ("\n</think>\n\n直接回答", ("", "直接回答")),
    ],
)
def test_split_reasoning_cuts_at_the_last_close_tag(generated, expected):
    assert split_reasoning(generated) == expected
