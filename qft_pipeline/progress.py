"""Live progress of `qft run`: one updating console line with the asset running and its own progress (the
training step, loss and ETA that the engine sends through Pipes; the evaluation's questions answered); and the
wall and CPU time each asset took."""

from __future__ import annotations

import os
import re
import resource
import time
from dataclasses import dataclass, field
from typing import TextIO

import dagster as dg
from tqdm import tqdm

TRAINING_STEP = "lora_checkpoint"
# Log lines that carry an asset's progress: the training's `ProgressTracker` lines ("step 12/50 (24%) | loss …")
# and the evaluation's "12/60 finetuned on test".
PROGRESS_LINE = re.compile(r"^(step \d+|\d+/\d+ )")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its children that have been waited for
    (torchrun and its workers, metric worker pools): what a stage costs on a machine of its own."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class StageTime:
    """One asset's step: wall seconds and CPU seconds between its start and end events as the follower saw them
    (to within one poll interval)."""

    asset: str
    wall_s: float
    cpu_s: float


@dataclass
class _Started:
    wall: float
    cpu: float


@dataclass
class RunFollower:
    """Reads a run's new events each `poll` and keeps the console line up to date."""

    instance: dg.DagsterInstance
    run_id: str
    bar: tqdm
    label: str | None = None
    cursor: str | None = None
    materialized: set[str] = field(default_factory=set)
    stages: list[StageTime] = field(default_factory=list)
    _started: dict[str, _Started] = field(default_factory=dict)

    def poll(self) -> None:
        while True:
            connection = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=1000)
            self.cursor = connection.cursor
            for record in connection.records:
                self._see(record.event_log_entry)
            if not connection.has_more:
                break
        # On a terminal the elapsed time keeps moving while a long step sends nothing.
        if self.bar.dynamic_ncols:
            self.bar.refresh()

    def _see(self, entry: dg.EventLogEntry) -> None:
        event = entry.dagster_event
        if event is None:
            if entry.step_key is not None and PROGRESS_LINE.match(entry.user_message):
                self.bar.set_postfix_str(entry.user_message, refresh=True)
            return
        step = event.step_key
        if event.event_type == dg.DagsterEventType.STEP_START:
            self._started[step] = _Started(time.monotonic(), cpu_seconds())
            self.bar.set_description_str(self._name(step), refresh=False)
            self.bar.set_postfix_str("", refresh=True)
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            started = self._started.pop(step, None)
            if started is not None:
                self.stages.append(
                    StageTime(self._name(step), time.monotonic() - started.wall, cpu_seconds() - started.cpu)
                )
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            name = event.asset_key.to_user_string()
            if name not in self.materialized:
                self.materialized.add(name)
                self.bar.update(1)

    def _name(self, step: str) -> str:
        return f"{step}[{self.label}]" if self.label else step


def progress_bar(total: int, console: TextIO) -> tqdm:
    """The one console line: assets done of all, elapsed time, the running asset and its detail. On a terminal it
    is cut to the terminal's width (following resizes); elsewhere (a file, a terminal of unknown size) it is whole."""
    try:
        width = os.get_terminal_size(console.fileno()).columns
    except (AttributeError, OSError, ValueError):
        width = 0
    return tqdm(
        total=total,
        file=console,
        unit="asset",
        bar_format="{n_fmt}/{total_fmt} assets {elapsed} | {desc}{postfix}",
        dynamic_ncols=width > 0,
        desc="starting",
    )
