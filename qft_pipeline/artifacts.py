"""Where assets keep their files: one folder per run and asset (or, for resumable work, per chain of failed
attempts); model folders, which Dagster does not carry, are found again through materialization metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from qft_core.config import QftConfig


# How many of the newest failed runs a new run looks through for an interrupted folder to resume.
_RESUME_LOOKBACK_RUNS = 20


def run_folder(context: dg.AssetExecutionContext, config: QftConfig) -> Path:
    """A fresh folder for this run's copy of this asset, so concurrent runs never share files."""
    return asset_folder(config, context.run.run_id, context.asset_key)


def resumable_run_folder(
    context: dg.AssetExecutionContext, config: QftConfig, resumable: Callable[[Path], bool] | None = None
) -> Path:
    """This asset's folder, shared with the failed attempts this one repeats, so their work (checkpoints) is
    picked up: a retry within the run uses the run's folder, and a run re-executed from a failure uses the
    folder of the run it re-executes, following parent runs back for as long as the asset failed in them. A
    re-execution of a run where the asset succeeded starts afresh in its own folder.

    A new run (no parent) takes the folder of the newest failed or cancelled run of its job (a killed `qft run`
    included, once marked failed) where the asset was not materialized and that `resumable` accepts."""
    instance, key = context.instance, context.asset_key
    this_run = run = context.run
    while run.parent_run_id and not materialized_in(instance, run.parent_run_id, key):
        parent = instance.get_run_by_id(run.parent_run_id)
        if parent is None:
            break
        run = parent
    own = asset_folder_path(config, run.run_id, key)
    # An earlier attempt of this run that trained in its own folder is resumed there, whatever else has failed since.
    if run is this_run and resumable is not None and not (own.is_dir() and resumable(own)):
        interrupted = _interrupted_folder(instance, config, this_run, key, resumable)
        if interrupted is not None:
            return interrupted
    return asset_folder(config, run.run_id, key)


def _interrupted_folder(
    instance: dg.DagsterInstance,
    config: QftConfig,
    this_run: dg.DagsterRun,
    key: dg.AssetKey,
    resumable: Callable[[Path], bool],
) -> Path | None:
    stopped = dg.RunsFilter(
        job_name=this_run.job_name, statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    )
    for run in instance.get_runs(stopped, limit=_RESUME_LOOKBACK_RUNS):
        folder = asset_folder_path(config, run.run_id, key)
        if folder.is_dir() and not materialized_in(instance, run.run_id, key) and resumable(folder):
            return folder
    return None


def asset_folder_path(config: QftConfig, run_id: str, key: dg.AssetKey) -> Path:
    """Where run `run_id` keeps the files of asset `key`."""
    return config.paths.resolve(config.paths.artifacts_dir) / "runs" / run_id / key.to_user_string()


def asset_folder(config: QftConfig, run_id: str, key: dg.AssetKey) -> Path:
    """`asset_folder_path`, created."""
    folder = asset_folder_path(config, run_id, key)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def materialized_in(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> bool:
    """Whether run `run_id` materialized `key`."""
    return any(
        entry.asset_materialization and entry.asset_materialization.asset_key == key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    )


def upstream_path(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, asset: str, entry: str = "path"
) -> Path:
    """The `path` (or another path `entry`) an upstream asset that Dagster does not carry (a model folder) recorded:
    see `source_materialization`. A check may look again at data its blocking check stopped."""
    refuse = not isinstance(context, dg.AssetCheckExecutionContext)
    event = source_materialization(context.instance, context.run.run_id, dg.AssetKey(asset), refuse_stopped=refuse)
    return Path(event.asset_materialization.metadata[entry].value)


def source_materialization(
    instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey, refuse_stopped: bool = True
) -> dg.EventLogEntry:
    """The materialization of `key` that run `run_id` builds on: its own if there is one, else the latest.

    With `refuse_stopped`, the latest materialization of another run is refused when a blocking check of that
    asset failed in that run: a later run that selects only downstream assets must not go on with data that its
    check stopped.
    """
    this_run = [
        entry
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization and entry.asset_materialization.asset_key == key
    ]
    event = this_run[-1] if this_run else instance.get_latest_materialization_event(key)
    asset = key.to_user_string()
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"asset '{asset}' has never been materialized: materialize it first")
    if not this_run and refuse_stopped:
        failed = [
            evaluation.check_name
            for evaluation in check_evaluations(instance, event.run_id, key)
            if evaluation.blocking and not evaluation.passed
        ]
        if failed:
            raise dg.Failure(
                f"asset '{asset}' was last materialized in run {event.run_id}, where its blocking check "
                f"{', '.join(sorted(failed))} failed: fix the cause and materialize '{asset}' again"
            )
    return event


def check_evaluations(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> list[dg.AssetCheckEvaluation]:
    """What the checks of `key` found in run `run_id`, in the order they ran."""
    evaluations = [
        record.dagster_event.event_specific_data
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    return [evaluation for evaluation in evaluations if evaluation.asset_key == key]
