"""Materialize the asset graph in-process on the project instance, with a progress bar over the steps."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.utils import make_new_run_id
from tqdm import tqdm

from qft_pipeline.definitions import MAIN_JOB, defs
from qft_pipeline.instance import project_instance

_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunOutcome:
    run_id: str
    success: bool
    artifacts: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _run_config(config_file: str | None) -> dict:
    resources = {"qft": {"config": {"config_file": config_file}}} if config_file else {}
    return {**_QUIET_LOGS, "resources": resources}


def materialize_graph(config_file: str | None = None, selection: str | None = None) -> RunOutcome:
    instance = project_instance()
    job = defs.resolve_job_def(MAIN_JOB)
    run_id = make_new_run_id()
    graph = defs.resolve_asset_graph()
    assets = dg.AssetSelection.from_string(selection).resolve(graph) if selection else graph.materializable_asset_keys
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                run_config=_run_config(config_file),
                instance=instance,
                run_id=run_id,
                raise_on_error=False,
                asset_selection=list(assets),
            )
        except BaseException as error:  # re-raised in the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=execute, name="qft-run")
    worker.start()
    steps_done: set[str] = set()
    with tqdm(desc="materializing", unit="asset", total=len(assets)) as bar:
        while worker.is_alive():
            worker.join(timeout=0.5)
            for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION}):
                name = record.dagster_event.asset_key.to_user_string()
                if name not in steps_done:
                    steps_done.add(name)
                    bar.set_postfix_str(name)
                    bar.update(1)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    artifacts = {}
    for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION}):
        materialization = record.dagster_event.event_specific_data.materialization
        if "path" in materialization.metadata:
            artifacts[materialization.asset_key.to_user_string()] = str(materialization.metadata["path"].value)
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
    return RunOutcome(run_id=run_id, success=result.success and not failures, artifacts=artifacts, failures=failures)
