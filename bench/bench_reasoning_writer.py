"""How often does a model's written reasoning pass qft's checks, and why is the rest refused? Takes the first N
expert pairs of data/corpus, hides their reasoning, has the model of --model write it (reasoning.writer: model,
through evaluation's generation code) and checks each reply as the annotation stage does; the expert traces of the
same pairs go through the same check as the yardstick.

    uv run python bench/bench_reasoning_writer.py --out /tmp/writer --pairs 4 --max-new-tokens 32 --thinking-budget 8
    python3 bench/bench_reasoning_writer.py --out $OUT --model qwen3-4b-thinking-2507 --pairs 64 --device cuda

Writes results.json (settings, seconds, accepted/refused counts, the refusal reasons, the expert traces' verdicts)
and samples.md (the first replies with their verdicts) into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qft_core.config import QftConfig  # noqa: E402
from qft_core.data.parse import parse_paths  # noqa: E402
from qft_core.data.terms import TermDictionary  # noqa: E402
from qft_core.evaluate.facts import FactBase  # noqa: E402
from qft_core.evaluate.reasoning_writers import ModelWriter, WriteFailed  # noqa: E402
from qft_core.evaluate.written_reasoning import check_written_reasoning, reasoning_prompt  # noqa: E402

SAMPLES_SHOWN = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="qwen3-tiny", help="registered model name or local model folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--thinking-budget", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    config = QftConfig.model_validate({
        "model": {"name": args.model, "device": args.device},
        "reasoning": {"writer": "model", "max_new_tokens": args.max_new_tokens,
                      "thinking_budget": args.thinking_budget, "batch_size": args.batch_size},
    })
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    facts = FactBase.load(config.paths.resolve(config.paths.fact_base))
    pairs = [e for e in parse_paths([config.paths.resolve(config.paths.corpus_dir)], config.data).examples
             if e.thinking][: args.pairs]
    writer = ModelWriter(config)
    began = time.perf_counter()
    replies = writer.write([reasoning_prompt(pair.question, pair.answer) for pair in pairs])
    seconds = time.perf_counter() - began

    def verdict(text: str | WriteFailed, answer: str) -> dict:
        if isinstance(text, WriteFailed):
            return {"accepted": False, "problems": [f"writer failed: {text.message}"], "quality": 0.0}
        check = check_written_reasoning(text, answer, dictionary, facts, config.reasoning)
        return {"accepted": check.accepted, "problems": list(check.problems), "quality": check.quality}

    written = [verdict(reply, pair.answer) for reply, pair in zip(replies, pairs, strict=True)]
    expert = [verdict(pair.reasoning, pair.answer) for pair in pairs]
    # A problem's kind is its text up to the first colon or number ("quality", "restates the answer", …).
    kinds = Counter(problem.split(":")[0].split(" 0.")[0] for row in written for problem in row["problems"])
    results = {
        "model": writer.name, "device": args.device, "pairs": len(pairs), "seconds": round(seconds, 1),
        "max_new_tokens": args.max_new_tokens, "thinking_budget": args.thinking_budget,
        "accepted": sum(row["accepted"] for row in written),
        "refusal_kinds": dict(kinds.most_common()),
        "expert_accepted": sum(row["accepted"] for row in expert),
        "expert_problems": [{"id": pair.id, "problems": row["problems"]}
                            for pair, row in zip(pairs, expert, strict=True) if row["problems"]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    samples = [f"# Reasoning written by {writer.name}\n"]
    for pair, reply, row in list(zip(pairs, replies, written, strict=True))[:SAMPLES_SHOWN]:
        text = reply.message if isinstance(reply, WriteFailed) else reply
        samples += [f"## {pair.question}\n", f"**accepted: {row['accepted']}** {'; '.join(row['problems'])}\n",
                    "```", text, "```\n"]
    (args.out / "samples.md").write_text("\n".join(samples), encoding="utf-8")
    print(json.dumps({key: value for key, value in results.items() if key != "expert_problems"}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
