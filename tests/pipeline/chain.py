"""Stand-ins for qft's three jobs, and ticks of the packaging-chain sensors, for tests that follow runs through the
chain on a real Dagster instance without training anything: the sensors only read run records and events."""

import dagster as dg

from qft_pipeline.automation import QUANTIZE_SENSOR
from qft_pipeline.definitions import defs
from qft_pipeline.jobs import DEPLOY_JOB, FORMAT_TAG, MAIN_JOB, QUANTIZE_JOB
from qft_pipeline.resources import QftSettings


@dg.asset(name="term_balanced_splits")
def splits_stand_in() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"path": "splits"})


@dg.asset(name="merged_model", deps=[splits_stand_in])
def merged_stand_in(qft: QftSettings) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"path": "merged", "base_model": qft.load().model.name})


@dg.op
def quantize_stand_in(context) -> None:
    if context.run.tags[FORMAT_TAG] == "gptq":
        raise dg.Failure("gptq package not built on this machine: no GPTQ backend")


@dg.op
def failing_step() -> None:
    raise dg.Failure("stand-in failure")


@dg.job(name=QUANTIZE_JOB)
def quantize_job_stand_in() -> None:
    quantize_stand_in()


@dg.job(name=DEPLOY_JOB)
def deploy_job_stand_in() -> None:
    failing_step()


@dg.job(name=MAIN_JOB)
def failing_main_job_stand_in() -> None:
    failing_step()


main_job_stand_in = dg.Definitions(
    assets=[splits_stand_in, merged_stand_in], jobs=[dg.define_asset_job(MAIN_JOB)], resources={"qft": QftSettings()}
).resolve_job_def(MAIN_JOB)


def tick(instance: dg.DagsterInstance, sensor_name: str, cursor: str | None = None):
    """One evaluation of a sensor of the project's Definitions against `instance`."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"qft": QftSettings()}, definitions=defs
    )
    return defs.resolve_sensor_def(sensor_name).evaluate_tick(context)


def watching(instance: dg.DagsterInstance) -> str:
    """The quantize sensor's first tick only notes where the run history ends; its cursor is returned."""
    first = tick(instance, QUANTIZE_SENSOR)
    assert first.run_requests == [] and first.cursor is not None
    return first.cursor


def quantize_requests(instance: dg.DagsterInstance, **main_run) -> tuple[str, list[dg.RunRequest]]:
    """Run the stand-in qft_main (keyword arguments of `execute_in_process`), then tick the quantize sensor:
    the main run's id and the requests."""
    cursor = watching(instance)
    run_id = main_job_stand_in.execute_in_process(instance=instance, **main_run).run_id
    return run_id, tick(instance, QUANTIZE_SENSOR, cursor).run_requests
