"""Materialize the asset graph in-process on the project instance, with a live progress line over the assets.

The whole graph is three jobs in order (`jobs.CHAIN`): the main job, one run per configured quantization
format, then the deployment package. A selection runs the matching assets of each of those jobs, in the same
order, so an interrupted quantize or deploy can be redone alone.
"""

from __future__ import annotations

import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import dagster as dg

from qft_core.config import load_config
from qft_pipeline.abandoned_runs import fail_abandoned_runs, launcher_tag
from qft_pipeline.definitions import defs
from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import CHAIN, CLI_TRIGGER, FORMAT_TAG, LINEAGE_TAG, MAIN_JOB, TRIGGER_TAG
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
    abandoned: list[str] = field(default_factory=list)  # runs of killed `qft run`s, marked failed before this one
    stages: list[StageTime] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run_ids[0]


@dataclass(frozen=True)
class _Step:
    job: str
    assets: frozenset
    partition: str | None = None


def _run_config(config_file: str | None, device: str | None) -> dict:
    settings = {"config_file": config_file} if config_file else {}
    if device is not None:
        settings["model"] = {"device": device}
    resources = {"qft": {"config": settings}} if settings else {}
    return {**_QUIET_LOGS, "resources": resources}


class SelectionError(ValueError):
    """A `--select` that does not parse or matches no asset: nothing is run."""


def _selected_assets(selection: str) -> frozenset:
    graph = defs.resolve_asset_graph()
    try:
        keys = dg.AssetSelection.from_string(selection).resolve(graph)
    except dg.DagsterError as error:
        # Dagster's messages span lines (a list of hints); the first names what is wrong.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SelectionError(f"--select {selection!r} is not a valid asset selection: {reason}") from None
    if not keys:
        raise SelectionError(
            f"--select {selection!r} matches no asset; nothing was run (e.g. 'term_balanced_splits', "
            "'+key:lora_checkpoint', 'group:packaging')"
        )
    return frozenset(keys)


def plan_steps(config_file: str | None, selection: str | None) -> list[_Step]:
    """The job runs of one pass over the graph, in the order of `CHAIN`: each stage's assets, once per
    quantization format for the per-format stage — only those a selection names, when given (an empty string is
    a selection too)."""
    stages = {stage.name: frozenset(defs.resolve_job_def(stage.name).asset_layer.selected_asset_keys) for stage in CHAIN}
    selected = frozenset().union(*stages.values()) if selection is None else _selected_assets(selection)
    formats = load_config(config_file).quant.formats
    return [
        _Step(stage.name, selected & stages[stage.name], partition)
        for stage in CHAIN
        if selected & stages[stage.name]
        for partition in stage.partitions(formats)
    ]


def _tags(step: _Step, lineage: str | None) -> dict[str, str]:
    """The trigger and this process on every run; the packaging runs also name the main run they package, as the
    sensors' runs do."""
    tags = {TRIGGER_TAG: CLI_TRIGGER, **launcher_tag()}
    if lineage is not None:
        tags[LINEAGE_TAG] = lineage
    if step.partition is not None:
        tags[FORMAT_TAG] = step.partition
    return tags


def _execute(
    step: _Step, instance: dg.DagsterInstance, run_config: dict, lineage: str | None, bar
) -> tuple[str, object, list[StageTime]]:
    """Run one job on a worker thread while this thread follows its events on the progress line."""
    # Chosen here rather than by Dagster so that this thread can follow the run's events while it executes.
    run_id = str(uuid.uuid4())
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = defs.resolve_job_def(step.job).execute_in_process(
                run_config=run_config,
                instance=instance,
                run_id=run_id,
                tags=_tags(step, lineage),
                raise_on_error=False,
                asset_selection=list(step.assets),
                partition_key=step.partition,
            )
        except BaseException as error:  # re-raised in the caller's thread below
            outcome["error"] = error

    # A daemon: on Ctrl-C this thread's KeyboardInterrupt ends `qft run` at once. A non-daemon worker kept the
    # job going (Dagster sees SIGINT only on the main thread) and the interpreter waited for it at exit. The run
    # left STARTED is marked failed by the next `qft run` (fail_abandoned_runs), whose training resumes from its
    # newest checkpoint; the trainer dies with this process (its launcher pid).
    worker = threading.Thread(target=execute, name=f"qft-{step.job}", daemon=True)
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
    config_file: str | None = None,
    selection: str | None = None,
    device: str | None = None,
    console: TextIO | None = None,
) -> RunOutcome:
    """Run the graph (or `selection`) job by job with the YAML config `config_file`, `device` replacing its
    `model.device`; the progress line goes to `console` (stderr by default)."""
    steps = plan_steps(config_file, selection)  # before the instance opens: a bad selection leaves no trace
    instance = project_instance()
    run_config = _run_config(config_file, device)
    # First, so that the training of a killed run counts as failed and can be resumed (resumable_run_folder).
    outcome = RunOutcome(abandoned=fail_abandoned_runs(instance))
    lineage = None  # the main run of this pass, which its packaging runs name; none when the pass has no main step
    with progress_bar(sum(len(step.assets) for step in steps), console or sys.stderr) as bar:
        for step in steps:
            run_id, result, stages = _execute(step, instance, run_config, lineage, bar)
            outcome.run_ids.append(run_id)
            outcome.stages += stages
            if step.job == MAIN_JOB:
                lineage = run_id
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
