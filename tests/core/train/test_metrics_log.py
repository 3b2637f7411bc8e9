"""The metrics JSONL, the console reporter and the live progress line."""

import io
import json
from pathlib import Path

from qft_core.train.metrics_log import (
    METRICS_PREFIX,
    SUMMARY_PREFIX,
    ConsoleReporter,
    MetricsLog,
    ProgressTracker,
    format_duration,
)
from tests.core.train.step_records import step


def test_records_survive_a_torn_last_line_and_rewind_drops_later_steps(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    for number in (1, 2, 3):
        log.append({"step": number, "loss": 1.0 / number})
    log.append({"event": "warning", "step": 3, "message": "x"})
    with log.path.open("a") as handle:
        handle.write('{"step": 4, "lo')  # the writer was killed mid-line

    assert [record["step"] for record in log.records()] == [1, 2, 3, 3]
    log.rewind_to(2)
    assert log.records() == [{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}]
    log.append({"step": 3, "loss": 0.3})
    assert [record["step"] for record in log.records()] == [1, 2, 3]


def test_console_reporter_writes_prefixed_json_lines() -> None:
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    reporter.log("hello")
    reporter.metrics({"step": 1, "loss": 2.5})
    reporter.summary({"steps": 1})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "qft: hello"
    assert lines[1].startswith(METRICS_PREFIX) and json.loads(lines[1][len(METRICS_PREFIX):]) == {"step": 1, "loss": 2.5}
    assert lines[2] == SUMMARY_PREFIX + '{"steps": 1}'


def test_progress_tracker_reports_every_n_steps_with_eta() -> None:
    tracker = ProgressTracker(total_steps=100, every=10, smoothing=2)
    lines = [
        tracker.update(step(n, 2.0 + n / 100, step_time_s=10.0 if n <= 10 else (1.0 if n % 2 else 3.0)))
        for n in range(1, 31)
    ]

    assert [n + 1 for n, line in enumerate(lines) if line] == [10, 20, 30]
    assert lines[29] == (
        "step 30/100 (30%) | loss 2.3000 (mean of last 2: 2.2950) | lr 1.00e-03 | 500 tok/s | ETA 2m20s"
    )


def test_progress_tracker_reports_a_skipped_step_and_the_last_step_at_once() -> None:
    tracker = ProgressTracker(total_steps=3, every=10)
    assert tracker.update(step(1, 2.0)) is None
    line = tracker.update(step(2, None, skipped=True, anomaly="non-finite loss nan", val_loss=2.5))
    assert line.endswith("| SKIPPED: non-finite loss nan") and "val 2.5000" in line
    assert tracker.update({"event": "warning", "step": 2, "message": "x"}) is None
    assert tracker.update(step(3, 1.5)).startswith("step 3/3 (100%) | loss 1.5000")


def test_progress_tracker_takes_the_total_from_the_engines_records() -> None:
    tracker = ProgressTracker(every=1)
    tracker.update(step(1, 2.0, total_steps=4))
    # Two steps of 2 s each left.
    assert tracker.update(step(2, 1.8, total_steps=4)).startswith("step 2/4 (50%) | loss 1.8000")
    assert tracker.update(step(2, 1.8, total_steps=4)).endswith("| ETA 4s")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (45, 140, 3725, None)] == ["45s", "2m20s", "1h02m", "unknown"]
