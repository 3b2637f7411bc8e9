"""Where training progress goes: the per-step metrics JSONL in the output folder, and a reporter that whoever
launched the engine (a console, Dagster Pipes) uses to follow it live."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

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
        staging = self.path.with_suffix(".jsonl.tmp")
        staging.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in kept), encoding="utf-8")
        staging.replace(self.path)
