"""PNG charts of one evaluation set's summary: main metrics and categories, base against fine-tuned with their
intervals, and the spread of the per-example scores. Drawn on matplotlib Figures, without pyplot's global state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

COLORS = {"base": "#9aa5b1", "finetuned": "#1f6feb"}
LABELS = {"base": "base", "finetuned": "fine-tuned"}
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 11)
DPI = 110


def write_charts(set_name: str, summary: Mapping, main_metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """`{set}_main_metrics.png`, `{set}_by_category.png`, `{set}_term_f1_by_category.png` (when the set has term
    categories) and `{set}_distributions.png` in `out_dir`; returns their paths."""
    models = list(summary["metrics"])
    charts = [
        (f"{set_name}_main_metrics.png", _main_metrics(summary, main_metrics, models, set_name)),
        (f"{set_name}_by_category.png", _by_category(summary, main_metrics, models, set_name)),
    ]
    if any(summary["term_f1_by_category"][model] for model in models):
        charts.append((f"{set_name}_term_f1_by_category.png", _term_f1_by_category(summary, models, set_name)))
    charts.append((f"{set_name}_distributions.png", _distributions(summary, main_metrics, models, set_name)))
    paths = []
    for name, figure in charts:
        path = out_dir / name
        figure.savefig(path, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    return paths


def _grouped_bars(
    axes, groups: Sequence[str], values: Mapping[str, Sequence[Mapping | None]], models: Sequence[str]
) -> None:
    """Bars of each model side by side per group, with interval whiskers; a missing value draws no bar."""
    positions = np.arange(len(groups))
    width = 0.8 / len(models)
    for offset, model in enumerate(models):
        estimates = values[model]
        means = np.array([value["mean"] if value else np.nan for value in estimates])
        below = np.array([value["mean"] - value["ci_low"] if value else 0.0 for value in estimates])
        above = np.array([value["ci_high"] - value["mean"] if value else 0.0 for value in estimates])
        axes.bar(
            positions + (offset - (len(models) - 1) / 2) * width, np.nan_to_num(means), width,
            yerr=np.vstack([below, above]), capsize=3, color=COLORS.get(model), label=LABELS.get(model, model),
        )
    axes.set_xticks(positions, groups, rotation=30, ha="right")
    axes.set_ylim(0.0, 1.0)
    axes.grid(axis="y", alpha=0.3)


def _main_metrics(summary: Mapping, main_metrics: Sequence[str], models: Sequence[str], set_name: str) -> Figure:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    values = {model: [summary["metrics"][model].get(metric) for metric in main_metrics] for model in models}
    _grouped_bars(axes, main_metrics, values, models)
    axes.set_title(f"{set_name}: main metrics (n={summary['n']}, mean with bootstrap interval)")
    axes.legend()
    return figure


def _by_category(summary: Mapping, main_metrics: Sequence[str], models: Sequence[str], set_name: str) -> Figure:
    categories = list(summary["categories"])
    figure = Figure(figsize=(max(7, 0.9 * len(categories) + 3), 3.2 * len(main_metrics)))
    for axes, metric in zip(figure.subplots(len(main_metrics), 1, squeeze=False)[:, 0], main_metrics, strict=True):
        values = {
            model: [summary["by_category"][model].get(category, {}).get(metric) for category in categories]
            for model in models
        }
        labels = [f"{category} ({summary['categories'][category]})" for category in categories]
        _grouped_bars(axes, labels, values, models)
        axes.set_title(f"{set_name}: {metric} by category")
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _term_f1_by_category(summary: Mapping, models: Sequence[str], set_name: str) -> Figure:
    categories = list(dict.fromkeys(cat for model in models for cat in summary["term_f1_by_category"][model]))
    figure = Figure(figsize=(max(7, 0.9 * len(categories) + 3), 4))
    axes = figure.subplots()
    values = {model: [summary["term_f1_by_category"][model].get(cat) for cat in categories] for model in models}
    _grouped_bars(axes, categories, values, models)
    axes.set_title(f"{set_name}: term F1 by term category")
    axes.legend()
    return figure


def _distributions(summary: Mapping, main_metrics: Sequence[str], models: Sequence[str], set_name: str) -> Figure:
    columns = 2
    rows = (len(main_metrics) + columns - 1) // columns
    figure = Figure(figsize=(8, 3 * rows))
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, metric in zip(grid, main_metrics, strict=False):
        for model in models:
            values = [value for value in summary["per_example"][model][metric] if value is not None]
            axes.hist(values, bins=HISTOGRAM_BINS, alpha=0.6, color=COLORS.get(model), label=LABELS.get(model, model))
        axes.set_title(metric)
        axes.set_xlabel("score per example")
        axes.set_ylabel("examples")
        axes.legend(fontsize="small")
    for axes in grid[len(main_metrics) :]:
        axes.set_visible(False)
    figure.suptitle(f"{set_name}: distribution of the per-example scores")
    figure.tight_layout()
    return figure
