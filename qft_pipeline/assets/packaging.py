"""Packaging assets: merged model → quantized packages (one partition per format) → deployment package."""

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from transformers import AutoTokenizer

from qft_core.config import QuantConfig
from qft_core.data.corpus import CorpusManifest
from qft_core.data.terms import TermDictionary
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.metrics import mean_scores
from qft_core.evaluate.misconceptions import load_misconceptions
from qft_core.device import resolve_device
from qft_core.model.registry import ensure_model_dir, resolve_model, torch_dtype
from qft_core.package.bundle import archive_path, build_package
from qft_core.package.layout import METADATA_FILE
from qft_core.package.merge import merge_adapter, merge_tolerance
from qft_core.package.model_card import ModelCardInfo
from qft_core.package.quantize import FormatUnavailableError, QuantSettingsError, quantize
from qft_core.package.compare import chat_formatted_texts, check_degradation, compare_packages, evaluate_directory, comparison_set
from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.artifacts import run_folder, upstream_path
from qft_pipeline.assets.data import raw_thinking_documents, term_balanced_splits
from qft_pipeline.assets.evaluation import evaluation_report
from qft_pipeline.assets.training import TRAINING_POOL, lora_checkpoint
from qft_pipeline.metadata import markdown_table, report_warnings, stand_in_metadata
from qft_pipeline.resources import QftSettings

GROUP = "packaging"
QUANT_FORMATS = dg.StaticPartitionsDefinition(["int8", "int4", "gptq"])


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


@dg.asset(
    group_name=GROUP,
    deps=[merged_model, term_balanced_splits],
    partitions_def=QUANT_FORMATS,
    # The packaging chain launches every format at once; like a training, each holds the accelerators.
    pool=TRAINING_POOL,
    kinds={"safetensors"},
    check_specs=[dg.AssetCheckSpec("degradation_within_thresholds", asset="quantized_package", blocking=True)],
)
def quantized_package(context: dg.AssetExecutionContext, qft: QftSettings):
    """The merged model quantized to this partition's format, verified side by side with the unquantized one."""
    config = qft.load()
    device = resolve_device(config.model.device)
    fmt = context.partition_key
    merged_dir = upstream_path(context, "merged_model")
    splits = upstream_path(context, "term_balanced_splits")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, local_files_only=True)
    calibration = chat_formatted_texts(read_parquet(splits / "train.parquet", ThinkingExample), tokenizer)
    try:
        package = quantize(merged_dir, fmt, run_folder(context, config) / fmt, config.quant, calibration, device=device)
    except (FormatUnavailableError, QuantSettingsError) as error:
        raise dg.Failure(description=f"{fmt} package not built on this machine: {error}") from None
    verification = comparison_set(read_parquet(splits / "test.parquet", ThinkingExample), tokenizer, config.quant)
    score_fn = _score_fn(config)
    reference = evaluate_directory(merged_dir, verification, config.quant, score_fn=score_fn, device=device)
    evaluation = evaluate_directory(package.directory, verification, config.quant, score_fn=score_fn, device=device)
    row = compare_packages(reference, [evaluation])[-1]  # the first row is the unquantized reference
    violations = check_degradation(row, config.quant)
    yield dg.MaterializeResult(
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
        }
    )
    yield dg.AssetCheckResult(
        check_name="degradation_within_thresholds",
        passed=not violations,
        metadata={"violations": dg.MetadataValue.json(violations)},
    )


@dg.asset(group_name=GROUP, deps=[merged_model, quantized_package, evaluation_report, raw_thinking_documents])
def deployment_package(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """The merged model as a self-checking package (folder + .tar.gz): weights, tokenizer, template, model card,
    metadata and a sha256 manifest; the quantized variants of this merged model compared in the metadata.

    What a user should know before shipping it — corpus files the scan left out, formats with no variant of this
    model, variants over a degradation limit — is logged, shown as `warnings` and kept in qft_metadata.json."""
    config = qft.load()
    merged_dir = upstream_path(context, "merged_model")
    corpus_path = upstream_path(context, "raw_thinking_documents")
    corpus = CorpusManifest.model_validate_json(corpus_path.read_text(encoding="utf-8"))
    variants = _latest_variants(context.instance, config.quant.formats)
    rows, variant_warnings = quantized_variants(variants, merged_dir, config.quant)
    model_dir = deployed_model_dir(config.export.deployed_variant, variants, merged_dir)
    warnings = [*(f"corpus: {warning}" for warning in corpus.warnings), *variant_warnings]
    metadata = {
        "config": config.model_dump(mode="json"),
        "data_hash": corpus.content_hash,
        "metrics": _headline(upstream_path(context, "evaluation_report").parent),
        "quantized_variants": rows,
        "deployed_variant": config.export.deployed_variant,
        "warnings": warnings,
    }
    spec = resolve_model(config.model, config.paths)
    package_dir = build_package(
        model_dir,
        run_folder(context, config) / config.export.package_name,
        metadata=metadata,
        model_card=ModelCardInfo(model_name=config.export.package_name, base_model=spec.name),
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
    """The metadata of each format's latest quantized package (None where none was ever built)."""
    variants: dict[str, Mapping[str, Any] | None] = {}
    for fmt in formats:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("quantized_package"), asset_partitions=[fmt]), limit=1
        ).records
        metadata = records[0].asset_materialization.metadata if records else None
        variants[fmt] = {key: entry.value for key, entry in metadata.items()} if metadata is not None else None
    return variants


def quantized_variants(
    variants: Mapping[str, Mapping[str, Any] | None], merged_dir: Path, config: QuantConfig
) -> tuple[list[dict], list[str]]:
    """The comparison rows of the variants quantized from `merged_dir`, and a warning for each format without one
    and for each degradation limit a listed variant exceeds."""
    rows, warnings = [], []
    for fmt, metadata in variants.items():
        if metadata is None or metadata.get("merged_model") != str(merged_dir):
            built = "no package was ever built" if metadata is None else "the latest package came from another model"
            warnings.append(f"{fmt}: no quantized variant of this merged model ({built}); not listed")
            continue
        rows.append(metadata["comparison"])
        warnings += check_degradation(metadata["comparison"], config)
    return rows, warnings


def _headline(report_dir) -> dict:
    return json.loads((report_dir / "report.json").read_text(encoding="utf-8"))["headline"]
