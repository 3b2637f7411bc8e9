"""Training curves from the engine's metrics JSONL, drawn as PNGs for reports and the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from qft_core.train.metrics_log import MetricsLog  # noqa: E402
from qft_core.train.validation_metrics import (  # noqa: E402
    VAL_ANSWER_LOSS,
    VAL_CHAR_ACCURACY,
    VAL_REASONING_LOSS,
    VAL_TERM_ACCURACY,
    VAL_WORD_ACCURACY,
)

# Validation metrics on Chinese text the engine logs next to val_loss (validation_metrics.py defines them):
# accuracies (higher is better) and the token loss on the reasoning and on the answer part of the targets (lower
# is better).
CHINESE_ACCURACIES = (VAL_CHAR_ACCURACY, VAL_WORD_ACCURACY, VAL_TERM_ACCURACY)
CHINESE_LOSSES = (VAL_REASONING_LOSS, VAL_ANSWER_LOSS)
CHINESE_METRICS = CHINESE_ACCURACIES + CHINESE_LOSSES


def read_metrics(path: str | Path) -> list[dict]:
    """The metrics records in order; a torn last line (a killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file")
    return MetricsLog(path).records()


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every step record that carries a value for `key`."""
    return [(r["step"], r[key]) for r in records if "event" not in r and r.get(key) is not None]


def plot_loss_curve(records: list[dict], out: str | Path, title: str = "LoRA training") -> Path:
    """Training loss per step and validation loss where measured, on one chart."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    _draw_losses(axes, records)
    axes.set_title(title)
    return _save(figure, out)


def plot_training_panels(
    records: list[dict],
    out: str | Path,
    *,
    smoothed: Sequence[tuple[int, float]] = (),
    spike_steps: Sequence[int] = (),
    title: str = "LoRA training",
) -> Path:
    """Four panels over optimizer steps: loss (train, `smoothed` train, validation), learning rate, gradient
    norm (log scale, `spike_steps` marked) and throughput in tokens per second."""
    figure, ((loss_axes, lr_axes), (norm_axes, speed_axes)) = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    _draw_losses(loss_axes, records, smoothed)
    loss_axes.set_title("loss")

    _line(lr_axes, series(records, "lr"), "learning rate")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_axes.set_title("learning rate")

    norms = [(step, value) for step, value in series(records, "grad_norm") if value > 0]
    _line(norm_axes, norms, "gradient norm (before clipping)")
    if norms:
        norm_axes.set_yscale("log")
    spikes = [(step, value) for step, value in norms if step in set(spike_steps)]
    if spikes:
        norm_axes.plot(*zip(*spikes), "rx", markersize=9, label="spike")
        norm_axes.legend()
    norm_axes.set_title("gradient norm")

    _line(speed_axes, series(records, "tokens_per_s"), "tokens / s")
    speed_axes.set_title("throughput")

    for axes in (loss_axes, lr_axes, norm_axes, speed_axes):
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return _save(figure, out)


def has_chinese_metrics(records: list[dict]) -> bool:
    return any(series(records, key) for key in CHINESE_METRICS)


def plot_chinese_metrics(records: list[dict], out: str | Path, title: str = "Chinese validation metrics") -> Path:
    """Two panels: the validation accuracies on answer characters and on cryptography terms, and the validation
    loss split into reasoning and answer tokens (with the overall validation loss for reference)."""
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key in CHINESE_ACCURACIES:
        _line(accuracy_axes, series(records, key), key, marker="o-")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_title("next-token accuracy")
    for key in ("val_loss", *CHINESE_LOSSES):
        _line(loss_axes, series(records, key), key, marker="o-")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("validation loss by part")
    for axes in (accuracy_axes, loss_axes):
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.suptitle(title)
    return _save(figure, out)


def _draw_losses(axes, records: list[dict], smoothed: Sequence[tuple[int, float]] = ()) -> None:
    train, validation = series(records, "loss"), series(records, "val_loss")
    if train:
        axes.plot(*zip(*train), label="train loss", linewidth=1.2, alpha=0.5 if smoothed else 1.0)
    if smoothed:
        axes.plot(*zip(*smoothed), label="train loss (smoothed)", linewidth=1.8)
    if validation:
        axes.plot(*zip(*validation), "o-", label="validation loss", linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if train or validation:
        axes.legend()


def _line(axes, points: list[tuple[int, float]], label: str, marker: str = "-") -> None:
    if points:
        axes.plot(*zip(*points), marker, label=label, linewidth=1.2)
    axes.set_ylabel(label)


def _save(figure, out: str | Path) -> Path:
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out)
    plt.close(figure)
    return out
