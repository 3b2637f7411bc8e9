"""The deployment package: the merged model (or the quantized variant export.deployed_variant names) as a
self-checking folder and archive, with the quantized variants of that model compared and its GGUF files."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from qft_core.data.corpus import CorpusManifest
from qft_core.data.split import SplitResult
from qft_core.evaluate.report import EvaluationReport
from qft_core.model.registry import resolve_model
from qft_core.package.bundle import archive_path, build_package
from qft_core.package.layout import METADATA_FILE
from qft_core.package.model_card import ModelCardInfo, adapter_lora
from qft_pipeline.artifacts import check_evaluations, run_folder, upstream_path
from qft_pipeline.assets.gguf import GGUF_MODEL, gguf_warnings, latest_gguf
from qft_pipeline.assets.packaging import DEGRADATION_CHECK, GROUP, VIOLATIONS, merged_model, quantized_package
from qft_pipeline.metadata import markdown_table, report_warnings, stand_in_metadata
from qft_pipeline.resources import QftSettings


@dg.asset(group_name=GROUP, deps=[merged_model, quantized_package, GGUF_MODEL])
def deployment_package(
    context: dg.AssetExecutionContext,
    qft: QftSettings,
    raw_thinking_documents: CorpusManifest,
    term_balanced_splits: SplitResult,
    evaluation_report: EvaluationReport,
) -> dg.MaterializeResult:
    """The merged model as a self-checking package (folder + .tar.gz): weights, tokenizer, template, model card,
    metadata and a sha256 manifest; the quantized variants of this merged model compared in the metadata.

    What a user should know before shipping it — corpus files the scan left out, formats with no variant of this
    model, variants over a degradation limit (as their degradation check found) — is logged, shown as `warnings`
    and kept in qft_metadata.json."""
    config = qft.load()
    merged_dir = upstream_path(context, "merged_model")
    corpus = raw_thinking_documents
    variants = _latest_variants(context.instance, config.quant.formats)
    rows, variant_warnings = quantized_variants(variants, merged_dir)
    model_dir = deployed_model_dir(config.export.deployed_variant, variants, merged_dir)
    gguf = latest_gguf(context.instance, merged_dir)
    warnings = [
        *(f"corpus: {warning}" for warning in corpus.warnings),
        *variant_warnings,
        *gguf_warnings(gguf, config.export.gguf_types),
    ]
    metadata = {
        "config": config.model_dump(mode="json"),
        # The LoRA this model was merged from, as trained: the planner may have shrunk the configured one.
        "lora": adapter_lora(upstream_path(context, "merged_model", "adapter_dir")),
        "data_hash": corpus.content_hash,
        "metrics": evaluation_report.headline,
        # The split sizes and who wrote the reasoning (the card marks a model's).
        "data": term_balanced_splits.data_summary(),
        "quantized_variants": rows,
        "deployed_variant": config.export.deployed_variant,
        "gguf": gguf["gguf"] if gguf else [],
        "warnings": warnings,
    }
    spec = resolve_model(config.model, config.paths)
    package_dir = build_package(
        model_dir,
        run_folder(context, config) / config.export.package_name,
        metadata=metadata,
        model_card=ModelCardInfo(model_name=config.export.package_name, base_model=spec.name),
        extra_folders={"gguf": Path(str(gguf["path"]))} if gguf else None,
    )
    shown_warnings = report_warnings(context, warnings, package_dir / METADATA_FILE)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(package_dir)),
            "archive": dg.MetadataValue.path(str(archive_path(package_dir))),
            "deployed_variant": config.export.deployed_variant,
            **stand_in_metadata(spec.name),
            "formats": markdown_table(rows or [{"variant": "none built yet"}]),
            "warnings": shown_warnings,
            "serve": dg.MetadataValue.md(f"`uv run qft serve {package_dir}`"),
        }
    )


def deployed_model_dir(variant: str, variants: Mapping[str, Mapping[str, Any] | None], merged_dir: Path) -> Path:
    """The model folder the package is built from: the merged model, or the `variant` quantized from it."""
    if variant == "unquantized":
        return merged_dir
    metadata = variants.get(variant)
    if metadata is None or metadata.get("merged_model") != str(merged_dir):
        raise dg.Failure(
            description=(
                f"export.deployed_variant is '{variant}', but no {variant} package was quantized from {merged_dir}: "
                f"materialize quantized_package[{variant}] first, or deploy 'unquantized'"
            )
        )
    return Path(str(metadata["path"]))


def _latest_variants(instance: dg.DagsterInstance, formats: list[str]) -> dict[str, Mapping[str, Any] | None]:
    """The metadata of each format's latest quantized package (None where none was ever built), with the
    violations its degradation check found in that run under `violations` (None where the check has no result)."""
    variants: dict[str, Mapping[str, Any] | None] = {}
    key = dg.AssetKey("quantized_package")
    for fmt in formats:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[fmt]), limit=1
        ).records
        if not records:
            variants[fmt] = None
            continue
        checked = [
            evaluation.metadata[VIOLATIONS].value
            for evaluation in check_evaluations(instance, records[0].run_id, key)
            if evaluation.check_name == DEGRADATION_CHECK and evaluation.partition in (fmt, None)
        ]
        metadata = {name: entry.value for name, entry in records[0].asset_materialization.metadata.items()}
        variants[fmt] = {**metadata, VIOLATIONS: checked[-1] if checked else None}
    return variants


def quantized_variants(
    variants: Mapping[str, Mapping[str, Any] | None], merged_dir: Path
) -> tuple[list[dict], list[str]]:
    """The comparison rows of the variants quantized from `merged_dir`, and a warning for each format without one,
    for each limit a listed variant's degradation check found exceeded, and for a check with no result."""
    rows, warnings = [], []
    for fmt, metadata in variants.items():
        if metadata is None or metadata.get("merged_model") != str(merged_dir):
            built = "no package was ever built" if metadata is None else "the latest package came from another model"
            warnings.append(f"{fmt}: no quantized variant of this merged model ({built}); not listed")
            continue
        rows.append(metadata["comparison"])
        violations = metadata.get(VIOLATIONS)
        if violations is None:
            warnings.append(f"{fmt}: its {DEGRADATION_CHECK} check has no result; the variant is listed unchecked")
        else:
            warnings += violations
    return rows, warnings
