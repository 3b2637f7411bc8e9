"""Evaluation assets: the expert gold set, and the report comparing the base and the fine-tuned model."""

import dagster as dg

from qft_core.device import resolve_device
from qft_core.evaluate.expert_store import default_db_path, load_gold_set
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.report import regression_check
from qft_core.evaluate.run import evaluate_models
from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.artifacts import run_folder, upstream_path
from qft_pipeline.assets.data import term_balanced_splits
from qft_pipeline.assets.training import lora_checkpoint
from qft_pipeline.metadata import image, markdown_table, stand_in_metadata
from qft_pipeline.resources import QftSettings

GROUP = "evaluation"


@dg.asset(group_name=GROUP, kinds={"sqlite"})
def expert_gold_set(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """The latest version of the experts' gold set (empty until experts have scored answers: `qft experts`)."""
    config = qft.load()
    database = default_db_path(config.paths)
    items = load_gold_set(database) if database.exists() else []
    path = run_folder(context, config) / "gold_set.jsonl"
    path.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(path)), "items": len(items), "database": str(database)}
    )


@dg.asset(
    group_name=GROUP,
    deps=[lora_checkpoint, term_balanced_splits, expert_gold_set],
    kinds={"pytorch"},
    check_specs=[dg.AssetCheckSpec("fine_tuned_not_below_base", asset="evaluation_report", blocking=True)],
)
def evaluation_report(context: dg.AssetExecutionContext, qft: QftSettings):
    """Base vs fine-tuned on the test split and the gold set: ROUGE-L, terms, key points, thinking, language."""
    config = qft.load()
    test = read_parquet(upstream_path(context, "term_balanced_splits") / "test.parquet", ThinkingExample)
    gold_path = upstream_path(context, "expert_gold_set")
    gold = [GoldItem.model_validate_json(line) for line in gold_path.read_text(encoding="utf-8").splitlines() if line]
    report = evaluate_models(
        config,
        test,
        upstream_path(context, "lora_checkpoint"),
        run_folder(context, config),
        gold_items=gold,
        progress=lambda done, total, stage: context.log.debug(f"{done}/{total} {stage}"),
    )
    regressions = regression_check(report, config.eval.regression_tolerance)
    charts = {f"chart_{chart.stem}": image(chart, chart.stem) for chart in report.charts}
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(report.markdown)),
            "device": resolve_device(config.model.device),
            "report": dg.MetadataValue.md(report.markdown.read_text(encoding="utf-8")),
            "verdict": report.data["verdict"]["message"],
            **stand_in_metadata(config.model.name),
            "headline": markdown_table([{"metric": key, "value": value} for key, value in report.headline.items()]),
            **charts,
        }
    )
    yield dg.AssetCheckResult(
        check_name="fine_tuned_not_below_base",
        passed=not regressions,
        metadata={"regressions": dg.MetadataValue.json(regressions), "tolerance": config.eval.regression_tolerance},
    )
