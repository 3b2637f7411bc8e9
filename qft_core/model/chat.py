"""Qwen3-Thinking-2507's conversation format: examples become token ids with loss labels, and generated text
splits back into reasoning and answer.

A final assistant turn renders (official template) as

    <|im_start|>assistant\\n<think>\\n{reasoning}\\n</think>\\n\\n{answer}<|im_end|>\\n

Everything up to and including `<think>\\n` is the generation prompt, so it is context (label -100). The target,
the part the model must produce, is `{reasoning}\\n</think>\\n\\n{answer}<|im_end|>`: `<|im_end|>` is the eos that
stops generation, so it is trained. The `\\n` after it is in `input_ids` (the template writes it, and ids equal
`apply_chat_template`'s) but masked: the model never generates it, the next turn's header follows it.

Token boundaries come from the tokenizer's character offsets of the rendered text; a token that straddles two
parts belongs to the part where it starts (with empty reasoning, `<think>\\n` and the scaffold's first `\\n` fuse
into one `\\n\\n` token, which is therefore prompt).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from qft_core.model.tokenizer import EOS_TOKEN, PAD_TOKEN, qwen3_thinking_chat_template
from qft_core.records import ThinkingExample

IGNORE_INDEX = -100
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Between the reasoning and the answer of a rendered assistant turn.
THINKING_SCAFFOLD = f"\n{THINK_CLOSE}\n\n"
TURN_END = EOS_TOKEN
TURN_SEPARATOR = "\n"


class ChatFormatError(ValueError):
    """A conversation that cannot be rendered in the Qwen3-Thinking format, or a template that renders it
    differently from what the masks assume."""


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's question and the assistant's reasoning and answer."""

    question: str
    answer: str
    reasoning: str = ""


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of a rendered conversation and the labels to train on them.

    `labels` align with `input_ids` (the causal-LM loss shifts them); -100 marks context. The spans are
    half-open token-index ranges of the final turn's reasoning and answer.
    """

    input_ids: list[int]
    labels: list[int]
    reasoning_span: tuple[int, int]
    answer_span: tuple[int, int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def conversation_messages(turns: Sequence[Turn], system: str | None = None) -> list[dict[str, str]]:
    """Chat messages for `turns`; only the final turn keeps its reasoning.

    Qwen3-Thinking never sees its earlier thoughts: the template drops reasoning from assistant turns before
    the last user query, and earlier turns carry an empty `reasoning_content` so an answer that happens to
    contain `</think>` is not split either.
    """
    if not turns:
        raise ChatFormatError("a conversation needs at least one turn")
    messages = [{"role": "system", "content": system}] if system is not None else []
    for index, turn in enumerate(turns):
        is_last = index == len(turns) - 1
        messages.append({"role": "user", "content": turn.question})
        messages.append(
            {"role": "assistant", "content": turn.answer, "reasoning_content": turn.reasoning if is_last else ""}
        )
    return messages


def render_messages(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, *, add_generation_prompt: bool = False
) -> str:
    """The conversation as text in the Qwen3-Thinking-2507 template, whatever template the tokenizer carries.

    A tokenizer that opens every text with its BOS token (Gemma's) gets it here too: qft encodes rendered text
    without special tokens, and Gemma, pretrained with BOS before every document, reads worse without it.
    """
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=qwen3_thinking_chat_template(),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    return tokenizer.bos_token + text if opens_with_bos(tokenizer) else text


def opens_with_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts its BOS token before a text it encodes with special tokens."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


def encode_conversation(
    turns: Sequence[Turn],
    tokenizer: PreTrainedTokenizerBase,
    *,
    loss_on_reasoning: bool = True,
    mask_empty_thinking: bool = True,
    system: str | None = None,
) -> EncodedExample:
    """Encode a conversation and train on its final assistant turn only.

    Earlier turns are context: rendered without reasoning, training on them would teach the model to answer
    without thinking. `loss_on_reasoning=False` masks the reasoning tokens (`</think>` and the answer are still
    trained); `mask_empty_thinking` masks the bare `\\n</think>\\n\\n` scaffold when the reasoning is empty.
    """
    messages = conversation_messages(turns, system)
    final = turns[-1]
    # The template writes the reasoning without surrounding newlines and the answer without leading ones.
    reasoning = final.reasoning.strip("\n")
    answer = final.answer.lstrip("\n")
    prompt = render_messages(messages[:-1], tokenizer, add_generation_prompt=True)
    target = reasoning + THINKING_SCAFFOLD + answer + TURN_END
    text = render_messages(messages, tokenizer)
    if text != prompt + target + TURN_SEPARATOR:
        raise ChatFormatError(
            "the chat template does not render the final assistant turn as "
            "'<think>\\n{reasoning}\\n</think>\\n\\n{answer}<|im_end|>\\n' after the generation prompt"
        )

    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    starts = [start for start, _ in encoding["offset_mapping"]]

    def first_token_at(char: int) -> int:
        return bisect_left(starts, char)

    reasoning_start = len(prompt)
    answer_start = reasoning_start + len(reasoning) + len(THINKING_SCAFFOLD)
    answer_end = answer_start + len(answer)
    target_span = (first_token_at(reasoning_start), first_token_at(answer_end + len(TURN_END)))
    reasoning_span = (target_span[0], first_token_at(reasoning_start + len(reasoning)))
    answer_span = (first_token_at(answer_start), first_token_at(answer_end))

    trained_from = target_span[0]
    if not loss_on_reasoning:
        trained_from = reasoning_span[1]
    if not reasoning and mask_empty_thinking:
        trained_from = answer_span[0]
    labels = [
        token if trained_from <= index < target_span[1] else IGNORE_INDEX for index, token in enumerate(input_ids)
    ]
    return EncodedExample(input_ids, labels, reasoning_span, answer_span)


def encode_example(
    example: ThinkingExample,
    tokenizer: PreTrainedTokenizerBase,
    *,
    loss_on_reasoning: bool = True,
    mask_empty_thinking: bool = True,
    system: str | None = None,
) -> EncodedExample:
    """One question with its reasoning and answer, encoded as a single-turn conversation."""
    turn = Turn(question=example.question, answer=example.answer, reasoning=example.reasoning)
    return encode_conversation(
        [turn],
        tokenizer,
        loss_on_reasoning=loss_on_reasoning,
        mask_empty_thinking=mask_empty_thinking,
        system=system,
    )


def generation_prompt_ids(question: str, tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> list[int]:
    """The ids a model is given to answer `question`; they end with `<|im_start|>assistant\\n<think>\\n`."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": question})
    text = render_messages(messages, tokenizer, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_reasoning(generated_text: str) -> tuple[str, str]:
    """Split a completion into (reasoning, answer) at its last `</think>`.

    The generation prompt already opens `<think>`, so completions usually carry only the closing tag. Text
    after the first `<|im_end|>` or `<|endoftext|>` is not part of the reply. Without `</think>` the whole
    reply is the answer, unless it opens `<think>` itself: then it is reasoning that never finished.
    """
    reply = generated_text.split(TURN_END, 1)[0].split(PAD_TOKEN, 1)[0]
    head, closed, tail = reply.rpartition(THINK_CLOSE)
    if not closed:
        opened = reply.lstrip()
        if opened.startswith(THINK_OPEN):
            return opened.removeprefix(THINK_OPEN).strip(), ""
        return "", reply.strip()
    return head.lstrip().removeprefix(THINK_OPEN).strip(), tail.strip()
