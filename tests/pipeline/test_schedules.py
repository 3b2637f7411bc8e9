from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._utils.schedules import schedule_execution_time_iterator

from qft_pipeline.definitions import defs
from qft_pipeline.jobs import LINEAGE_TAG, MAIN_JOB, QUANTIZE_JOB, TRIGGER_TAG
from qft_pipeline.resources import QftSettings
from qft_pipeline.schedules import RETRAIN_CRON_ENV, RETRAINING_SCHEDULE, ScheduleConfigError, retraining_schedule
from tests.pipeline.chain import quantize_requests


@pytest.fixture(autouse=True)
def no_cron_from_env(monkeypatch):
    monkeypatch.delenv(RETRAIN_CRON_ENV, raising=False)


def _with_schedule(schedule: dg.ScheduleDefinition) -> dg.Definitions:
    """The project's graph, job and resources with only this schedule (whether or not definitions.py wires one)."""
    return dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=defs.resources, schedules=[schedule]
    )


def _ticks(schedule: dg.ScheduleDefinition, start: datetime, count: int) -> list[datetime]:
    ticks = schedule_execution_time_iterator(start.timestamp(), schedule.cron_schedule, schedule.execution_timezone)
    return [next(ticks) for _ in range(count)]


def test_default_schedule_retrains_every_monday_at_three_utc():
    schedule = _with_schedule(retraining_schedule()).resolve_schedule_def(RETRAINING_SCHEDULE)
    assert schedule.job_name == MAIN_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    # 2026-11-26 is a Thursday: the next ticks are the following Mondays at 03:00.
    ticks = _ticks(schedule, datetime(2026, 11, 26, 12, tzinfo=UTC), 3)
    assert [(tick.year, tick.month, tick.day, tick.hour, tick.minute) for tick in ticks] == [
        (2026, 11, 30, 3, 0),
        (2026, 12, 7, 3, 0),
        (2026, 12, 14, 3, 0),
    ]


def test_tick_requests_a_whole_graph_run_with_valid_config():
    definitions = _with_schedule(retraining_schedule())
    schedule = definitions.resolve_schedule_def(RETRAINING_SCHEDULE)
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 3, tzinfo=UTC))
    tick = schedule.evaluate_tick(context)
    assert tick.skip_message is None
    (request,) = tick.run_requests
    assert request.tags["qft/trigger"] == "schedule"
    assert dg.validate_run_config(definitions.resolve_job_def(MAIN_JOB), request.run_config) is not None


def test_config_file_travels_in_the_run_config(tmp_path):
    config_file = tmp_path / "qft.yaml"
    config_file.write_text("training:\n  epochs: 3\n", encoding="utf-8")
    definitions = _with_schedule(retraining_schedule(config_file=str(config_file)))
    tick = definitions.resolve_schedule_def(RETRAINING_SCHEDULE).evaluate_tick(dg.build_schedule_context())
    (request,) = tick.run_requests
    validated = dg.validate_run_config(definitions.resolve_job_def(MAIN_JOB), request.run_config)
    resource_config = validated["resources"]["qft"]["config"]
    assert resource_config["config_file"] == str(config_file)
    assert QftSettings(config_file=resource_config["config_file"]).load().training.epochs == 3.0


def test_scheduled_run_is_quantized_under_the_schedule_trigger_and_config(tmp_path):
    config_file = tmp_path / "qft.yaml"
    config_file.write_text("quant:\n  formats: [int8, int4]\n", encoding="utf-8")
    definitions = _with_schedule(retraining_schedule(config_file=str(config_file)))
    schedule = definitions.resolve_schedule_def(RETRAINING_SCHEDULE)
    (scheduled,) = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    with dg.DagsterInstance.ephemeral() as instance:
        main_run_id, requests = quantize_requests(instance, tags=scheduled.tags, run_config=scheduled.run_config)
    assert [(request.job_name, request.partition_key) for request in requests] == [
        (QUANTIZE_JOB, "int8"),
        (QUANTIZE_JOB, "int4"),
    ]
    lineages = {(request.tags[TRIGGER_TAG], request.tags[LINEAGE_TAG]) for request in requests}
    assert lineages == {("schedule", main_run_id)}
    assert all(request.run_config == scheduled.run_config for request in requests)


def test_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV, "30 1 * * *")
    schedule = retraining_schedule()
    assert schedule.cron_schedule == "30 1 * * *"
    assert _ticks(schedule, datetime(2026, 11, 26, 12, tzinfo=UTC), 2) == [
        datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
        datetime(2026, 11, 28, 1, 30, tzinfo=UTC),
    ]


def test_cron_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV, "30 1 * * *")
    assert retraining_schedule(cron="0 4 1 * *").cron_schedule == "0 4 1 * *"


def test_invalid_cron_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV, "every monday")
    with pytest.raises(ScheduleConfigError, match=r"\$QFT_RETRAIN_CRON: 'every monday'"):
        retraining_schedule()
