"""The metrics JSONL and the console reporter."""

import io
import json
from pathlib import Path

from qft_core.train.metrics_log import METRICS_PREFIX, SUMMARY_PREFIX, ConsoleReporter, MetricsLog


def test_records_survive_a_torn_last_line_and_rewind_drops_later_steps(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 1.0 / step})
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
