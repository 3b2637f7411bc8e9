"""Blocking asset checks: a failing one stops everything downstream of its asset. Each receives the asset's value
from the IO manager."""

import dagster as dg

from qft_core.data.parse import ParseResult
from qft_core.data.split import SplitResult, find_leaks, missing_categories
from qft_core.evaluate.report import EvaluationReport, regression_check
from qft_pipeline.assets.data import parsed_thinking_examples, term_balanced_splits
from qft_pipeline.assets.evaluation import evaluation_report
from qft_pipeline.resources import QftSettings


@dg.asset_check(asset=parsed_thinking_examples, blocking=True)
def quarantine_ratio_under_threshold(qft: QftSettings, parsed_thinking_examples: ParseResult) -> dg.AssetCheckResult:
    """Too many quarantined pairs means the corpus (or the parser) is broken: stop before training on it."""
    limit = qft.load().data.max_quarantine_ratio
    parsed = len(parsed_thinking_examples.examples)
    ratio = len(parsed_thinking_examples.quarantined) / max(parsed_thinking_examples.pairs_found, 1)
    return dg.AssetCheckResult(
        passed=parsed > 0 and ratio <= limit,
        metadata={"quarantine_ratio": ratio, "threshold": limit, "parsed": parsed},
    )


@dg.asset_check(asset=term_balanced_splits, blocking=True)
def no_leak_across_splits(qft: QftSettings, term_balanced_splits: SplitResult) -> dg.AssetCheckResult:
    """No example id, and no near-duplicate question, may sit in two splits."""
    leaks = find_leaks(term_balanced_splits.splits(), qft.load().split)
    return dg.AssetCheckResult(
        passed=not leaks,
        metadata={"leaks": len(leaks), "examples": dg.MetadataValue.json([list(pair) for pair in leaks[:20]])},
    )


@dg.asset_check(asset=term_balanced_splits, blocking=True)
def every_category_in_every_split(term_balanced_splits: SplitResult) -> dg.AssetCheckResult:
    """A category absent from validation or test cannot be measured: fail rather than report a blind score."""
    missing = missing_categories(term_balanced_splits.splits())
    return dg.AssetCheckResult(passed=not missing, metadata={"missing": dg.MetadataValue.json(missing)})


@dg.asset_check(asset=evaluation_report, blocking=True)
def fine_tuned_not_below_base(qft: QftSettings, evaluation_report: EvaluationReport) -> dg.AssetCheckResult:
    """A fine-tuned model worse than its base on a main metric (beyond eval.regression_tolerance) must not ship."""
    tolerance = qft.load().eval.regression_tolerance
    regressions = regression_check(evaluation_report, tolerance)
    return dg.AssetCheckResult(
        passed=not regressions,
        metadata={"regressions": dg.MetadataValue.json(regressions), "tolerance": tolerance},
    )
