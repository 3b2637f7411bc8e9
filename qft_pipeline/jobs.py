"""The jobs of qft. Dagster runs one partitions definition per job, so the graph is three jobs run in order:
everything up to the merged model, then each quantization format (a partition), then the deployment package."""

import dagster as dg

MAIN_JOB = "qft_main"
QUANTIZE_JOB = "qft_quantize"
DEPLOY_JOB = "qft_deploy"

# Run tags that tie the three jobs of one pass over the graph together in the UI's run list.
TRIGGER_TAG = "qft/trigger"  # what started the pass: schedule, corpus_changed, cli, manual
LINEAGE_TAG = "qft/lineage"  # the qft_main run whose merged model a quantize or deploy run packages
FORMAT_TAG = "qft/format"  # the quantization format of a qft_quantize run
LAUNCHER_TAG = "qft/launcher"  # host:pid:start time of the `qft run` process executing the run in-process
CLI_TRIGGER = "cli"  # `qft run`, which runs all three jobs in-process itself

_PACKAGES = dg.AssetSelection.assets("quantized_package", "deployment_package")

main_job = dg.define_asset_job(
    MAIN_JOB, selection=dg.AssetSelection.all() - _PACKAGES, description="Data, training, evaluation, merge."
)
quantize_job = dg.define_asset_job(
    QUANTIZE_JOB, selection=dg.AssetSelection.assets("quantized_package"), description="One quantization format."
)
deploy_job = dg.define_asset_job(
    DEPLOY_JOB, selection=dg.AssetSelection.assets("deployment_package"), description="The deployment package."
)
