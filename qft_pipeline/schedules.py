"""Periodic retraining: the whole graph on a cron schedule, weekly unless QFT_RETRAIN_CRON or the caller says otherwise.

The schedule starts `qft_main`; the packaging chain (automation.py) then quantizes and packages what it merged."""

from __future__ import annotations

import os

import dagster as dg

from qft_pipeline.jobs import MAIN_JOB, TRIGGER_TAG

DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Monday 03:00, when nobody waits for the GPUs
RETRAIN_CRON_ENV = "QFT_RETRAIN_CRON"
RETRAINING_SCHEDULE = "qft_retraining"


class ScheduleConfigError(ValueError):
    """A cron expression that Dagster cannot schedule; the message says where it came from."""


def _cron_in_force(cron: str | None) -> tuple[str, str]:
    if cron:
        return cron, "the cron argument"
    from_env = os.environ.get(RETRAIN_CRON_ENV, "").strip()
    if from_env:
        return from_env, f"${RETRAIN_CRON_ENV}"
    return DEFAULT_RETRAIN_CRON, "the default"


def retraining_schedule(
    cron: str | None = None,
    config_file: str | None = None,
    timezone: str = "UTC",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """Rerun the whole graph (data → training → evaluation → merge, then quantize and package) on a cron schedule.

    The cron expression is `cron`, else $QFT_RETRAIN_CRON, else weekly (Monday 03:00). `config_file` is handed
    to each run as the qft resource's YAML file; without it runs use what the Definitions' resource holds.
    The schedule starts stopped: switch it on in the UI (Automation) and keep the daemon (`qft ui`) running.
    Each tick requests a `qft_main` run tagged `qft/trigger: schedule`; the sensors of automation.py follow it
    with the quantize runs and the deployment package, under the same tag.
    """
    expression, source = _cron_in_force(cron)
    run_config = {"resources": {"qft": {"config": {"config_file": config_file}}}} if config_file else {}
    try:
        return dg.ScheduleDefinition(
            name=RETRAINING_SCHEDULE,
            job_name=MAIN_JOB,
            cron_schedule=expression,
            execution_timezone=timezone,
            run_config=run_config,
            tags={TRIGGER_TAG: "schedule"},
            default_status=default_status,
            description="Retrain on the current corpus: the whole qft graph.",
        )
    except dg.DagsterInvalidDefinitionError as error:
        raise ScheduleConfigError(f"{source}: '{expression}' is not a cron schedule: {error}") from None
