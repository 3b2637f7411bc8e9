"""Materialize the asset graph in-process on the project instance, with a live progress line over the assets.

The whole graph is three jobs in order (see jobs.py): the main job, one run per configured quantization
format, then the deployment package. A selection runs only the main job's matching assets.
"""

from __future__ import annotations

import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import dagster as dg

from qft_core.config import load_config
from qft_pipeline.definitions import defs
from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import CLI_TRIGGER, DEPLOY_JOB, FORMAT_TAG, LINEAGE_TAG, MAIN_JOB, QUANTIZE_JOB, TRIGGER_TAG
from qft_pipeline.progress import RunFollower, StageTime, progress_bar

_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunOutcome:
    run_ids: list[str] = field(default_factory=list)
    success: bool = True
    artifacts: dict[str, str] = field(default_factory=dict)
    # Each materialized asset's metadata as plain values (partitioned ones as `asset[partition]`).
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stages: list[StageTime] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run_ids[0]


@dataclass(frozen=True)
class _Step:
    job: str
    assets: frozenset
    partition: str | None = None


def _run_config(config_file: str | None) -> dict:
    resources = {"qft": {"config": {"config_file": config_file}}} if config_file else {}
    return {**_QUIET_LOGS, "resources": resources}


def _plan(config_file: str | None, selection: str | None) -> list[_Step]:
    graph = defs.resolve_asset_graph()
    main_assets = defs.resolve_job_def(MAIN_JOB).asset_layer.selected_asset_keys
    if selection:
        return [_Step(MAIN_JOB, frozenset(dg.AssetSelection.from_string(selection).resolve(graph) & main_assets))]
    quantized = frozenset({dg.AssetKey("quantized_package")})
    return [
        _Step(MAIN_JOB, frozenset(main_assets)),
        *(_Step(QUANTIZE_JOB, quantized, fmt) for fmt in load_config(config_file).quant.formats),
        _Step(DEPLOY_JOB, frozenset({dg.AssetKey("deployment_package")})),
    ]


def _tags(step: _Step, lineage: str | None) -> dict[str, str]:
    """The trigger on every run; the packaging runs also name the main run they package, as the sensors' runs do."""
    tags = {TRIGGER_TAG: CLI_TRIGGER}
    if lineage is not None:
        tags[LINEAGE_TAG] = lineage
    if step.partition is not None:
        tags[FORMAT_TAG] = step.partition
    return tags


def _execute(
    step: _Step, instance: dg.DagsterInstance, config_file: str | None, lineage: str | None, bar
) -> tuple[str, object, list[StageTime]]:
    """Run one job on a worker thread while this thread follows its events on the progress line."""
    # Chosen here rather than by Dagster so that this thread can follow the run's events while it executes.
    run_id = str(uuid.uuid4())
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = defs.resolve_job_def(step.job).execute_in_process(
                run_config=_run_config(config_file),
                instance=instance,
                run_id=run_id,
                tags=_tags(step, lineage),
                raise_on_error=False,
                asset_selection=list(step.assets),
                partition_key=step.partition,
            )
        except BaseException as error:  # re-raised in the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=execute, name=f"qft-{step.job}")
    follower = RunFollower(instance, run_id, bar, label=step.partition)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)
        follower.poll()
    follower.poll()
    if "error" in outcome:
        raise outcome["error"]
    return run_id, outcome["result"], follower.stages


def _failures(result) -> list[str]:
    failures = [
        f"{event.step_key}: {event.event_specific_data.error.message.strip()}"
        for event in result.all_events
        if event.is_step_failure
    ]
    failures += [
        f"check {event.event_specific_data.asset_check_key.name} failed"
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed
    ]
    return failures


def materialize_graph(
    config_file: str | None = None, selection: str | None = None, console: TextIO | None = None
) -> RunOutcome:
    """Run the graph (or the selection) job by job; the progress line goes to `console` (stderr by default)."""
    instance = project_instance()
    steps = _plan(config_file, selection)
    outcome = RunOutcome()
    with progress_bar(sum(len(step.assets) for step in steps), console or sys.stderr) as bar:
        for step in steps:
            lineage = outcome.run_ids[0] if outcome.run_ids else None
            run_id, result, stages = _execute(step, instance, config_file, lineage, bar)
            outcome.run_ids.append(run_id)
            outcome.stages += stages
            for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION}):
                materialization = record.dagster_event.event_specific_data.materialization
                name = materialization.asset_key.to_user_string()
                if materialization.partition:
                    name = f"{name}[{materialization.partition}]"
                outcome.metadata[name] = {key: entry.value for key, entry in materialization.metadata.items()}
                if "path" in materialization.metadata:
                    outcome.artifacts[name] = str(materialization.metadata["path"].value)
            failures = _failures(result)
            outcome.failures += [f"{step.partition}: {failure}" if step.partition else failure for failure in failures]
            if not result.success or failures:
                outcome.success = False
                if step.partition is None:
                    break  # a failed main job leaves nothing for the packaging jobs to build on
    return outcome
