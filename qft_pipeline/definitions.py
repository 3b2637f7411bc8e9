"""The single entry point Dagster loads (workspace.yaml): every asset, check, job and resource of qft."""

from __future__ import annotations

import dagster as dg

from qft_pipeline import checks
from qft_pipeline.assets import data
from qft_pipeline.resources import QftSettings

MAIN_JOB = "qft_main"

main_job = dg.define_asset_job(MAIN_JOB, selection=dg.AssetSelection.all(), description="The whole qft graph.")

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[main_job],
    resources={"qft": QftSettings()},
)
