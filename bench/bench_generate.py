"""Evaluation generation's throughput: plain `generate` one question at a time, plain batched `generate` (dynamic
KV cache), and qft's path (`generation_path_for`: a static cache with compiled decoding on CUDA), over the test
split's questions with the thinking budget, on a model of Qwen3-4B-Thinking-2507's shape with random bf16 weights
built on the GPU; and whether their greedy tokens are identical.

    python bench/bench_generate.py --out /tmp/gen                       # one GPU: the 68 test questions in one batch
    python bench/bench_generate.py --out /tmp/gen --paths batched,qft   # leave out the one-at-a-time run
    uv run python bench/bench_generate.py --smoke --out /tmp/gen        # CPU: qwen3-tiny, seconds
    uv run python bench/bench_generate.py --smoke --paths batched,static --questions 16 --thinking-budget 96 \\
        --max-new-tokens 128 --out /tmp/gen-cpu                         # the CPU's static-cache measurement
    uv run python bench/bench_generate.py --write-questions             # refresh bench/generation_questions.json

Paths (every one is `generate_answers`, both phases, greedy):
  single    plain path, one question at a time (on the first --single questions: it is slow)
  batched   plain path, all questions in batches of --batch-size, left-padded, dynamic cache
  static    a static cache with eager decoding (what compiling adds is qft minus this)
  qft       the path `generation_path_for` chooses on this device; timed twice, the first run holding compilation
Random weights never write `</think>` or the end of turn: every row reasons to the budget, gets `</think>`
forced in and answers to --max-new-tokens, so every path does the same work. Tokens/s counts completion tokens
(the forced `</think>` included) over the wall time. The questions come from bench/generation_questions.json
(the bundled corpus's test split; parsing the corpus needs opencc and jieba, which the GPU image lacks).
Asserts nothing; prints a table and writes results.jsonl and table.md under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import types
from datetime import date
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def stand_in_text_libraries() -> None:
    """The GPU image has no jieba or opencc. qft_core.data.terms imports them (through evaluate.experts, which
    evaluate.generate imports) for corpus text that generation never touches, so empty stand-ins let the import
    through; jieba's log level is the one thing set at import."""
    for name in ("jieba", "opencc"):
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.setLogLevel = lambda level: None
            sys.modules[name] = module


stand_in_text_libraries()

from qft_core.config import EvalConfig  # noqa: E402
from qft_core.evaluate.generate import EvalItem, GeneratedAnswer, generate_answers  # noqa: E402
from qft_core.evaluate.generation_path import STATIC, GenerationPath, generation_path_for  # noqa: E402
from qft_core.model.registry import QWEN3_4B_ARCHITECTURE, TINY_ARCHITECTURE, qwen3_config  # noqa: E402
from qft_core.model.tokenizer import load_qwen3_tokenizer, qwen3_thinking_chat_template  # noqa: E402

QUESTIONS_FILE = Path(__file__).with_name("generation_questions.json")
PATHS = ("single", "batched", "static", "qft")


def write_questions(target: Path) -> None:
    """The bundled corpus's test split questions, as the pipeline splits it (parse, annotate, split)."""
    from qft_core.config import QftConfig
    from qft_core.data.annotate import annotate_examples
    from qft_core.data.parse import parse_paths
    from qft_core.data.split import term_balanced_split
    from qft_core.data.terms import TermDictionary

    config = QftConfig()
    dictionary = TermDictionary.load(REPO_ROOT / "data" / "crypto_terms.yaml")
    parsed = parse_paths([REPO_ROOT / "data" / "corpus"], config.data).examples
    examples = annotate_examples(parsed, dictionary, config.data)
    test = term_balanced_split(examples, config.split).test
    target.write_text(
        json.dumps([{"id": e.id, "question": e.question} for e in test], ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"{len(test)} test questions -> {target}")


def load_items(count: int) -> list[EvalItem]:
    questions = json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))
    if count > len(questions):
        raise SystemExit(f"{QUESTIONS_FILE} holds {len(questions)} questions, fewer than --questions {count}")
    return [EvalItem(id=q["id"], question=q["question"], reference_answer="") for q in questions[:count]]


def build_model(smoke: bool, device: torch.device):
    """Random-weight Qwen3 (4B shape in bf16, or qwen3-tiny's in float32 with wide weights so greedy decoding
    wanders) built directly on `device`, stopping at <|im_end|> or <|endoftext|> like the registry's models."""
    from transformers import Qwen3ForCausalLM

    architecture, dtype = (TINY_ARCHITECTURE, torch.float32) if smoke else (QWEN3_4B_ARCHITECTURE, torch.bfloat16)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(qwen3_config(architecture), attn_implementation="sdpa", dtype=dtype)
    if smoke:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.3)
    model.generation_config.eos_token_id = [model.config.eos_token_id, model.config.pad_token_id]
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(model, tokenizer, items, config, path, device) -> tuple[float, list[GeneratedAnswer]]:
    synchronize(device)
    began = time.perf_counter()
    answers = generate_answers(model, tokenizer, items, config, path=path)
    synchronize(device)
    return time.perf_counter() - began, answers


def agreement(answers: list[GeneratedAnswer], reference: list[GeneratedAnswer]) -> dict:
    """How many rows give the reference's tokens, and the first token where another differs."""
    differing = [
        next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
        for x, y in ((answer.token_ids, other.token_ids) for answer, other in zip(answers, reference))
        if x != y
    ]
    return {
        "identical": not differing,
        "identical_rows": f"{len(answers) - len(differing)}/{len(answers)}",
        "first_difference_at": min(differing, default=None),
    }


def environment(device: torch.device) -> dict:
    import transformers

    on_gpu = device.type == "cuda"
    return {
        "date": date.today().isoformat(),
        "card": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
    }


def run(args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    tokenizer = load_qwen3_tokenizer(args.cache_dir)
    tokenizer.chat_template = qwen3_thinking_chat_template()
    model = build_model(args.smoke, device)
    items = load_items(args.questions)
    config = EvalConfig(
        max_new_tokens=args.max_new_tokens, thinking_budget=args.thinking_budget, batch_size=args.batch_size
    )
    chosen = generation_path_for(model)
    print(f"{len(items)} questions, batch {args.batch_size}, thinking budget {args.thinking_budget}, "
          f"max_new_tokens {args.max_new_tokens}, device {device}; qft path: {chosen.name} {list(chosen.fallbacks)}")
    # Warm the plain path (allocator, kernels) on a short run; the qft path is timed twice instead.
    generate_answers(model, tokenizer, items[:2], config.model_copy(update={"max_new_tokens": 4, "thinking_budget": 2}),
                     path=GenerationPath.plain())
    plan = {
        "single": (items[: args.single], config.model_copy(update={"batch_size": 1}), GenerationPath.plain()),
        "batched": (items, config, GenerationPath.plain()),
        "static": (items, config, GenerationPath(cache=STATIC)),
        "qft": (items, config, chosen),
    }
    results, answers = [], {}
    for name in args.paths:
        run_items, run_config, path = plan[name]
        repeats = 2 if name == "qft" else 1
        for attempt in range(repeats):
            label = name if attempt == repeats - 1 else f"{name} (first run)"
            seconds, answers[label] = timed(model, tokenizer, run_items, run_config, path, device)
            tokens = sum(len(answer.token_ids) for answer in answers[label])
            row = {
                "path": label,
                "generation_path": path.name, "questions": len(run_items), "batch": run_config.batch_size,
                "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                "peak_gib": (
                    round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None
                ),
            }
            results.append(row)
            print(row, flush=True)
    reference = answers.get("batched")
    for row in results:
        mine = answers[row["path"]]
        if reference is not None and row["path"] != "batched":
            row.update(agreement(mine, reference[: len(mine)]))
    speed = {row["path"]: row["tokens_per_s"] for row in results}
    for row in results:
        if "batched" in speed:
            row["vs_batched"] = round(row["tokens_per_s"] / speed["batched"], 2)
    return results


def table(results: list[dict], env: dict, args) -> str:
    lines = [
        f"Evaluation generation, {'qwen3-tiny (smoke)' if args.smoke else 'Qwen3-4B shape, random bf16'}: "
        f"{args.questions} questions, batch {args.batch_size}, thinking budget {args.thinking_budget}, "
        f"max_new_tokens {args.max_new_tokens}. {env['card']}, {env['date']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, CUDA {env['cuda']}.",
        "",
        "| path | cache / decoding | questions | s | tokens | tokens/s | × batched | same tokens as batched "
        "| peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = "" if "identical" not in r else (
            "yes" if r["identical"]
            else f"{r['identical_rows']} rows (first difference at token {r['first_difference_at']})"
        )
        lines.append(
            f"| {r['path']} | {r['generation_path']} | {r['questions']} | {r['seconds']} | {r['tokens']} | "
            f"{r['tokens_per_s']} | {r.get('vs_batched', '')} | {same} | {r['peak_gib'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="qwen3-tiny on the CPU, small sizes")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--questions", type=int, help="questions (default: all 68 test questions, smoke 8)")
    parser.add_argument("--batch-size", type=int, help="default: all questions in one batch")
    parser.add_argument("--single", type=int, default=2, help="questions the one-at-a-time path answers")
    parser.add_argument("--thinking-budget", type=int, help="default 512, smoke 16")
    parser.add_argument("--max-new-tokens", type=int, help="default 768, smoke 24")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "qft-bench", help="tokenizer cache")
    parser.add_argument("--out", type=Path, default=Path("bench-generate"))
    parser.add_argument("--write-questions", action="store_true", help=f"rewrite {QUESTIONS_FILE.name} and exit")
    args = parser.parse_args(argv)
    args.paths = [name for name in args.paths.split(",") if name]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    args.questions = args.questions or (8 if args.smoke else 68)
    args.batch_size = args.batch_size or args.questions
    args.thinking_budget = args.thinking_budget if args.thinking_budget is not None else (16 if args.smoke else 512)
    args.max_new_tokens = args.max_new_tokens or (24 if args.smoke else 768)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_questions:
        write_questions(QUESTIONS_FILE)
        return
    results = run(args)
    env = environment(torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.jsonl").open("w", encoding="utf-8") as handle:
        for row in results:
            handle.write(json.dumps({**row, **env}, ensure_ascii=False) + "\n")
    text = table(results, env, args)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
