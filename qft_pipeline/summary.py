"""What `qft run` prints at the end: what the run found (the data and who wrote its reasoning, training and evaluation
headlines, the stand-in caveat),
where the package is and which variant it deploys, what each stage cost, and the commands to go on with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qft_core.evaluate.report import REPORT_JSON, headline_lines
from qft_core.train.metrics_log import format_duration
from qft_pipeline.progress import StageTime

ANNOTATION = "term_annotated_examples"
TRAINING = "lora_checkpoint"
EVALUATION = "evaluation_report"
ADVICE = "training_advice"
DEPLOYMENT = "deployment_package"


def summary_lines(metadata: Mapping[str, Mapping[str, Any]], stages: list[StageTime]) -> list[str]:
    """The end-of-run summary from each materialized asset's metadata (plain values) and the stage times; a
    section is left out when its asset did not materialize."""
    stand_in = next((values["stand_in"] for values in metadata.values() if values.get("stand_in")), None)
    lines = [f"!! {stand_in}", ""] if stand_in else []
    if ANNOTATION in metadata:
        lines += [_data_line(metadata[ANNOTATION]), ""]
    if TRAINING in metadata:
        lines += [_training_line(metadata[TRAINING]), ""]
    if EVALUATION in metadata:
        report = Path(str(metadata[EVALUATION]["path"]))
        data = json.loads((report.parent / REPORT_JSON).read_text(encoding="utf-8"))
        evaluation = [line for line in headline_lines(data) if line != data.get("stand_in")]
        lines += ["evaluation (base vs fine-tuned):", *(f"  {line}" for line in evaluation), f"  report: {report}", ""]
    if ADVICE in metadata:
        advice = metadata[ADVICE]
        lines += [f"settings to change for the next run: {advice['settings']} ({advice['path']})", ""]
    if DEPLOYMENT in metadata:
        package = metadata[DEPLOYMENT]
        lines += [
            f"package: {package['archive']}",
            f"  deployed variant: {package.get('deployed_variant', 'unquantized')} (export.deployed_variant); "
            f"folder {package['path']}",
            "",
        ]
    if stages:
        lines += [*_stage_lines(stages), ""]
    lines += ["next:", *_next_commands(metadata)]
    return lines


def _data_line(values: Mapping[str, Any]) -> str:
    return (
        f"data: {values.get('examples')} examples; reasoning: {values.get('reasoning_expert')} expert, "
        f"{values.get('reasoning_model')} written by a model (writer: {values.get('reasoning_writer')}; marked "
        f"`model`), {values.get('reasoning_template')} template, {values.get('reasoning_none')} none; "
        f"{values.get('reasoning_rejected')} model-written refused"
    )


def _training_line(values: Mapping[str, Any]) -> str:
    def loss(first: str, last: str) -> str:
        return f"{_number(values.get(first))} → {_number(values.get(last))}"

    return (
        f"training: {values.get('steps')} steps, train loss {loss('first_train_loss', 'final_train_loss')}, "
        f"validation loss {loss('first_val_loss', 'final_val_loss')}, status {values.get('training_status')}"
    )


def _stage_lines(stages: list[StageTime]) -> list[str]:
    width = max(len(stage.asset) for stage in stages)
    total_wall, total_cpu = sum(stage.wall_s for stage in stages), sum(stage.cpu_s for stage in stages)
    lines = ["time per asset (wall / CPU, all cores):"]
    lines += [
        f"  {stage.asset:<{width}}  {format_duration(stage.wall_s):>7} / {format_duration(stage.cpu_s):>7}"
        for stage in stages
    ]
    lines.append(f"  {'total':<{width}}  {format_duration(total_wall):>7} / {format_duration(total_cpu):>7}")
    return lines


def _next_commands(metadata: Mapping[str, Mapping[str, Any]]) -> list[str]:
    commands = ["  uv run qft ui                      # the runs, assets, metadata and logs in the Dagster UI"]
    if DEPLOYMENT in metadata:
        package = metadata[DEPLOYMENT]
        commands += [
            f"  uv run qft package verify {package['archive']}",
            f"  uv run qft serve {package['path']}   # OpenAI-compatible API on 127.0.0.1:8000",
        ]
    commands.append("  uv run qft evaluate                # evaluate the newest run again, or another adapter")
    return commands


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "–"
