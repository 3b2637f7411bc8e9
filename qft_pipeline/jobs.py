"""The jobs of qft. Dagster runs one partitions definition per job, so the graph is three jobs run in order:
everything up to the merged model, then each quantization format (a partition), then the deployment package."""

import dagster as dg

MAIN_JOB = "qft_main"
QUANTIZE_JOB = "qft_quantize"
DEPLOY_JOB = "qft_deploy"

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
