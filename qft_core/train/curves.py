"""Loss curves from the engine's metrics JSONL, drawn as a PNG for reports and the Dagster UI."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def read_metrics(path: str | Path) -> list[dict]:
    """The metrics records in order; a torn last line (a killed writer) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(records: list[dict], out: str | Path, title: str = "LoRA training") -> Path:
    """Training loss per step and validation loss where measured, on one chart."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    validation = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axes.plot(*zip(*train), label="train loss", linewidth=1.2)
    if validation:
        axes.plot(*zip(*validation), "o-", label="validation loss", linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out)
    plt.close(figure)
    return out
