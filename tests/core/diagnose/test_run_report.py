"""The run report: training_monitor.md and its PNG curves, from hand-made metrics."""

from pathlib import Path

from qft_core.diagnose.findings import monitor_records, monitor_run
from qft_core.diagnose.report import write_monitor_report
from tests.core.train.step_records import falling, write_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_writes_markdown_and_png_curves(tmp_path: Path) -> None:
    records = falling(40)
    records[19].update(grad_norm=30.0)
    records[39].update(val_loss=1.6, val_char_accuracy=0.5, val_term_accuracy=0.4)
    path = write_metrics(tmp_path / "metrics.jsonl", records)
    report = monitor_run(path, total_steps=80)

    markdown, pngs = write_monitor_report(report, tmp_path / "out")

    assert [png.name for png in pngs] == ["training_curves.png", "chinese_metrics.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
    text = markdown.read_text(encoding="utf-8")
    assert "**Status: improving** — step 40 / 80, ETA 1m20s" in text
    assert "| warning | gradient_explosion | 20 |" in text
    assert "![training_curves.png](training_curves.png)" in text


def test_report_without_chinese_metrics_draws_one_png(tmp_path: Path) -> None:
    records = falling(12)
    markdown, pngs = write_monitor_report(monitor_records(records), tmp_path, records=records)

    assert [png.name for png in pngs] == ["training_curves.png"] and pngs[0].read_bytes()[:8] == PNG_MAGIC
    assert "None: no anomaly in the logged steps." in markdown.read_text(encoding="utf-8")
