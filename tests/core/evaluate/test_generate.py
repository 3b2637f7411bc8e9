"""Evaluation generation: batched left-padded greedy decoding gives one-at-a-time's tokens, stops end each row
where it should, the thinking budget forces `</think>` in before the answer phase, and the static-cache path
gives the plain path's tokens."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qft_core.config import EvalConfig, ModelConfig, PathsConfig
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.generation_path import STATIC, GenerationPath
from qft_core.evaluate.generate import (
    CLOSE,
    END,
    EvalItem,
    StopRule,
    Stops,
    StopTracker,
    generate_answers,
    items_from_examples,
    items_from_gold,
)
from qft_core.model.chat import generation_prompt_ids, split_reasoning
from qft_core.model.registry import load_model, load_tokenizer, resolve_model
from qft_core.records import ThinkingExample, ThinkingStructure

QUESTIONS = [
    "什么是AES？",
    "RSA 的安全性基于什么数学难题？请简要说明。",
    "哈希函数",
    "比较 ECDH 与经典 Diffie-Hellman 在密钥长度和性能上的差异，并说明为什么移动设备常用前者。",
]
FREE_RUN = EvalConfig(max_new_tokens=16, thinking_budget=8, batch_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """qwen3-tiny with its weights redrawn wider, so that greedy decoding wanders over the vocabulary instead of
    repeating one token (a test of identical outputs must have outputs that could differ)."""
    paths = PathsConfig(model_cache_dir=str(tmp_path_factory.mktemp("model-cache")))
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), paths)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, dtype="float32")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model, tokenizer


def _items(questions: list[str] = QUESTIONS) -> list[EvalItem]:
    return [
        EvalItem(id=f"q{index}", question=question, reference_answer="参考答案")
        for index, question in enumerate(questions)
    ]


@pytest.fixture(scope="module")
def free_run(tiny) -> list:
    """The four questions answered in one batch, with the model's own stop tokens."""
    model, tokenizer = tiny
    return generate_answers(model, tokenizer, _items(), FREE_RUN)


def test_batched_greedy_tokens_equal_one_at_a_time(tiny, free_run) -> None:
    model, tokenizer = tiny
    batched = free_run
    alone = generate_answers(model, tokenizer, _items(), FREE_RUN.model_copy(update={"batch_size": 1}))
    assert [answer.id for answer in batched] == ["q0", "q1", "q2", "q3"]
    assert [answer.token_ids for answer in batched] == [answer.token_ids for answer in alone]
    assert [answer.prediction for answer in batched] == [answer.prediction for answer in alone]
    # The rows did not all say the same thing: the comparison could have failed.
    assert len({tuple(answer.token_ids) for answer in batched}) == 4
    assert all(len(answer.token_ids) == 16 for answer in batched)


def test_thinking_budget_of_two_forces_close_then_answers(tiny) -> None:
    model, tokenizer = tiny
    config = EvalConfig(max_new_tokens=12, thinking_budget=2, batch_size=2)
    close_ids = list(Stops.for_model(model, tokenizer).close_ids)
    assert tokenizer.decode(close_ids) == "\n</think>\n\n"
    for answer in generate_answers(model, tokenizer, _items(QUESTIONS[:3]), config):
        assert answer.forced_close and not answer.thinking_closed
        assert answer.reasoning_tokens == 2
        assert answer.token_ids[2 : 2 + len(close_ids)] == close_ids
        # The answer phase filled the rest of the 12 tokens; the forced tokens are not the model's.
        assert len(answer.token_ids) == 12
        assert answer.tokens_generated == 12 - len(close_ids)
        reasoning_text = tokenizer.decode(answer.token_ids[:2])
        answer_text = tokenizer.decode(answer.token_ids[2 + len(close_ids) :])
        assert answer.prediction == reasoning_text + "\n</think>\n\n" + answer_text
        assert (answer.reasoning, answer.answer) == split_reasoning(answer.prediction)
        assert answer.answer == answer_text.strip()


def test_end_token_stops_its_row_only_in_batched_and_single_runs(tiny, free_run) -> None:
    model, tokenizer = tiny
    config, free = FREE_RUN, free_run
    close_ids = set(Stops.for_model(model, tokenizer).close_ids)
    # A token that row 0 writes for the first time at its fourth position becomes an end-of-turn token.
    first_ids = free[0].token_ids
    stop = next(token for index, token in enumerate(first_ids) if index >= 3 and token not in first_ids[:index]
                and token not in close_ids)
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [*original, stop]
    try:
        batched = generate_answers(model, tokenizer, _items(), config)
        alone = generate_answers(model, tokenizer, _items(), config.model_copy(update={"batch_size": 1}))
    finally:
        model.generation_config.eos_token_id = original
    assert [answer.token_ids for answer in batched] == [answer.token_ids for answer in alone]
    for before, after in zip(free, batched, strict=True):
        if stop in before.token_ids:
            end = before.token_ids.index(stop) + 1
            assert after.token_ids == before.token_ids[:end]
            assert after.finished
            assert after.prediction == tokenizer.decode(before.token_ids[: end - 1])
        else:
            assert after.token_ids == before.token_ids
            assert not after.finished
    assert batched[0].finished and len(batched[0].token_ids) == first_ids.index(stop) + 1


def test_stop_tracker_finds_a_stop_string_spelled_in_several_tokens(tiny) -> None:
    _, tokenizer = tiny
    pieces = tokenizer("答案</stop>后面", add_special_tokens=False)["input_ids"]
    assert len(tokenizer("</stop>", add_special_tokens=False)["input_ids"]) > 1
    prompt = [11, 12]
    rows = torch.tensor([prompt + pieces, prompt + pieces[::-1]])
    tracker = StopTracker(StopRule({}, {"</stop>": CLOSE}), tokenizer, prompt_width=2, rows=2)
    stopped_at = None
    for length in range(1, len(pieces) + 1):
        flags = tracker(rows[:, : 2 + length], scores=None)
        if flags[0] and stopped_at is None:
            stopped_at = length
    complete = next(n for n in range(1, len(pieces) + 1) if "</stop>" in tokenizer.decode(pieces[:n]))
    assert stopped_at == complete
    assert tracker.ends == [complete, None]
    assert tracker.reasons == [CLOSE, None]


def test_stop_tracker_keeps_the_first_stop_of_each_row() -> None:
    tracker = StopTracker(StopRule({5: END, 6: CLOSE}), tokenizer=None, prompt_width=1, rows=3)
    tracker(torch.tensor([[0, 6], [0, 1], [0, 1]]), scores=None)
    flags = tracker(torch.tensor([[0, 6, 5], [0, 1, 5], [0, 1, 2]]), scores=None)
    assert flags.tolist() == [True, True, False]
    assert tracker.ends == [1, 2, None]
    assert tracker.reasons == [CLOSE, END, None]


def test_items_take_expert_reasoning_only_and_gold_items_keep_their_references() -> None:
    common = {"question": "什么是 AES？", "answer": "一种分组密码。", "source_file": "a.md", "source_line": 1}
    expert = ThinkingExample(id="e1", thinking=[ThinkingStructure(text="先回忆定义。")], category="symmetric",
                             term_categories=["symmetric"], **common)
    generated = ThinkingExample(id="g1", thinking=[ThinkingStructure(text="模板推理。")], thinking_origin="template",
                                term_categories=["symmetric", "fundamentals"], **common)
    first, second = items_from_examples([expert, generated])
    assert (first.id, first.reference_reasoning, first.category) == ("e1", "先回忆定义。", "symmetric")
    assert (second.reference_reasoning, second.category) == (None, "symmetric")
    gold = GoldItem(example_id="e1", model_id="m", question="Q", reference_answer="R", predicted_reasoning="想",
                    predicted_answer="A", category=None, term_categories=["hash_mac"], task_id=9, raters=3,
                    scores={"accuracy": 5.0})
    (item,) = items_from_gold([gold])
    assert item == EvalItem(id="gold-9", question="Q", reference_answer="R", reference_reasoning="想",
                            category="hash_mac", term_categories=("hash_mac",))


def test_empty_thinking_budget_closes_at_once(tiny) -> None:
    model, tokenizer = tiny
    config = EvalConfig(max_new_tokens=6, thinking_budget=0)
    (answer,) = generate_answers(model, tokenizer, _items(QUESTIONS[:1]), config)
    close_ids = list(Stops.for_model(model, tokenizer).close_ids)
    assert answer.token_ids[: len(close_ids)] == close_ids
    assert (answer.reasoning_tokens, answer.reasoning, answer.forced_close) == (0, "", True)
    assert len(answer.token_ids) == 6


def test_answers_continued_from_the_reasoning_cache_equal_a_fresh_encoding(tiny, free_run, monkeypatch) -> None:
    """The answer phase reuses the reasoning phase's KV cache; its tokens must be those of encoding prompt,
    reasoning and forced `</think>` afresh, one row at a time, both for rows that reasoned to the budget and
    for rows that closed their reasoning early (whose cache has padding after the close)."""
    model, tokenizer = tiny
    stops = Stops.for_model(model, tokenizer)
    # The first token that row 0 writes for the first time after two tokens of reasoning now closes it.
    first = free_run[0].token_ids
    at = next(index for index in range(2, FREE_RUN.thinking_budget - 1) if first[index] not in first[:index])
    close = first[at]
    closing = replace(stops, thinking=StopRule({**stops.thinking.tokens, close: CLOSE}))
    monkeypatch.setattr(Stops, "for_model", classmethod(lambda cls, model, tokenizer: closing))
    answers = generate_answers(model, tokenizer, _items(), FREE_RUN)

    assert answers[0].thinking_closed and answers[0].reasoning_tokens == at + 1
    assert any(answer.forced_close and answer.reasoning_tokens == FREE_RUN.thinking_budget for answer in answers)
    for question, answer in zip(QUESTIONS, answers, strict=True):
        known = answer.reasoning_tokens + (len(stops.close_ids) if answer.forced_close else 0)
        prefix = generation_prompt_ids(question, tokenizer) + answer.token_ids[:known]
        fresh = model.generate(
            input_ids=torch.tensor([prefix]), attention_mask=torch.ones((1, len(prefix)), dtype=torch.long),
            max_new_tokens=FREE_RUN.max_new_tokens - known, do_sample=False,
            eos_token_id=sorted(closing.answer.tokens), pad_token_id=closing.pad_id,
        )[0, len(prefix) :].tolist()
        assert answer.token_ids[known:] == fresh
    assert len({tuple(answer.token_ids) for answer in answers}) == len(answers)


STATIC_EAGER = GenerationPath(cache=STATIC)


def _first_new(tokens: list[int], start: int, avoid: set[int]) -> tuple[int, int]:
    """The first position from `start` whose token appears neither earlier in `tokens` nor in `avoid`."""
    return next((at, t) for at, t in enumerate(tokens) if at >= start and t not in tokens[:at] and t not in avoid)


def test_static_cache_gives_the_plain_paths_tokens_with_rows_closing_and_ending_early(tiny, free_run, monkeypatch):
    """Four prompts of different lengths, both phases: row 0 closes its reasoning early, row 1 ends its turn
    while reasoning (it rides along, stopped, in the static cache's answer phase), the others reach the budget."""
    model, tokenizer = tiny
    stops = Stops.for_model(model, tokenizer)
    first, second = free_run[0].token_ids, free_run[1].token_ids
    close_at, close = _first_new(first, 2, set())
    _, end = _first_new(second[: FREE_RUN.thinking_budget], 1, set(first[: close_at + 1]) | {close})
    staged = replace(
        stops,
        thinking=StopRule({**stops.thinking.tokens, close: CLOSE, end: END}),
        answer=StopRule({**stops.answer.tokens, end: END}),
    )
    monkeypatch.setattr(Stops, "for_model", classmethod(lambda cls, model, tokenizer: staged))
    plain = generate_answers(model, tokenizer, _items(), FREE_RUN, path=GenerationPath.plain())
    static = generate_answers(model, tokenizer, _items(), FREE_RUN, path=STATIC_EAGER)

    assert plain[0].thinking_closed and not plain[0].finished
    assert plain[1].finished and not plain[1].thinking_closed and plain[1].reasoning_tokens < FREE_RUN.thinking_budget
    assert any(answer.forced_close for answer in plain)
    assert [answer.token_ids for answer in static] == [answer.token_ids for answer in plain]
    assert [(a.finished, a.thinking_closed, a.forced_close) for a in static] == [
        (a.finished, a.thinking_closed, a.forced_close) for a in plain
    ]


@pytest.mark.parametrize(
    "config",
    [FREE_RUN.model_copy(update={"batch_size": 3}), EvalConfig(max_new_tokens=6, thinking_budget=0)],
    ids=["two-batches-one-cache-length", "no-reasoning-phase"],
)
def test_static_cache_gives_the_plain_paths_tokens(tiny, free_run, config) -> None:
    model, tokenizer = tiny
    static = generate_answers(model, tokenizer, _items(), config, path=STATIC_EAGER)
    plain = (
        free_run
        if config.thinking_budget
        else generate_answers(model, tokenizer, _items(), config, path=GenerationPath.plain())
    )
    assert [answer.token_ids for answer in static] == [answer.token_ids for answer in plain]
    assert all(len(answer.token_ids) == config.max_new_tokens for answer in static)


@pytest.mark.slow
def test_compiled_static_decoding_gives_the_plain_paths_tokens_with_one_graph_for_both_phases(tiny, free_run) -> None:
    """What CUDA runs, on the CPU: transformers compiles decoding on CUDA only unless its compile config says
    every device (a private flag, the one switch there is); Inductor builds C++ kernels here (about 80 s)."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model, tokenizer = tiny
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True
    original = model.generation_config.compile_config
    model.generation_config.compile_config = compile_config
    counters.clear()
    try:
        compiled = generate_answers(
            model, tokenizer, _items(), FREE_RUN, path=GenerationPath(cache=STATIC, compiled=True)
        )
    finally:
        model.generation_config.compile_config = original
        model.__dict__.pop("_compiled_call", None)
    assert [answer.token_ids for answer in compiled] == [answer.token_ids for answer in free_run]
    assert all(answer.forced_close for answer in compiled)
    assert counters["stats"]["unique_graphs"] == 1
