"""Time evaluation generation batched (left padding) against one question at a time, on the same questions.

    uv run python bench/bench_generate.py [--model qwen3-tiny] [--questions 16] [--batch-size 8]
                                          [--max-new-tokens 64] [--thinking-budget MAX_NEW_TOKENS/2]

Questions are the first ones of the bundled corpus. Both runs use `generate_answers` with the same greedy
settings, so every completion has exactly `--max-new-tokens` tokens unless the model ends it: the token
counts are printed to show the work was the same. Prints timings, throughput and the speedup, and whether the
two runs gave the same tokens; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from qft_core.config import DataConfig, EvalConfig, ModelConfig, PathsConfig  # noqa: E402
from qft_core.data.parse import parse_paths  # noqa: E402
from qft_core.evaluate.generate import EvalItem, generate_answers  # noqa: E402
from qft_core.model.registry import load_model, load_tokenizer, resolve_model  # noqa: E402


def corpus_questions(count: int) -> list[EvalItem]:
    result = parse_paths([REPO_ROOT / "data" / "corpus"], DataConfig())
    return [
        EvalItem(id=example.id, question=example.question, reference_answer=example.answer)
        for example in result.examples[:count]
    ]


def timed(label: str, run) -> tuple[float, list]:
    began = time.perf_counter()
    answers = run()
    elapsed = time.perf_counter() - began
    tokens = sum(len(answer.token_ids) for answer in answers)
    print(f"{label:<16} {elapsed:8.2f} s   {tokens:6d} tokens   {tokens / elapsed:8.1f} tokens/s")
    return elapsed, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen3-tiny")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--thinking-budget", type=int, help="reasoning tokens (default: half of --max-new-tokens)")
    args = parser.parse_args()
    if args.thinking_budget is None:
        args.thinking_budget = args.max_new_tokens // 2

    spec = resolve_model(ModelConfig(name=args.model), PathsConfig())
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, dtype="float32")
    items = corpus_questions(args.questions)
    config = EvalConfig(
        max_new_tokens=args.max_new_tokens, thinking_budget=args.thinking_budget, batch_size=args.batch_size
    )
    print(f"model {spec.name}, {len(items)} questions, {torch.get_num_threads()} threads, "
          f"max_new_tokens {args.max_new_tokens}, thinking_budget {args.thinking_budget}")
    # One short warm-up, so neither timed run pays for first-call allocations.
    generate_answers(model, tokenizer, items[:2], config.model_copy(update={"max_new_tokens": 4, "thinking_budget": 2}))
    batched_s, batched = timed(
        f"batched ({args.batch_size})", lambda: generate_answers(model, tokenizer, items, config)
    )
    single_s, single = timed(
        "one at a time", lambda: generate_answers(model, tokenizer, items, config.model_copy(update={"batch_size": 1}))
    )
    same = [a.token_ids for a in batched] == [b.token_ids for b in single]
    print(f"speedup {single_s / batched_s:.2f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
