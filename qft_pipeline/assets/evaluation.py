"""Evaluation assets: the expert gold set, and the report comparing the base and the fine-tuned model (its
regression check is in checks.py)."""

import dagster as dg

from qft_core.data.split import SplitResult
from qft_core.device import resolve_device
from qft_core.evaluate.expert_store import default_db_path, load_gold_set
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.report import EvaluationReport
from qft_core.evaluate.run import evaluate_models
from qft_pipeline.artifacts import run_folder, upstream_path
from qft_pipeline.assets.training import lora_checkpoint
from qft_pipeline.metadata import image, markdown_table, stand_in_metadata
from qft_pipeline.resources import QftSettings

GROUP = "evaluation"


@dg.asset(group_name=GROUP, kinds={"sqlite"})
def expert_gold_set(qft: QftSettings) -> dg.Output[list[GoldItem]]:
    """The latest version of the experts' gold set (empty until experts have scored answers: `qft experts`)."""
    database = default_db_path(qft.load().paths)
    items = load_gold_set(database) if database.exists() else []
    return dg.Output(items, metadata={"items": len(items), "database": str(database)})


@dg.asset(group_name=GROUP, deps=[lora_checkpoint], kinds={"pytorch"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    qft: QftSettings,
    term_balanced_splits: SplitResult,
    expert_gold_set: list[GoldItem],
) -> dg.Output[EvaluationReport]:
    """Base vs fine-tuned on the test split and the gold set: ROUGE-L, terms, key points, thinking, language."""
    config = qft.load()
    report = evaluate_models(
        config,
        term_balanced_splits.test,
        upstream_path(context, "lora_checkpoint"),
        run_folder(context, config),
        gold_items=expert_gold_set,
        progress=lambda done, total, stage: context.log.debug(f"{done}/{total} {stage}"),
    )
    charts = {f"chart_{chart.stem}": image(chart, chart.stem) for chart in report.charts}
    return dg.Output(
        report,
        metadata={
            "device": resolve_device(config.model.device),
            "report": dg.MetadataValue.md(report.markdown.read_text(encoding="utf-8")),
            "verdict": report.data["verdict"]["message"],
            **stand_in_metadata(config.model.name),
            "headline": markdown_table([{"metric": key, "value": value} for key, value in report.headline.items()]),
            **charts,
        },
    )
