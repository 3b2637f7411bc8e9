"""The run report: a MonitorReport as training_monitor.md with its curves (training_curves.png, and
chinese_metrics.png when the run logged Chinese metrics), for the run folder and the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qft_core.diagnose.curves import has_chinese_metrics, plot_chinese_metrics, plot_training_panels, read_metrics
from qft_core.diagnose.findings import MonitorError, step_records, trailing_mean
from qft_core.diagnose.monitor_report import MonitorReport
from qft_core.train.metrics_log import format_duration

REPORT_FILE = "training_monitor.md"
PANELS_FILE = "training_curves.png"
CHINESE_FILE = "chinese_metrics.png"


def write_monitor_report(
    report: MonitorReport, out_dir: str | Path, records: list[dict] | None = None
) -> tuple[Path, list[Path]]:
    """`training_monitor.md` and the curves (`training_curves.png`, plus `chinese_metrics.png` when the records
    carry Chinese metrics) in out_dir; the records are read from the report's source unless given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if records is None:
        if report.source is None:
            raise MonitorError("write_monitor_report: the report names no metrics file; pass the records")
        records = read_metrics(report.source)
    steps = step_records(records)
    accepted = [r for r in steps if not r.get("skipped") and r.get("loss") is not None]
    smoothed = list(
        zip(
            (r["step"] for r in accepted),
            trailing_mean([float(r["loss"]) for r in accepted], report.stats.smoothing_steps or 1),
        )
    )
    spikes = [step for finding in report.of_kind("gradient_explosion") for step in finding.evidence["steps"]]
    pngs = [plot_training_panels(steps, out_dir / PANELS_FILE, smoothed=smoothed, spike_steps=spikes)]
    if has_chinese_metrics(steps):
        pngs.append(plot_chinese_metrics(steps, out_dir / CHINESE_FILE))
    markdown = out_dir / REPORT_FILE
    markdown.write_text(report_markdown(report, [png.name for png in pngs]), encoding="utf-8")
    return markdown, pngs


def report_markdown(report: MonitorReport, images: Sequence[str] = ()) -> str:
    """The report as Markdown: status line, key numbers, findings, then the images (paths relative to it)."""
    stats = report.stats
    progress = f"step {stats.last_step} / {stats.total_steps or '?'}"
    lines = [
        "## Training monitor",
        "",
        f"**Status: {report.status}** — {progress}, ETA {format_duration(report.eta_s)}",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    rows = [
        ("steps logged / last epoch", f"{stats.steps_logged} / {_number(stats.last_epoch)}"),
        ("train loss first → last", f"{_number(stats.first_loss)} → {_number(stats.last_loss)}"),
        (
            f"smoothed train loss ({stats.smoothing_steps}-step mean)",
            f"{_number(stats.smoothed_loss)} (best {_number(stats.best_smoothed_loss)} at step "
            f"{stats.best_smoothed_step})",
        ),
        (f"relative improvement over the last {stats.window_steps} steps", _percent(stats.tail_improvement)),
        ("validation loss last / best", f"{_number(stats.last_val_loss)} / {_number(stats.best_val_loss)} "
                                         f"(step {stats.best_val_step})"),
        ("learning rate (last)", _number(stats.last_lr)),
        ("median gradient norm", _number(stats.median_grad_norm)),
        ("step time / throughput (recent)", f"{_number(stats.step_time_s)} s / {_number(stats.tokens_per_s)} tok/s"),
        ("peak memory", f"{_number(stats.peak_memory_gib)} GiB"),
        ("skipped steps", f"{stats.skipped_steps} {stats.skipped_by_reason or ''}".strip()),
        ("out-of-memory back-offs / restarts", f"{stats.oom_events} / {stats.restarts}"),
        ("world size", str(stats.world_size or 1)),
        ("communication share of step time", _percent(stats.comm_share)),
        ("load balance (slowest / fastest rank)", _number(stats.load_balance_ratio)),
        *((f"{key} last / best", f"{_number(v['last'])} / {_number(v['best'])} (step {v['best_step']:g})")
          for key, v in stats.chinese.items()),
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "### Findings", ""]
    if report.findings:
        lines += ["| severity | kind | step | what |", "|---|---|---|---|"]
        lines += [
            f"| {f.severity} | {f.kind} | {f.step if f.step is not None else '–'} | {f.message} |"
            for f in report.findings
        ]
    else:
        lines.append("None: no anomaly in the logged steps.")
    if images:
        lines += ["", "### Curves", "", *(f"![{name}]({name})" for name in images)]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
