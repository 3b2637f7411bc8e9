"""The jobs of qft: one job over the whole asset graph, run by `qft run`, the retraining schedule and the corpus sensor."""

import dagster as dg

MAIN_JOB = "qft_main"

main_job = dg.define_asset_job(MAIN_JOB, selection=dg.AssetSelection.all(), description="The whole qft graph.")
