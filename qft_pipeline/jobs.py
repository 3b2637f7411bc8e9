"""The jobs of qft and the chain they form. Dagster runs one partitions definition per job, so one pass over the
graph is three jobs in order: everything up to the merged model and its reference scores, then each quantization
format (a partition), then the deployment package. `CHAIN` is that order, written once: `qft run` (runner.py)
and the sensors that carry automated runs on (automation.py) both follow it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

_QUANTIZED = dg.AssetSelection.assets("quantized_package")
_DEPLOYED = dg.AssetSelection.assets("deployment_package")

main_job = dg.define_asset_job(
    MAIN_JOB,
    selection=dg.AssetSelection.all() - _QUANTIZED - _DEPLOYED,
    description="Data, training, evaluation, advice, merge and the merged model's reference scores.",
)
quantize_job = dg.define_asset_job(QUANTIZE_JOB, selection=_QUANTIZED, description="One quantization format.")
deploy_job = dg.define_asset_job(DEPLOY_JOB, selection=_DEPLOYED, description="The deployment package.")


@dataclass(frozen=True)
class Stage:
    """One job of a pass over the graph; a `per_format` stage runs once per format of `quant.formats`."""

    job: dg.UnresolvedAssetJobDefinition
    per_format: bool = False

    @property
    def name(self) -> str:
        return self.job.name

    def partitions(self, formats: Sequence[str]) -> list[str | None]:
        """The runs of this stage in a pass: one per format, or a single unpartitioned one."""
        return list(formats) if self.per_format else [None]


CHAIN = (Stage(main_job), Stage(quantize_job, per_format=True), Stage(deploy_job))


def following(job_name: str, formats: Sequence[str]) -> Stage | None:
    """The stage that comes after `job_name`'s in a pass with these formats: a per-format stage is passed over when
    no format is configured. None after the last."""
    index = [stage.name for stage in CHAIN].index(job_name)
    return next((stage for stage in CHAIN[index + 1 :] if stage.partitions(formats)), None)
