"""Packaging assets: merged model → quantized packages (one partition per format) → deployment package (with the
GGUF files of assets/gguf.py)."""

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from transformers import AutoTokenizer

from qft_core.data.corpus import CorpusManifest
from qft_core.data.split import SplitResult
from qft_core.data.terms import TermDictionary
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.metrics import mean_scores
from qft_core.evaluate.misconceptions import load_misconceptions
from qft_core.evaluate.report import EvaluationReport
from qft_core.device import resolve_device
from qft_core.model.registry import ensure_model_dir, resolve_model, torch_dtype
from qft_core.package.bundle import archive_path, build_package
from qft_core.package.layout import METADATA_FILE
from qft_core.package.merge import merge_adapter, merge_tolerance
from qft_core.package.model_card import ModelCardInfo
from qft_core.package.quantize import FormatUnavailableError, QuantSettingsError, quantize
from qft_core.package.compare import (
    ModelEvaluation,
    chat_formatted_texts,
    check_degradation,
    compare_packages,
    comparison_set,
    evaluate_directory,
)
from qft_pipeline.artifacts import check_evaluations, run_folder, source_materialization, upstream_path
from qft_pipeline.assets.gguf import GGUF_MODEL, latest_gguf
from qft_pipeline.assets.training import TRAINING_POOL, lora_checkpoint
from qft_pipeline.metadata import markdown_table, report_warnings, stand_in_metadata
from qft_pipeline.resources import QftSettings

GROUP = "packaging"
QUANT_FORMATS = dg.StaticPartitionsDefinition(["int8", "int4", "gptq"])
DEGRADATION_CHECK = "degradation_within_thresholds"
VIOLATIONS = "violations"


@dg.asset(group_name=GROUP, deps=[lora_checkpoint], kinds={"safetensors"})
def merged_model(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """The LoRA adapter merged into the base weights in the model's dtype on the configured device, verified:
    merged logits equal base + adapter within the tolerance of that dtype."""
    config = qft.load()
    spec = resolve_model(config.model, config.paths)
    device = resolve_device(config.model.device)
    dtype = torch_dtype(config.model.dtype, device, ensure_model_dir(spec))
    report = merge_adapter(
        spec,
        upstream_path(context, "lora_checkpoint"),
        run_folder(context, config) / "merged",
        tolerance=merge_tolerance(config.quant, dtype),
        dtype=dtype,
        device=device,
    )
    metadata = {"path": dg.MetadataValue.path(str(report.out_dir)), "device": device, **report.to_metadata()}
    return dg.MaterializeResult(metadata=metadata)


def _score_fn(config):
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    misconceptions = load_misconceptions(config.paths.resolve(config.paths.misconceptions), dictionary)
    facts = FactBase.load(config.paths.resolve(config.paths.fact_base))
    return functools.partial(mean_scores, dictionary=dictionary, misconceptions=misconceptions, facts=facts)


@dg.asset(group_name=GROUP, deps=[merged_model], pool=TRAINING_POOL, kinds={"pytorch"})
def reference_scores(
    context: dg.AssetExecutionContext, qft: QftSettings, term_balanced_splits: SplitResult
) -> dg.Output[ModelEvaluation]:
    """The merged (unquantized) model measured once on the verification set — perplexity, probes, generations,
    evaluation metrics — as the reference every quantized variant is compared with."""
    config = qft.load()
    device = resolve_device(config.model.device)
    merged_dir = upstream_path(context, "merged_model")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, local_files_only=True)
    verification = comparison_set(term_balanced_splits.test, tokenizer, config.quant)
    reference = evaluate_directory(merged_dir, verification, config.quant, score_fn=_score_fn(config), device=device)
    return dg.Output(
        reference,
        metadata={
            # A variant is compared with this reference only if it was quantized from this model.
            "merged_model": dg.MetadataValue.path(str(merged_dir)),
            "device": device,
            "perplexity": reference.text.perplexity,
            "probe_accuracy": reference.probes.accuracy,
            "tokens_per_second": reference.generation.tokens_per_second,
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=[merged_model],
    partitions_def=QUANT_FORMATS,
    # The packaging chain launches every format at once; like a training, each holds the accelerators.
    pool=TRAINING_POOL,
    kinds={"safetensors"},
    check_specs=[dg.AssetCheckSpec(DEGRADATION_CHECK, asset="quantized_package", blocking=True)],
)
def quantized_package(
    context: dg.AssetExecutionContext,
    qft: QftSettings,
    term_balanced_splits: SplitResult,
    reference_scores: ModelEvaluation,
) -> dg.MaterializeResult:
    """The merged model quantized to this partition's format, verified side by side with the unquantized one."""
    config = qft.load()
    device = resolve_device(config.model.device)
    fmt = context.partition_key
    merged_dir = upstream_path(context, "merged_model")
    scored = source_materialization(context.instance, context.run.run_id, dg.AssetKey("reference_scores"))
    if scored.asset_materialization.metadata["merged_model"].value != str(merged_dir):
        raise dg.Failure(
            description=f"reference_scores measured {scored.asset_materialization.metadata['merged_model'].value}, "
            f"not the merged model {merged_dir} that {fmt} quantizes: materialize reference_scores again"
        )
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, local_files_only=True)
    calibration = chat_formatted_texts(term_balanced_splits.train, tokenizer)
    try:
        package = quantize(merged_dir, fmt, run_folder(context, config) / fmt, config.quant, calibration, device=device)
    except (FormatUnavailableError, QuantSettingsError) as error:
        raise dg.Failure(description=f"{fmt} package not built on this machine: {error}") from None
    verification = comparison_set(term_balanced_splits.test, tokenizer, config.quant)
    evaluation = evaluate_directory(
        package.directory, verification, config.quant, score_fn=_score_fn(config), device=device
    )
    row = compare_packages(reference_scores, [evaluation])[-1]  # the first row is the unquantized reference
    violations = check_degradation(row, config.quant)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(package.directory)),
            # The deployment package lists a variant only if it was quantized from the model it packages.
            "merged_model": dg.MetadataValue.path(str(merged_dir)),
            "method": package.method,
            "device": device,
            "weights_bytes": package.weights_bytes,
            "quantize_seconds": package.seconds,
            "comparison": dg.MetadataValue.json(row),
            **stand_in_metadata(config.model.name),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DEGRADATION_CHECK,
                passed=not violations,
                metadata={VIOLATIONS: dg.MetadataValue.json(violations)},
            )
        ],
    )


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
    if gguf and gguf.get("skipped"):
        gguf_warnings = [f"gguf: not included: {gguf['skipped']}"]
    elif config.export.gguf_types and not gguf:
        gguf_warnings = ["gguf: no GGUF export of this merged model (materialize gguf_model); not included"]
    else:
        gguf_warnings = []
    warnings = [*(f"corpus: {warning}" for warning in corpus.warnings), *variant_warnings, *gguf_warnings]
    metadata = {
        "config": config.model_dump(mode="json"),
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
