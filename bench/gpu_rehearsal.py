"""The full-size rehearsal: the production recipe on qwen3-4b-shape (Qwen3-4B-Thinking-2507's architecture, RANDOM
bf16 weights) through the whole Dagster graph on one GPU, with each asset's wall time and peak GPU memory.

    python bench/gpu_rehearsal.py --phase train   --out $OUT   # data → plan → LoRA (torchrun) → evaluation_report
    python bench/gpu_rehearsal.py --phase package --out $OUT   # merged_model → int8 / int4 / gptq → deployment_package
    python bench/gpu_rehearsal.py --phase train --bench-engine --out $OUT   # also bench_train_gpu.py's engine path

Each asset runs in a Dagster run of its own through qft's runner (the graph's own jobs; `quantized_package` one run
per format), in graph order, so its wall time and this process's peak GPU memory (torch.cuda.max_memory_allocated,
reset before each asset) are its own. The trainer runs under torchrun in child processes: its peak comes from the
engine's metrics (the largest per-step `memory_gib`) and its steady-state tokens/s from training_summary.json.

A phase resumes: an asset whose latest materialization in the project's Dagster instance (.dagster_home) still has
its files (artifacts/) is kept, unless something upstream of it ran again in this call; missing upstream assets run
first, so `--phase package` on a fresh machine runs the whole graph. `--deadline-s` stops starting assets once
that much time has passed, so a call ends inside the device's 10-minute limit; the next call picks up there.

Writes rehearsal-<phase>.json and rehearsal-<phase>.md under --out (card, date, versions, one row per asset),
copies the trainer's per-step metrics there (lora_metrics.jsonl) and prints the table. Asserts nothing. Results on
random weights: time, memory and throughput carry over to the real model; losses, metrics, probes and perplexity
are noise. On a machine without a GPU, `--config` a CPU config (model.device: cpu) to check the code path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from importlib import metadata as distributions
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import dagster as dg  # noqa: E402
import torch  # noqa: E402

from qft_core.config import load_config  # noqa: E402
from qft_core.model.registry import REGISTRY  # noqa: E402
from qft_core.diagnose.curves import read_metrics  # noqa: E402
from qft_core.train.job import TrainingSummary  # noqa: E402
from qft_pipeline.definitions import defs  # noqa: E402
from qft_pipeline.instance import project_instance  # noqa: E402
from qft_pipeline.jobs import DEPLOY_JOB, QUANTIZE_JOB  # noqa: E402
from qft_pipeline.runner import materialize_graph  # noqa: E402

DEFAULT_CONFIG = "configs/rehearsal-qwen3-4b-shape.yaml"
LAST_OF_TRAIN = "evaluation_report"
PARTITIONED = "quantized_package"
VERSIONS = ("torch", "transformers", "peft", "accelerate", "dagster", "torchao", "optimum-quanto", "gptqmodel")
GIB = 1024**3
# Metadata worth a column in the table, where an asset records it.
NOTES = (
    "device", "dtype", "max_abs_logit_diff", "strategy", "micro_batch_size", "steps", "method", "weights_bytes",
    "quantize_seconds", "gpus",
)


def phase_assets(phase: str, formats: list[str]) -> list[tuple[str, str | None]]:
    """(asset, partition) in graph order: the training phase ends at the evaluation report, the packaging phase
    is every asset after it (upstream assets of either are checked and rerun if gone)."""
    graph = defs.resolve_asset_graph()
    upstream = dg.AssetSelection.assets(LAST_OF_TRAIN).upstream().resolve(graph)
    ordered = [key for key in graph.toposorted_asset_keys]
    chosen = [key for key in ordered if (key in upstream) == (phase == "train") or phase == "package"]
    steps = []
    for key in chosen:
        name = key.to_user_string()
        steps += [(name, fmt) for fmt in formats] if name == PARTITIONED else [(name, None)]
    return steps


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].asset_materialization if records else None


def _kept(instance: dg.DagsterInstance, asset: str, partition: str | None) -> bool:
    materialization = _latest(instance, asset, partition)
    if materialization is None:
        return False
    path = materialization.metadata.get("path")
    return path is None or Path(str(path.value)).exists()


def _run(asset: str, partition: str | None, config_file: str, instance: dg.DagsterInstance) -> list[str]:
    """Materialize one asset (one partition) in its own run; the failures, empty when it succeeded."""
    if partition is None and asset != "deployment_package":
        outcome = materialize_graph(config_file=config_file, selection=asset)
        return outcome.failures
    job = QUANTIZE_JOB if partition else DEPLOY_JOB
    result = defs.resolve_job_def(job).execute_in_process(
        run_config={"resources": {"qft": {"config": {"config_file": config_file}}}},
        instance=instance,
        partition_key=partition,
        raise_on_error=False,
    )
    failures = [
        f"{event.step_key}: {event.event_specific_data.error.message.strip()}"
        for event in result.all_events
        if event.is_step_failure
    ]
    return failures if failures or result.success else ["run failed"]


def _trainer_numbers(materialization) -> dict:
    """The torchrun trainer's own peak GPU memory and steady-state throughput, from its summary and metrics."""
    summary = TrainingSummary.model_validate(materialization.metadata["summary"].value)
    rows = read_metrics(summary.metrics_file)
    step_rows = [row for row in rows if row.get("memory_gib") is not None]
    return {
        "trainer_peak_gib": round(max(row["memory_gib"] for row in step_rows), 2) if step_rows else None,
        "steady_tokens_per_s": round(summary.tokens_per_s, 1),
        "train_steps": summary.steps,
        "train_tokens": summary.tokens,
        "train_wall_s": round(summary.wall_time_s, 1),
        "tokens_per_micro_batch": round(summary.tokens / max(1, summary.steps * summary.grad_accum_steps), 1),
    }


def _evaluation_numbers(materialization) -> dict:
    """Truncation and generation speed of each model on the test split, from report.json."""
    report = json.loads((Path(str(materialization.metadata["path"].value)).parent / "report.json").read_text())
    numbers = {}
    for model, stats in report["sets"][report["primary_set"]]["generation"].items():
        numbers[f"{model}_reasoning_cut"] = round(stats["closed_by_budget_rate"], 3)
        numbers[f"{model}_completion_cut"] = round(1 - stats["finished_rate"], 3)
        numbers[f"{model}_tokens_per_s"] = round(stats.get("tokens_per_second", 0.0), 1)
    numbers["test_examples"] = report["sets"][report["primary_set"]]["n"]
    return numbers


def _row(asset: str, partition: str | None, instance: dg.DagsterInstance) -> dict:
    materialization = _latest(instance, asset, partition)
    if materialization is None:
        return {}
    values = {key: entry.value for key, entry in materialization.metadata.items() if key in NOTES}
    if asset == "lora_checkpoint":
        values.update(_trainer_numbers(materialization))
    if asset == "evaluation_report":
        values.update(_evaluation_numbers(materialization))
    return values


def _upstream(asset: str) -> set[str]:
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.assets(asset).upstream().resolve(graph)
    return {key.to_user_string() for key in keys} - {asset}


def keep_trainer_metrics(instance: dg.DagsterInstance, out: Path) -> None:
    """Copy the trainer's per-step metrics (step time, tokens, memory) next to the tables, for a closer look."""
    materialization = _latest(instance, "lora_checkpoint", None)
    if materialization is not None:
        summary = TrainingSummary.model_validate(materialization.metadata["summary"].value)
        if Path(summary.metrics_file).is_file():
            shutil.copyfile(summary.metrics_file, out / "lora_metrics.jsonl")


def run_phase(phase: str, config_file: str, deadline_s: float) -> list[dict]:
    instance = project_instance()
    started = time.perf_counter()
    rows, reran, stopped = [], set(), False
    for asset, partition in phase_assets(phase, load_config(config_file).quant.formats):
        name = f"{asset}[{partition}]" if partition else asset
        if not reran & _upstream(asset) and _kept(instance, asset, partition):
            rows.append({"asset": name, "status": "kept from an earlier call", **_row(asset, partition, instance)})
            continue
        if stopped or time.perf_counter() - started > deadline_s:
            stopped = True
            rows.append({"asset": name, "status": f"not started: past --deadline-s {deadline_s:.0f}"})
            continue
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        failures = _run(asset, partition, config_file, instance)
        wall = time.perf_counter() - began
        # Everything downstream of an asset that ran again runs again: it would otherwise keep what the older copy
        # gave. (A sibling that ran, such as dataset_exports, does not make training run twice.)
        reran.add(asset)
        row = {
            "asset": name,
            "status": "FAILED: " + "; ".join(failures)[:400] if failures else "ran",
            "wall_s": round(wall, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None,
        }
        rows.append({**row, **(_row(asset, partition, instance) if not failures else {})})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        if failures and partition is None:
            stopped = True  # nothing downstream can run on a failed asset
    return rows


def bench_engine(out: Path, seq: int) -> list[dict]:
    """bench_train_gpu.py's engine path at the recipe's row length, one and two packed rows a micro-batch."""
    folder = out / "bench"
    rows = f"{seq}x1p,{seq}x2p"
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_train_gpu.py"), "--paths", "engine", "--rows", rows,
               "--out", str(folder)]
    subprocess.run(command, check=False)
    results = folder / "results.jsonl"
    return [json.loads(line) for line in results.read_text().splitlines() if line] if results.is_file() else []


def environment(config_file: str) -> dict:
    model = load_config(config_file).model.name
    entry = REGISTRY.get(model)
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = distributions.version(name)
        except distributions.PackageNotFoundError:
            versions[name] = None
    return {
        "date": date.today().isoformat(),
        "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "python": platform.python_version(),
        "config": config_file,
        "model": model,
        "random_weights": bool(entry and entry.random_weights),
        "versions": versions,
    }


def markdown(phase: str, env: dict, rows: list[dict], engine: list[dict]) -> str:
    columns = ["asset", "status", "wall_s", "peak_gpu_gib"]
    extra = sorted({key for row in rows for key in row} - set(columns))
    lines = [
        f"# Rehearsal, phase {phase}: {env['model']}"
        + (" — RANDOM WEIGHTS: time and memory only, every quality number is noise" if env["random_weights"] else ""),
        "",
        f"{env['date']}, {env['card']}, Python {env['python']}, config `{env['config']}`; "
        + ", ".join(f"{name} {version}" for name, version in env["versions"].items() if version),
        "",
        "| " + " | ".join(columns + extra) + " |",
        "|" + "---|" * (len(columns) + len(extra)),
    ]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in columns + extra) + " |" for row in rows]
    if engine:
        lines += ["", "bench_train_gpu.py engine path (same card, same call):", ""]
        lines += [f"- {json.dumps(result, ensure_ascii=False)}" for result in engine]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["train", "package"], required=True)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"qft config (default {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=os.environ.get("OUT", "rehearsal_out"))
    parser.add_argument("--deadline-s", type=float, default=300, help="start no asset after this many seconds")
    parser.add_argument("--bench-engine", action="store_true", help="then run bench_train_gpu.py's engine path")
    args = parser.parse_args(argv)
    config_file = str(Path(args.config).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(config_file)
    rows = run_phase(args.phase, config_file, args.deadline_s)
    keep_trainer_metrics(project_instance(), out)
    engine = bench_engine(out, load_config(args.config).model.max_length) if args.bench_engine else []
    (out / f"rehearsal-{args.phase}.json").write_text(
        json.dumps({"environment": env, "assets": rows, "bench_engine": engine}, ensure_ascii=False, indent=1)
    )
    text = markdown(args.phase, env, rows, engine)
    (out / f"rehearsal-{args.phase}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
