"""Where training progress goes: the per-step metrics JSONL in the output folder, a reporter that whoever
launched the engine (a console, Dagster Pipes) uses to follow it live, and the live progress line it shows."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from qft_core.publish import publish_text

# Lines on stdout that carry structured progress; launch.py parses them back.
METRICS_PREFIX = "QFT_METRICS "
SUMMARY_PREFIX = "QFT_SUMMARY "


class Reporter(Protocol):
    """Receives the engine's progress on rank 0 (messages, one record per optimizer step, the final summary)."""

    def log(self, message: str) -> None: ...

    def metrics(self, step_record: dict[str, Any]) -> None: ...

    def summary(self, summary: dict[str, Any]) -> None: ...


class ConsoleReporter:
    """The default reporter: messages as plain lines, records as prefixed JSON lines on stdout."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def log(self, message: str) -> None:
        self._write(f"qft: {message}")

    def metrics(self, step_record: dict[str, Any]) -> None:
        self._write(METRICS_PREFIX + json.dumps(step_record, sort_keys=True))

    def summary(self, summary: dict[str, Any]) -> None:
        self._write(SUMMARY_PREFIX + json.dumps(summary, sort_keys=True))


METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per line, flushed as written so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every readable record; a torn last line from a killed writer is skipped."""
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def rewind_to(self, step: int) -> None:
        """Drop the records of steps after `step`, which a resumed run will produce again."""
        kept = [record for record in self.records() if record.get("step", 0) <= step]
        publish_text(self.path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))


def eta_seconds(step_times: Sequence[float], remaining_steps: int) -> float:
    """Remaining steps times the mean of the given recent step times (validation and checkpoint time excluded,
    as in the engine's step_time_s)."""
    if remaining_steps <= 0:
        return 0.0
    return statistics.fmean(step_times) * remaining_steps if step_times else math.nan


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- following a live run --------------------------------------------------------------------------------------


class ProgressTracker:
    """Follows a run one record at a time (as the engine reports them) for a live log: `update` returns a
    one-line status every `every` steps, at the last step and at a skipped step, else None."""

    def __init__(
        self, total_steps: int | None = None, every: int = 10, smoothing: int = 10, eta_steps: int = 20
    ) -> None:
        if every < 1:
            raise ValueError(f"ProgressTracker: every must be at least 1, got {every}")
        self.total_steps = total_steps
        self.every = every
        self.smoothing = smoothing
        self.eta_steps = eta_steps
        self.losses: list[float] = []
        self.step_times: list[float] = []
        self.last_val_loss: float | None = None

    def update(self, record: dict) -> str | None:
        if "event" in record:
            if record["event"] == "oom":
                return (
                    f"out of memory at step {record.get('step')}: micro-batch now "
                    f"{record.get('micro_batch_size')} x accumulation {record.get('grad_accum_steps')}"
                )
            return None
        step = record["step"]
        if self.total_steps is None:
            self.total_steps = record.get("total_steps")
        if record.get("step_time_s") is not None:
            self.step_times = [*self.step_times, record["step_time_s"]][-self.eta_steps :]
        if record.get("loss") is not None and not record.get("skipped"):
            self.losses = [*self.losses, float(record["loss"])][-self.smoothing :]
        if record.get("val_loss") is not None:
            self.last_val_loss = record["val_loss"]
        final = self.total_steps is not None and step >= self.total_steps
        if not (step % self.every == 0 or final or record.get("skipped")):
            return None
        return self._line(record)

    def _line(self, record: dict) -> str:
        step = record["step"]
        if self.total_steps:
            parts = [f"step {step}/{self.total_steps} ({step / self.total_steps:.0%})"]
        else:
            parts = [f"step {step}"]
        if self.losses:
            parts.append(f"loss {self.losses[-1]:.4f} (mean of last {len(self.losses)}: "
                         f"{statistics.fmean(self.losses):.4f})")
        if self.last_val_loss is not None:
            parts.append(f"val {self.last_val_loss:.4f}")
        if record.get("lr") is not None:
            parts.append(f"lr {record['lr']:.2e}")
        if record.get("tokens_per_s"):
            parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        if self.total_steps is not None and self.step_times:
            parts.append(f"ETA {format_duration(eta_seconds(self.step_times, self.total_steps - step))}")
        if record.get("skipped"):
            parts.append(f"SKIPPED: {record.get('anomaly', 'anomaly')}")
        return " | ".join(parts)
