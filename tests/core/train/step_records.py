"""Step records as the engine writes them to metrics.jsonl, made by hand for the monitor, advice and progress tests."""

import json
from pathlib import Path


def step(number: int, loss: float | None, **extra) -> dict:
    """A step record as the engine writes it; 20 steps make one epoch."""
    record = {
        "step": number,
        "epoch": number / 20,
        "loss": loss,
        "lr": 1e-3,
        "grad_norm": 1.0,
        "tokens": 1000,
        "target_tokens": 600,
        "tokens_per_s": 500.0,
        "step_time_s": 2.0,
        "comm_s": 0.0,
        "memory_gib": 1.0,
        "micro_batch_size": 2,
        "grad_accum_steps": 2,
        "skipped": False,
    }
    record.update(extra)
    return record


def falling(steps: int = 50) -> list[dict]:
    """Loss 3.0 falling by 0.04 per step."""
    return [step(n, 3.0 - 0.04 * (n - 1)) for n in range(1, steps + 1)]


def write_metrics(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path
