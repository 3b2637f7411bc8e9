"""A model's answers to evaluation questions: batched, left-padded generation in two phases, reasoning under a
thinking budget and then the answer, so a model that never closes `</think>` still gets to answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field
from transformers import (
    Cache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from qft_core.config import EvalConfig
from qft_core.evaluate.experts import EvalOutput, GoldItem
from qft_core.evaluate.generation_path import GenerationPath, generation_path_for
from qft_core.model.chat import THINK_CLOSE, THINKING_SCAFFOLD, TURN_END, generation_prompt_ids, split_reasoning
from qft_core.model.sampling import recommended_sampling
from qft_core.records import Record, ThinkingExample

Progress = Callable[[int, int, str], None]

# What generate calls the KV cache, as argument and in its output: `cache` since transformers 5.2x,
# `past_key_values` before (5.17 on the GPU machines' image).
CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"

# Why a phase of generation stopped; None: it ran out of tokens.
END = "end"
CLOSE = "close"


@dataclass(frozen=True)
class EvalItem:
    """One evaluation question with the reference the answer is scored against."""

    id: str
    question: str
    reference_answer: str
    reference_reasoning: str | None = None
    category: str | None = None
    term_categories: tuple[str, ...] = ()


def items_from_examples(examples: Sequence[ThinkingExample]) -> list[EvalItem]:
    """Evaluation items from split examples. Only expert reasoning is a reference for the model's reasoning:
    generated reasoning is a template built from the answer itself."""
    return [
        EvalItem(
            id=example.id,
            question=example.question,
            reference_answer=example.answer,
            reference_reasoning=example.reasoning if example.thinking_origin == "expert" and example.thinking else None,
            category=example.category or next(iter(example.term_categories), None),
            term_categories=tuple(example.term_categories),
        )
        for example in examples
    ]


def items_from_gold(items: Sequence[GoldItem]) -> list[EvalItem]:
    """Evaluation items from the expert gold set: the question with its expert reference answer; the reasoning
    the experts approved is the reference reasoning."""
    return [
        EvalItem(
            id=f"gold-{item.task_id}",
            question=item.question,
            reference_answer=item.reference_answer,
            reference_reasoning=item.predicted_reasoning or None,
            category=item.category or next(iter(item.term_categories), None),
            term_categories=tuple(item.term_categories),
        )
        for item in items
    ]


class GeneratedAnswer(Record):
    """A model's completion of one item: `prediction` is the raw text after the generation prompt (reasoning,
    `</think>`, answer; the final `<|im_end|>` left out), split into `reasoning` and `answer` at its last
    `</think>`.

    `token_ids` are the completion's tokens (a forced `</think>` and the final end-of-turn token included);
    `tokens_generated` counts the tokens the model produced (a forced `</think>` is not the model's),
    `reasoning_tokens` those of the reasoning phase. `thinking_closed`: the model wrote `</think>` itself;
    `forced_close`: the budget ran out and `</think>` was appended; `finished`: it ended with its end-of-turn
    token rather than at `max_new_tokens`. `latency_s` is the wall time of the item's batch (its items finish
    together).
    """

    id: str
    question: str
    reference_answer: str
    reference_reasoning: str | None = None
    category: str | None = None
    term_categories: list[str] = Field(default_factory=list)
    prediction: str
    reasoning: str
    answer: str
    token_ids: list[int]
    tokens_generated: int
    reasoning_tokens: int
    thinking_closed: bool
    forced_close: bool
    finished: bool
    latency_s: float

    def to_eval_output(self, model_id: str) -> EvalOutput:
        """The record that expert review reads."""
        return EvalOutput(
            example_id=self.id,
            model_id=model_id,
            question=self.question,
            reference_answer=self.reference_answer,
            predicted_reasoning=self.reasoning,
            predicted_answer=self.answer,
            category=self.category,
            term_categories=self.term_categories,
        )


@dataclass(frozen=True)
class StopRule:
    """What ends a phase: single tokens, and strings the tokenizer spells with several tokens, each with the
    reason (END or CLOSE) it stands for."""

    tokens: dict[int, str]
    strings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stops:
    """The stop rules of the reasoning phase (end of turn or `</think>`) and the answer phase (end of turn)."""

    thinking: StopRule
    answer: StopRule
    close_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def for_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Stops:
        vocab = tokenizer.get_vocab()
        end_ids = {vocab[TURN_END]} if TURN_END in vocab else set()
        configured = model.generation_config.eos_token_id
        end_ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        if tokenizer.eos_token_id is not None:
            end_ids.add(tokenizer.eos_token_id)
        if not end_ids:
            raise ValueError("the tokenizer and model name no end-of-turn token (<|im_end|> or eos)")
        ending = dict.fromkeys(end_ids, END)
        # Models trained on the thinking format have `</think>` as one token; others spell it in pieces.
        if THINK_CLOSE in vocab:
            thinking = StopRule({**ending, vocab[THINK_CLOSE]: CLOSE})
        else:
            thinking = StopRule(ending, {THINK_CLOSE: CLOSE})
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids)
        close_ids = tuple(tokenizer(THINKING_SCAFFOLD, add_special_tokens=False)["input_ids"])
        return cls(thinking, StopRule(ending), close_ids, pad_id)


@dataclass
class _Phase:
    ids: list[int]
    reason: str | None


class StopTracker(StoppingCriteria):
    """Stops each row at its first stop token or string and remembers where and why."""

    def __init__(
        self,
        rule: StopRule,
        tokenizer: PreTrainedTokenizerBase,
        prompt_width: int,
        rows: int,
        stopped: Sequence[bool] = (),
    ) -> None:
        """`stopped` rows count as stopped before their first token (they ride along in a batch that keeps its
        rows), with no reason."""
        self.rule = rule
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.ends: list[int | None] = [0 if row < len(stopped) and stopped[row] else None for row in range(rows)]
        self.reasons: list[str | None] = [None] * rows
        # A string of n bytes spans at most n tokens, plus one that may begin before it.
        self.tail = max((len(text.encode("utf-8")) + 1 for text in rule.strings), default=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if self.ends[row] is not None:
                continue
            reason = self.rule.tokens.get(token)
            if reason is None and self.rule.strings:
                tail = self.tokenizer.decode(input_ids[row, -min(self.tail, generated) :].tolist())
                reason = next((why for text, why in self.rule.strings.items() if text in tail), None)
            if reason is not None:
                self.ends[row], self.reasons[row] = generated, reason
        return torch.tensor([end is not None for end in self.ends], device=input_ids.device)


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    config: EvalConfig,
    *,
    progress: Progress | None = None,
    label: str = "generating",
    path: GenerationPath | None = None,
) -> list[GeneratedAnswer]:
    """Each item's completion, in the order of `items`.

    Items go in batches of `config.batch_size`, longest prompts first so that a batch pads little, padded on
    the left (a row's new tokens then follow its own last prompt token). Greedy unless `config.temperature`
    is above 0. Phase 1 generates at most `config.thinking_budget` tokens and stops at `</think>` or the end of
    the turn; a row still thinking gets `\\n</think>\\n\\n` appended. Phase 2 continues the rows that closed
    their reasoning until the end of the turn, the whole completion (appended tokens included) at most
    `config.max_new_tokens` long; it goes on from phase 1's KV cache, so prompt and reasoning are not encoded
    again. Greedy batched and one-at-a-time runs give the same tokens, and the same as encoding prompt,
    reasoning and appended tokens afresh.

    `path` (by default `generation_path_for(model)`) picks the KV cache and whether decoding is compiled; every
    path gives the same greedy tokens. A static cache holds, for every batch alike (so compiled decoding keeps
    its shapes), the longest prompt, the thinking budget, the forced close and `max_new_tokens`: the answer
    phase of a row that closed early starts after the longest reasoning of its batch.
    """
    path = path or generation_path_for(model)
    stops = Stops.for_model(model, tokenizer)
    prompts = [generation_prompt_ids(item.question, tokenizer) for item in items]
    order = sorted(range(len(items)), key=lambda index: -len(prompts[index]))
    cache_length = (
        len(prompts[order[0]]) + config.thinking_budget + 1 + len(stops.close_ids) + config.max_new_tokens
        if items
        else 0
    )
    answers: list[GeneratedAnswer | None] = [None] * len(items)
    model.eval()
    with torch.inference_mode(), _sampling_seed(config, model.device), path.decoding_context():
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            began = time.perf_counter()
            completions = _complete_batch(
                model, tokenizer, [prompts[index] for index in batch], config, stops, path, cache_length
            )
            elapsed = time.perf_counter() - began
            for index, completion in zip(batch, completions, strict=True):
                answers[index] = _answer(items[index], completion, tokenizer, elapsed)
            if progress is not None:
                progress(start + len(batch), len(items), label)
    return answers


@dataclass
class _Completion:
    reasoning_ids: list[int]
    forced_ids: list[int]
    answer_ids: list[int]
    closed: bool
    finished: bool


def _complete_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    config: EvalConfig,
    stops: Stops,
    path: GenerationPath,
    cache_length: int,
) -> list[_Completion]:
    """The batch's completions; one cache of `path`'s kind serves both phases."""
    cache = path.new_cache(model, cache_length)
    decoding = _Decoding(config, stops.pad_id, path.compiled)
    if config.thinking_budget > 0:
        ids, mask = _left_padded(prompts, stops.pad_id)
        thinking, reasoning_batch = _generate(
            model, tokenizer, ids, mask, config.thinking_budget, stops.thinking, decoding, cache
        )
    else:
        thinking, reasoning_batch = [_Phase([], None) for _ in prompts], None
    completions, waiting, limits = [], [], []
    for row, phase in enumerate(thinking):
        completion = _Completion(phase.ids, [], [], closed=phase.reason == CLOSE, finished=phase.reason == END)
        completions.append(completion)
        if completion.finished:
            continue
        # Force the reasoning closed only where the answer then has room for at least one token.
        if not completion.closed and len(phase.ids) + len(stops.close_ids) < config.max_new_tokens:
            completion.forced_ids = list(stops.close_ids)
        room = config.max_new_tokens - len(phase.ids) - len(completion.forced_ids)
        if (completion.closed or completion.forced_ids) and room > 0:
            waiting.append(row)
            limits.append(room)
    if waiting:
        rows = waiting
        if reasoning_batch is not None and reasoning_batch.cache is not None:
            # A static cache cannot drop rows: the finished ones ride along, stopped from the start.
            if isinstance(reasoning_batch.cache, StaticCache):
                rows = list(range(len(completions)))
            ids, mask, cache = reasoning_batch.continued(rows, completions, stops.pad_id)
        else:
            continued = [prompts[row] + completions[row].reasoning_ids + completions[row].forced_ids for row in waiting]
            ids, mask = _left_padded(continued, stops.pad_id)
        phases, _ = _generate(
            model, tokenizer, ids, mask, max(limits), stops.answer, decoding, cache,
            stopped=[row not in waiting for row in rows],
        )
        answers = dict(zip(rows, phases, strict=True))
        for row, limit in zip(waiting, limits, strict=True):
            phase = answers[row]
            # Greedy rows do not depend on one another, so cutting a row at its own limit gives what a run
            # with that limit would have given.
            ids = phase.ids[:limit]
            completions[row].answer_ids = ids
            completions[row].finished = phase.reason == END and len(phase.ids) <= limit
    return completions


def _left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the sequences, padded on the left to the longest."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, width - len(sequence) :] = 1
    return input_ids, attention_mask


@dataclass
class _GeneratedBatch:
    """A phase's whole batch after generation: its token ids (inputs, then new tokens, rows that stopped early
    padded), the attention mask of its inputs, each row's phase, and the KV cache, which holds every position
    but the last."""

    sequences: torch.Tensor
    input_mask: torch.Tensor
    phases: list[_Phase]
    cache: Cache | None

    def continued(
        self, rows: list[int], completions: list[_Completion], pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor, Cache]:
        """Input ids, attention mask and cache from which `rows` go on to their answers without encoding prompt
        and reasoning again.

        A row that stopped early has padding after its stop, and its last reasoning token's next-token logits
        were not kept. So each row's last reasoning token and everything after it are masked out of the cache,
        and that token and the forced `</think>` tokens follow, aligned on the right: every row's last input is
        its own last token, and its positions (counted over the mask) go on from its reasoning.
        """
        width, input_width = self.sequences.shape[1], self.input_mask.shape[1]
        tails = [[self.phases[row].ids[-1], *completions[row].forced_ids] for row in rows]
        tail_width = max(len(tail) for tail in tails)
        input_ids = torch.full((len(rows), width + tail_width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for index, (row, tail) in enumerate(zip(rows, tails, strict=True)):
            reasoning = len(self.phases[row].ids)
            input_ids[index, :width] = self.sequences[row]
            attention_mask[index, :input_width] = self.input_mask[row]
            attention_mask[index, input_width : input_width + reasoning - 1] = 1
            input_ids[index, width + tail_width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            attention_mask[index, width + tail_width - len(tail) :] = 1
        if len(rows) < len(self.phases):
            self.cache.batch_select_indices(torch.tensor(rows, device=self.sequences.device))
        return input_ids, attention_mask, self.cache


@dataclass(frozen=True)
class _Decoding:
    """What every phase of a batch decodes with."""

    config: EvalConfig
    pad_id: int
    compiled: bool


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    limit: int,
    rule: StopRule,
    decoding: _Decoding,
    cache: Cache | None = None,
    stopped: Sequence[bool] = (),
) -> tuple[list[_Phase], _GeneratedBatch]:
    """New tokens for each row, each cut after its stop (kept) or at `limit`; and the batch to continue from.
    With `cache`, its positions of `input_ids` are not encoded again; transformers compiles the decoding steps
    for a static cache on CUDA. `stopped` rows are carried along and their tokens dropped."""
    width = input_ids.shape[1]
    tracker = StopTracker(rule, tokenizer, width, input_ids.shape[0], stopped)
    output = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        **{CACHE_FIELD: cache},
        max_new_tokens=limit,
        eos_token_id=sorted(rule.tokens),
        pad_token_id=decoding.pad_id,
        stopping_criteria=StoppingCriteriaList([tracker]),
        return_dict_in_generate=True,
        disable_compile=not decoding.compiled,
        **_sampling_arguments(decoding.config),
    )
    new_tokens = output.sequences[:, width:].tolist()
    phases = [
        _Phase(tokens[: end if end is not None else limit], reason)
        for tokens, end, reason in zip(new_tokens, tracker.ends, tracker.reasons, strict=True)
    ]
    return phases, _GeneratedBatch(output.sequences, attention_mask.to(model.device), phases, getattr(output, CACHE_FIELD))


def with_model_sampling(config: EvalConfig, model_dir: Path) -> EvalConfig:
    """`config` with its empty sampling settings (temperature, top_p, top_k) filled from the model folder's
    generation_config.json; a model that does not sample decodes greedily."""
    recommended = recommended_sampling(model_dir)
    chosen = {
        key: recommended.get(key) if getattr(config, key) is None else getattr(config, key)
        for key in ("temperature", "top_p", "top_k")
    }
    return config.model_copy(update=chosen)


def _sampling_arguments(config: EvalConfig) -> dict:
    # Empty settings that no model filled: greedy decoding, no nucleus or top-k cut.
    if not config.temperature:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}


@contextmanager
def _sampling_seed(config: EvalConfig, device: torch.device) -> Iterator[None]:
    """Sampling draws from a generator seeded with `config.sampling_seed`, leaving the global one as it was."""
    if not config.temperature:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.sampling_seed)
        yield


def _answer(
    item: EvalItem, completion: _Completion, tokenizer: PreTrainedTokenizerBase, latency: float
) -> GeneratedAnswer:
    ids = completion.reasoning_ids + completion.forced_ids + completion.answer_ids
    prediction = tokenizer.decode(ids[:-1] if completion.finished else ids, skip_special_tokens=False)
    reasoning, answer = split_reasoning(prediction)
    return GeneratedAnswer(
        id=item.id,
        question=item.question,
        reference_answer=item.reference_answer,
        reference_reasoning=item.reference_reasoning,
        category=item.category,
        term_categories=list(item.term_categories),
        prediction=prediction,
        reasoning=reasoning,
        answer=answer,
        token_ids=list(ids),
        tokens_generated=len(completion.reasoning_ids) + len(completion.answer_ids),
        reasoning_tokens=len(completion.reasoning_ids),
        thinking_closed=completion.closed,
        forced_close=bool(completion.forced_ids),
        finished=completion.finished,
        latency_s=latency,
    )
