"""qft's own training engine end to end on a GPU: torchrun, the planner's CUDA plan, the fast path inside the
Trainer, a kill mid-run with torchrun's restart and resume, and the adapter reloaded with PEFT.

    python bench/engine_gpu_smoke.py --out /tmp/smoke --layers 8 --steps 20

Builds a random-weight Qwen3 with Qwen3-4B-Thinking-2507's layer shape (--layers of them) in bf16, synthetic
tokenized splits (random tokens, the first quarter of each sequence masked from the loss; of the supervised rest,
the first half flagged reasoning, the second answer, every 7th answer token a term, so validation computes the
Chinese metrics through the offline Qwen3 tokenizer's pieces), plans with
`plan_for` on this machine's `profile_hardware()`, and trains twice through `launch.run_job`: once clean,
once killed (QFT_FAULT_KILL_AT_STEP) after the first checkpoint so torchrun restarts it and it resumes. Writes each
run's metrics.jsonl and console log, and results.json comparing them, under --out. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qft_core.config import QftConfig
from qft_core.model.tokenizer import save_qwen3_tokenizer
from qft_core.train.dataset import (
    ANSWER,
    IGNORE_INDEX,
    REASONING,
    TERM,
    LengthReport,
    TokenizedSplit,
    nearest_rank_percentile,
    save_tokenized,
)
from qft_core.train.faults import KILL_AT_STEP
from qft_core.train.fast_path import choose_fast_path
from qft_core.train.job import JOB_FILE, TrainingJob
from qft_core.train.launch import run_job
from qft_core.train.plan import plan_for

QWEN3_4B_LAYER = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144, "rope_theta": 5_000_000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
PAD_ID = 151643
TERM_EVERY = 7


def build_model_dir(directory: Path, layers: int) -> Path:
    """Random bf16 weights of the 4B layer shape, built on the GPU and saved as safetensors."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(**QWEN3_4B_LAYER, num_hidden_layers=layers, torch_dtype="bfloat16")
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    return directory


def synthetic_split(count: int, shortest: int, longest: int, seed: int) -> TokenizedSplit:
    rng = random.Random(seed)
    ids, inputs, labels, segments = [], [], [], []
    for index in range(count):
        length = rng.randint(shortest, longest)
        tokens = [rng.randrange(0, PAD_ID) for _ in range(length)]
        masked = length // 4
        answer_start = masked + (length - masked) // 2
        ids.append(f"synthetic-{seed}-{index}")
        inputs.append(tokens)
        labels.append([IGNORE_INDEX] * masked + tokens[masked:])
        segments.append(
            [0] * masked
            + [REASONING] * (answer_start - masked)
            + [ANSWER | (TERM if position % TERM_EVERY == 0 else 0) for position in range(length - answer_start)]
        )
    lengths = [len(row) for row in inputs]
    report = LengthReport(
        limit=longest, examples=count, count=count, longest=max(lengths), mean_length=sum(lengths) / count,
        p95_length=nearest_rank_percentile(lengths, 95), total_tokens=sum(lengths),
        target_tokens=sum(length - length // 4 for length in lengths),
    )
    return TokenizedSplit.from_sequences(ids, inputs, labels, report, segments)


def write_job(
    run_dir: Path, model_dir: Path, tokenizer_dir: Path, train: Path, validation: Path, args: argparse.Namespace
) -> Path:
    config = QftConfig()
    config.model.name = str(model_dir)
    config.model.max_length = args.seq_len
    config.training.max_steps = args.steps
    config.training.checkpoint_every = args.checkpoint_every
    config.training.eval_every = args.checkpoint_every
    config.training.global_batch_size = args.global_batch
    config.training.max_restarts = 1
    plan = plan_for(config, model_dir)
    job = TrainingJob(
        model_dir=str(model_dir), train_data=str(train), validation_data=str(validation), output_dir=str(run_dir),
        pad_token_id=PAD_ID, model=config.model, training=config.training, plan=plan,
        tokenizer_dir=str(tokenizer_dir),
    )
    return job.write(run_dir / JOB_FILE)


def run(job_path: Path, log_path: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        def stream(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")

        try:
            summary = run_job(job_path, stream=stream, env=env).model_dump(mode="json")
            error = None
        except Exception as failure:  # the report must say what failed, not stop the other runs
            summary, error = None, f"{type(failure).__name__}: {failure}"
            stream(getattr(failure, "log_tail", ""))
    return {"summary": summary, "error": error, "seconds": time.perf_counter() - started}


def steps_of(metrics: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {record["step"]: record for record in records if "loss" in record}


def validations_of(metrics: Path) -> dict[int, dict]:
    """The validation records (val_loss and the Chinese metrics) by step."""
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        record["step"]: {key: value for key, value in record.items() if key.startswith("val_")}
        for record in records
        if "val_loss" in record
    }


def reload_adapter(model_dir: Path, adapter_dir: Path, validation: TokenizedSplit) -> dict:
    """PEFT loads the engine's adapter on the GPU; its loss on one validation sequence is finite."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    model = PeftModel.from_pretrained(base, adapter_dir)
    input_ids, labels = validation.sequence(0)
    with torch.no_grad():
        loss = model(
            input_ids=torch.as_tensor(input_ids, dtype=torch.long, device="cuda")[None],
            labels=torch.as_tensor(labels, dtype=torch.long, device="cuda")[None],
        ).loss
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    return {"loss_one_validation_sequence": float(loss), "lora_b_nonzero": any(bool(p.abs().sum() > 0) for p in lora_b)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qft_engine_smoke"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--kill-at", type=int, default=13)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--sequences", type=int, default=256)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import peft
    import transformers

    results: dict = {
        "card": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "python": platform.python_version(), "layers": args.layers,
    }
    fast = choose_fast_path(torch.device("cuda"), torch.bfloat16, packing=True, sharded=False)
    results["fast_path"] = {
        "attention": fast.attention, "compile_layers": fast.compile_layers,
        "adapter_compute_dtype": str(fast.adapter_compute_dtype), "fused_optimizer": fast.fused_optimizer,
        "fallbacks": list(fast.fallbacks),
    }
    model_dir = build_model_dir(args.work / "model", args.layers)
    tokenizer_dir = save_qwen3_tokenizer(args.work / "tokenizer")
    train = save_tokenized(synthetic_split(args.sequences, args.seq_len // 2, args.seq_len, 1), args.work / "train.safetensors")
    validation_split = synthetic_split(16, args.seq_len // 2, args.seq_len, 2)
    validation = save_tokenized(validation_split, args.work / "validation.safetensors")

    for name, env in (("clean", {}), ("killed", {KILL_AT_STEP: str(args.kill_at)})):
        run_dir = args.work / name
        job_path = write_job(run_dir, model_dir, tokenizer_dir, train, validation, args)
        if name == "clean":
            results["plan"] = TrainingJob.read(job_path).plan.model_dump(mode="json")
        results[name] = run(job_path, args.out / f"{name}.log", env)
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            (args.out / f"{name}_metrics.jsonl").write_bytes(metrics.read_bytes())
            results[name]["steps"] = steps_of(metrics)
    clean, killed = results["clean"].get("steps", {}), results["killed"].get("steps", {})
    results["validation"] = {
        name: validations_of(args.work / name / "metrics.jsonl")
        for name in ("clean", "killed")
        if (args.work / name / "metrics.jsonl").is_file()
    }
    results["loss_diff_after_resume"] = {
        step: killed[step]["loss"] - clean[step]["loss"] for step in sorted(clean) if step in killed and step > args.checkpoint_every
    }
    if results["clean"]["summary"]:
        results["reload"] = reload_adapter(model_dir, Path(results["clean"]["summary"]["adapter_dir"]), validation_split)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(json.dumps({key: value for key, value in results.items() if key not in ("clean", "killed", "plan")}, indent=1))
    return 0 if results["clean"]["error"] is None and results["killed"]["error"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
