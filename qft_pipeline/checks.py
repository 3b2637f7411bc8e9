"""Blocking asset checks: a failing one stops everything downstream of its asset."""

import json

import dagster as dg

from qft_core.data.split import find_leaks, missing_categories
from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.artifacts import upstream_path
from qft_pipeline.assets.data import parsed_thinking_examples, term_balanced_splits
from qft_pipeline.resources import QftSettings

SPLITS = ("train", "validation", "test")


@dg.asset_check(asset=parsed_thinking_examples, blocking=True)
def quarantine_ratio_under_threshold(context: dg.AssetCheckExecutionContext, qft: QftSettings) -> dg.AssetCheckResult:
    """Too many quarantined pairs means the corpus (or the parser) is broken: stop before training on it."""
    limit = qft.load().data.max_quarantine_ratio
    report_path = upstream_path(context, "parsed_thinking_examples").parent / "quarantine.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    ratio = report["quarantined"] / max(report["pairs_found"], 1)
    return dg.AssetCheckResult(
        passed=report["parsed"] > 0 and ratio <= limit,
        metadata={"quarantine_ratio": ratio, "threshold": limit, "parsed": report["parsed"]},
    )


def _load_splits(context: dg.AssetCheckExecutionContext) -> dict[str, list[ThinkingExample]]:
    folder = upstream_path(context, "term_balanced_splits")
    return {name: read_parquet(folder / f"{name}.parquet", ThinkingExample) for name in SPLITS}


@dg.asset_check(asset=term_balanced_splits, blocking=True)
def no_leak_across_splits(context: dg.AssetCheckExecutionContext, qft: QftSettings) -> dg.AssetCheckResult:
    """No example id, and no near-duplicate question, may sit in two splits."""
    leaks = find_leaks(_load_splits(context), qft.load().split)
    return dg.AssetCheckResult(
        passed=not leaks,
        metadata={"leaks": len(leaks), "examples": dg.MetadataValue.json([list(pair) for pair in leaks[:20]])},
    )


@dg.asset_check(asset=term_balanced_splits, blocking=True)
def every_category_in_every_split(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """A category absent from validation or test cannot be measured: fail rather than report a blind score."""
    missing = missing_categories(_load_splits(context))
    return dg.AssetCheckResult(passed=not missing, metadata={"missing": dg.MetadataValue.json(missing)})
