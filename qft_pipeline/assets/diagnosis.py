"""Diagnosis after evaluation: advice for the next training run, read off the training's findings, the plan that
ran and the evaluation's numbers — the evaluation-based rules need the report, so the advice waits for it."""

import dagster as dg

from qft_core.diagnose.advice import SettingChange, advice_markdown, advise
from qft_core.diagnose.monitor_report import MonitorReport
from qft_core.evaluate.report import EvaluationReport
from qft_core.train.plan import TrainingPlan
from qft_pipeline.artifacts import source_materialization
from qft_pipeline.assets.training import FINDINGS_METADATA, lora_checkpoint
from qft_pipeline.resources import QftSettings

GROUP = "diagnosis"


@dg.asset(group_name=GROUP, deps=[lora_checkpoint], kinds={"json"})
def training_advice(
    context: dg.AssetExecutionContext, qft: QftSettings, training_plan: TrainingPlan, evaluation_report: EvaluationReport
) -> dg.Output[list[SettingChange]]:
    """Setting changes for the next run — learning rate, length, batch, LoRA, reasoning in the loss — each with
    the numbers behind it, from the training's findings and the evaluation of its adapter."""
    checkpoint = source_materialization(context.instance, context.run.run_id, lora_checkpoint.key)
    findings = MonitorReport.model_validate(checkpoint.asset_materialization.metadata[FINDINGS_METADATA].value)
    changes = advise(findings, training_plan, qft.load(), evaluation=evaluation_report)
    return dg.Output(
        changes,
        metadata={
            "changes": len(changes),
            "settings": ", ".join(change.setting for change in changes) or "none",
            "advice": dg.MetadataValue.md(advice_markdown(changes)),
        },
    )

