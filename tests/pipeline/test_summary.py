"""The end-of-run summary of `qft run`, from hand-made asset metadata and stage times."""

import json

from qft_core.model.registry import stand_in_note
from qft_pipeline.progress import StageTime
from qft_pipeline.summary import summary_lines


def _report(folder):
    def estimate(mean: float, low: float, high: float) -> dict:
        return {"mean": mean, "ci_low": low, "ci_high": high, "n": 4}

    data = {
        "primary_set": "test",
        "main_metrics": ["term_f1"],
        "settings": {"confidence_level": 0.95},
        "regressions": [],
        "stand_in": stand_in_note("qwen3-tiny"),
        "verdict": {"kind": "degenerate", "message": "DEGENERATE: 4 of 4 fine-tuned answers are degenerate"},
        "sets": {"test": {"n": 4, "metrics": {"base": {"term_f1": estimate(0.1, 0.0, 0.2)},
                                              "finetuned": {"term_f1": estimate(0.2, 0.1, 0.3)}},
                          "difference": {"term_f1": estimate(0.1, 0.05, 0.15)}}},
    }
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(data), encoding="utf-8")
    return folder / "report.md"


def test_the_summary_tells_the_results_the_package_the_costs_and_what_to_do_next(tmp_path):
    note = stand_in_note("qwen3-tiny")
    metadata = {
        "term_annotated_examples": {"examples": 665, "reasoning_writer": "template", "reasoning_expert": 658,
                                    "reasoning_model": 0, "reasoning_template": 7, "reasoning_none": 0,
                                    "reasoning_rejected": 0},
        "lora_checkpoint": {"steps": 40, "first_train_loss": 11.97, "final_train_loss": 11.77,
                            "first_val_loss": 11.95, "final_val_loss": 11.8, "training_status": "not_learning",
                            "stand_in": note},
        "evaluation_report": {"path": str(_report(tmp_path / "eval")), "stand_in": note},
        "training_advice": {"path": "/a/advice.json", "settings": "training.epochs"},
        "deployment_package": {"path": "/a/pkg", "archive": "/a/pkg.tar.gz", "deployed_variant": "unquantized"},
    }
    stages = [StageTime("lora_checkpoint", 125.0, 240.0), StageTime("evaluation_report", 59.6, 61.0)]

    lines = summary_lines(metadata, stages)

    assert lines[:2] == [f"!! {note}", ""]
    assert lines.count(f"!! {note}") == 1 and not any(line.strip() == note for line in lines)
    assert ("data: 665 examples; reasoning: 658 expert, 0 written by a model (writer: template; marked `model`), "
            "7 template, 0 none; 0 model-written refused") in lines
    assert "training: 40 steps, train loss 11.97 → 11.77, validation loss 11.95 → 11.8, status not_learning" in lines
    assert "  verdict: DEGENERATE: 4 of 4 fine-tuned answers are degenerate" in lines
    assert "  term_f1  0.100 [0.000, 0.200] n=4      0.200 [0.100, 0.300] n=4      +0.100 [+0.050, +0.150] n=4" in lines
    assert f"  report: {tmp_path / 'eval' / 'report.md'}" in lines
    assert "settings to change for the next run: training.epochs (/a/advice.json)" in lines
    assert "package: /a/pkg.tar.gz" in lines
    assert "  deployed variant: unquantized (export.deployed_variant); folder /a/pkg" in lines
    assert lines[lines.index("time per asset (wall / CPU, all cores):") + 1 :][:3] == [
        "  lora_checkpoint      2m05s /   4m00s",
        "  evaluation_report    1m00s /   1m01s",
        "  total                3m05s /   5m01s",
    ]
    assert "  uv run qft package verify /a/pkg.tar.gz" in lines
    assert lines[-1].startswith("  uv run qft evaluate")


def test_a_partial_run_summarises_what_it_materialized():
    assert summary_lines({}, []) == [
        "next:",
        "  uv run qft ui                      # the runs, assets, metadata and logs in the Dagster UI",
        "  uv run qft evaluate                # evaluate the newest run again, or another adapter",
    ]
