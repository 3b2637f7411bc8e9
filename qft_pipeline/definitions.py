"""The single entry point Dagster loads (workspace.yaml): every asset, check, job, schedule and sensor of qft."""

import dagster as dg

from qft_pipeline import checks
from qft_pipeline.assets import data, deployment, diagnosis, evaluation, gguf, packaging, training
from qft_pipeline.automation import deploy_after_quantize_sensor, quantize_after_main_sensor
from qft_pipeline.jobs import CHAIN, MAIN_JOB
from qft_pipeline.resources import resources
from qft_pipeline.schedules import retraining_schedule
from qft_pipeline.sensors import corpus_change_sensor

__all__ = ["MAIN_JOB", "defs"]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, training, evaluation, diagnosis, packaging, gguf, deployment]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[stage.job for stage in CHAIN],
    schedules=[retraining_schedule()],
    sensors=[corpus_change_sensor(), quantize_after_main_sensor(), deploy_after_quantize_sensor()],
    resources=resources(),
)
