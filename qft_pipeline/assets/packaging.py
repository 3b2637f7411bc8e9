"""Packaging assets: merged model → reference scores → quantized packages (one partition per format), which
assets/deployment.py packages with the GGUF files of assets/gguf.py."""

import functools

import dagster as dg
from transformers import AutoTokenizer

from qft_core.data.split import SplitResult
from qft_core.data.terms import TermDictionary
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.metrics import mean_scores
from qft_core.evaluate.misconceptions import load_misconceptions
from qft_core.device import resolve_device
from qft_core.model.registry import ensure_model_dir, resolve_model, torch_dtype
from qft_core.package.merge import merge_adapter, merge_tolerance
from qft_core.package.quantize import FormatUnavailableError, QuantSettingsError, quantize
from qft_core.package.compare import (
    ModelEvaluation,
    chat_formatted_texts,
    check_degradation,
    compare_packages,
    comparison_set,
    evaluate_directory,
)
from qft_pipeline.artifacts import run_folder, source_materialization, upstream_path
from qft_pipeline.assets.training import TRAINING_POOL, lora_checkpoint
from qft_pipeline.metadata import stand_in_metadata
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
