"""Automated runs reach the deployment package: a successful `qft_main` run is followed by one `qft_quantize` run per
configured format and, once all of those have finished, by one `qft_deploy` run, each tagged with its lineage."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from qft_pipeline.artifacts import materialized_in
from qft_pipeline.jobs import CHAIN, CLI_TRIGGER, FORMAT_TAG, LINEAGE_TAG, TRIGGER_TAG, following
from qft_pipeline.resources import QftSettings

# The chain of jobs.py, stage by stage: the first sensor carries a successful main run on, the second waits for
# the per-format runs and starts the last stage.
_MAIN, _PER_FORMAT, _LAST = CHAIN

QUANTIZE_SENSOR = "qft_quantize_after_main"
DEPLOY_SENSOR = "qft_deploy_after_quantize"
CHAIN_TAG = "qft/chained_by"
# Every format the lineage asked for: the deploy sensor waits until each has a finished run.
FORMATS_TAG = "qft/formats"
QUANTIZED_TAG = "qft/quantized"
NOT_QUANTIZED_TAG = "qft/not_quantized"
MERGED_MODEL = dg.AssetKey("merged_model")
# The deploy sensor looks at the lineages of this many of the latest chained quantize runs.
RECENT_QUANTIZE_RUNS = 60
_OWN_TAGS = {FORMAT_TAG, FORMATS_TAG, CHAIN_TAG}


def qft_run_config(run: dg.DagsterRun) -> dict:
    """The run config of `run`'s qft resource, for a chained run to read the same configuration."""
    qft = run.run_config.get("resources", {}).get("qft")
    return {"resources": {"qft": qft}} if qft else {}


def requested_formats(run: dg.DagsterRun, qft: QftSettings) -> list[str]:
    """`quant.formats` as `run` saw it: its run config's qft settings, else the Definitions' resource."""
    run_config = qft_run_config(run)
    settings = QftSettings(**run_config["resources"]["qft"].get("config", {})) if run_config else qft
    return list(settings.load().quant.formats)


def lineage_tags(main_run: dg.DagsterRun) -> dict[str, str]:
    """The main run's qft tags (trigger, corpus hash …) plus the lineage: its run id."""
    inherited = {key: value for key, value in main_run.tags.items() if key.startswith("qft/")}
    return {**inherited, TRIGGER_TAG: main_run.tags.get(TRIGGER_TAG, "manual"), LINEAGE_TAG: main_run.run_id}


def deploy_request(tags: dict[str, str], run_config: dict, outcome: dict[str, dg.DagsterRunStatus]) -> dg.RunRequest:
    """The one deploy run of a lineage; `outcome` is each requested format's final run status."""
    lineage = {key: value for key, value in tags.items() if key.startswith("qft/") and key not in _OWN_TAGS}
    results = {
        QUANTIZED_TAG: [fmt for fmt, status in outcome.items() if status == dg.DagsterRunStatus.SUCCESS],
        NOT_QUANTIZED_TAG: [fmt for fmt, status in outcome.items() if status != dg.DagsterRunStatus.SUCCESS],
    }
    return dg.RunRequest(
        run_key=f"{tags[LINEAGE_TAG]}:deploy",
        job_name=_LAST.name,
        run_config=run_config,
        tags={**lineage, **{key: ",".join(formats) for key, formats in results.items() if formats}},
    )


def quantize_outcome(runs: Sequence[dg.DagsterRun]) -> dict[str, dg.DagsterRunStatus] | None:
    """Each requested format's status in its latest run (`runs` newest first, one lineage), or None while a run
    has not finished or a format has no run yet."""
    if not runs or any(not run.is_finished for run in runs):
        return None
    latest: dict[str, dg.DagsterRunStatus] = {}
    for run in runs:
        latest.setdefault(run.tags[FORMAT_TAG], run.status)
    expected = runs[0].tags[FORMATS_TAG].split(",")
    if not set(expected) <= latest.keys():
        return None
    return {fmt: latest[fmt] for fmt in expected}


def quantize_after_main_sensor(
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.RunStatusSensorDefinition:
    """When a `qft_main` run that built a merged model succeeds, request one `qft_quantize` run per format of
    `quant.formats` (run key `<main run id>:<format>`), or the deploy run at once when no format is configured.

    `qft run` packages its own merged model: its runs execute in-process, so Dagster does not show them to this
    sensor, and their `cli` trigger is skipped should one be shown.
    """

    @dg.run_status_sensor(
        name=QUANTIZE_SENSOR,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[_MAIN.job],
        request_jobs=[stage.job for stage in CHAIN[1:]],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="After a successful qft_main run: quantize its merged model in every configured format.",
    )
    def quantize_after_main(context: dg.RunStatusSensorContext, qft: QftSettings):
        run = context.dagster_run
        if run.tags.get(TRIGGER_TAG) == CLI_TRIGGER:
            return dg.SkipReason(f"run {run.run_id} was started by `qft run`, which packages its merged model itself")
        if not materialized_in(context.instance, run.run_id, MERGED_MODEL):
            return dg.SkipReason(f"run {run.run_id} built no merged model: nothing to quantize")
        formats = requested_formats(run, qft)
        tags = {**lineage_tags(run), CHAIN_TAG: QUANTIZE_SENSOR, FORMATS_TAG: ",".join(formats)}
        after = following(_MAIN.name, formats)
        if after is _LAST:
            return [deploy_request(tags, qft_run_config(run), {})]
        return [
            dg.RunRequest(
                run_key=f"{run.run_id}:{fmt}",
                job_name=after.name,
                partition_key=fmt,
                run_config=qft_run_config(run),
                tags={**tags, FORMAT_TAG: fmt},
            )
            for fmt in after.partitions(formats)
        ]

    return quantize_after_main


def deploy_after_quantize_sensor(
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """Request a lineage's `qft_deploy` run (run key `<main run id>:deploy`) once every format requested by
    `qft_quantize_after_main` has a finished run, whatever its outcome.

    The deployment package needs the merged model, the evaluation report and the corpus manifest, not the quantized
    variants: a format that failed (gptq without its backend, a failed degradation check) or was cancelled is named
    in the deploy run's `qft/not_quantized` tag and in the package's warnings, and the package is built anyway.
    """

    @dg.sensor(
        name=DEPLOY_SENSOR,
        job=_LAST.job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Build the deployment package once a lineage's quantize runs have all finished.",
    )
    def deploy_after_quantize(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        instance = context.instance
        chained = instance.get_runs(
            dg.RunsFilter(job_name=_PER_FORMAT.name, tags={CHAIN_TAG: QUANTIZE_SENSOR}), limit=RECENT_QUANTIZE_RUNS
        )
        requests, waiting = [], []
        for lineage in dict.fromkeys(run.tags[LINEAGE_TAG] for run in chained):
            if instance.get_runs(dg.RunsFilter(job_name=_LAST.name, tags={LINEAGE_TAG: lineage}), limit=1):
                continue
            runs = instance.get_runs(dg.RunsFilter(job_name=_PER_FORMAT.name, tags={LINEAGE_TAG: lineage}))
            outcome = quantize_outcome(runs)
            if outcome is None:
                waiting.append(lineage)
            else:
                requests.append(deploy_request(dict(runs[0].tags), qft_run_config(runs[0]), outcome))
        if requests:
            return dg.SensorResult(run_requests=requests)
        if waiting:
            return dg.SkipReason(f"quantize runs of lineage {', '.join(waiting)} have not all finished")
        return dg.SkipReason("no lineage is waiting for its deployment package")

    return deploy_after_quantize
