"""The deployment package's warnings — corpus files its data scan left out, formats with no variant of the merged
model it packages, variants over a degradation limit — in the run log, the UI metadata and qft_metadata.json."""

import json
import logging
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml
from peft import LoraConfig as PeftLoraConfig

from qft_core.config import ModelConfig, PathsConfig
from qft_core.data.corpus import CorpusManifest, scan_corpus
from qft_core.data.split import SplitResult
from qft_core.evaluate.report import EvaluationReport, read_report
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_pipeline.artifacts import run_folder
from qft_pipeline.assets.deployment import deployed_model_dir, deployment_package, quantized_variants
from qft_pipeline.assets.packaging import DEGRADATION_CHECK, QUANT_FORMATS
from qft_pipeline.resources import QftSettings, resources

MERGED = Path("/artifacts/runs/r1/merged_model/merged")
CLEAN_ROW = {"variant": "int8", "perplexity": 10.5, "perplexity_ratio": 1.05, "probe_agreement": 0.95}
# 50 % above the unquantized perplexity (the default limit is 25 %), probes still agree.
DEGRADED_ROW = {"variant": "int4", "perplexity": 15.0, "perplexity_ratio": 1.5, "probe_agreement": 0.9}
DEGRADED = "int4: perplexity 15 is 50.0% above the unquantized model's (quant.max_perplexity_increase 25%)"


def _variant(row: dict, merged: Path = MERGED, violations: list[str] | None = ()) -> dict:
    """A variant's metadata with what its degradation check found (None: the check has no result)."""
    return {"path": "/somewhere", "merged_model": str(merged), "comparison": row, "violations": violations}


def test_variants_of_this_merged_model_are_listed_without_warnings():
    rows, warnings = quantized_variants({"int8": _variant(CLEAN_ROW)}, MERGED)
    assert (rows, warnings) == ([CLEAN_ROW], [])


def test_a_variant_whose_degradation_check_has_no_result_is_listed_with_a_warning():
    rows, warnings = quantized_variants({"int8": _variant(CLEAN_ROW, violations=None)}, MERGED)
    assert rows == [CLEAN_ROW]
    assert warnings == ["int8: its degradation_within_thresholds check has no result; the variant is listed unchecked"]


def test_missing_stale_and_degraded_variants_are_warned():
    variants = {
        "int8": _variant(CLEAN_ROW, merged=Path("/artifacts/runs/r0/merged_model/merged")),
        "int4": _variant(DEGRADED_ROW, violations=[DEGRADED]),
        "gptq": None,
    }
    rows, warnings = quantized_variants(variants, MERGED)
    assert rows == [DEGRADED_ROW]
    assert warnings == [
        "int8: no quantized variant of this merged model (the latest package came from another model); not listed",
        DEGRADED,
        "gptq: no quantized variant of this merged model (no package was ever built); not listed",
    ]


def test_the_deployed_variant_is_the_merged_model_or_its_quantized_package():
    variants = {"int8": _variant(CLEAN_ROW), "int4": _variant(DEGRADED_ROW, merged=Path("/other/merged")), "gptq": None}
    assert deployed_model_dir("unquantized", variants, MERGED) == MERGED
    assert deployed_model_dir("int8", variants, MERGED) == Path("/somewhere")
    with pytest.raises(dg.Failure, match=r"export.deployed_variant is 'int4', but no int4 package was quantized from"):
        deployed_model_dir("int4", variants, MERGED)
    with pytest.raises(dg.Failure, match=r"materialize quantized_package\[gptq\] first"):
        deployed_model_dir("gptq", variants, MERGED)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_deployment_package_shows_its_warnings_in_log_metadata_and_package(tmp_path):
    merged = ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("Q: 什么是 AES？\nA: 一种分组密码。\n", encoding="utf-8")
    (tmp_path / "secret.md").write_text("Q: 外面？\nA: 外面。\n", encoding="utf-8")
    (corpus / "escape.md").symlink_to(tmp_path / "secret.md")
    manifest = scan_corpus(corpus)
    config_file = tmp_path / "qft.yaml"
    config = {"paths": {"artifacts_dir": str(tmp_path / "artifacts")}, "model": {"name": "qwen3-tiny"},
              "quant": {"formats": ["int4", "gptq"]}}
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    @dg.asset(name="raw_thinking_documents")
    def manifest_stand_in() -> CorpusManifest:
        return manifest

    @dg.asset(name="term_balanced_splits")
    def splits_stand_in() -> SplitResult:
        origins = {name: {"expert": 1, "model": 0, "template": 0, "none": 0, "rejected": 0}
                   for name in ("train", "validation", "test")}
        origins["train"]["model"] = 2
        return SplitResult([], [], [], report={"sizes": {"train": 3, "validation": 1, "test": 1, "total": 5},
                                               "reasoning_origins": origins})

    @dg.asset(name="evaluation_report")
    def report_stand_in(context: dg.AssetExecutionContext, qft: QftSettings) -> EvaluationReport:
        folder = run_folder(context, qft.load())
        (folder / "report.json").write_text(json.dumps({"headline": {"term_f1": 0.5}}), encoding="utf-8")
        return read_report(folder)

    @dg.asset(
        name="quantized_package",
        partitions_def=QUANT_FORMATS,
        check_specs=[dg.AssetCheckSpec(DEGRADATION_CHECK, asset="quantized_package", blocking=True)],
    )
    def int4_stand_in() -> dg.MaterializeResult:
        check = dg.AssetCheckResult(passed=False, metadata={"violations": dg.MetadataValue.json([DEGRADED])})
        metadata = {"merged_model": dg.MetadataValue.path(str(merged)), "comparison": dg.MetadataValue.json(DEGRADED_ROW)}
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    # The adapter the model was merged from: the planner shrank the configured r=8 to r=4.
    adapter = tmp_path / "adapter"
    PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]).save_pretrained(adapter)

    with dg.DagsterInstance.ephemeral() as instance:
        merged_metadata = {"path": dg.MetadataValue.path(str(merged)), "adapter_dir": str(adapter)}
        instance.report_runless_asset_event(dg.AssetMaterialization("merged_model", metadata=merged_metadata))
        dg.materialize([int4_stand_in], instance=instance, partition_key="int4", raise_on_error=False)
        result = dg.materialize(
            [manifest_stand_in, splits_stand_in, report_stand_in, deployment_package],
            instance=instance,
            resources=resources(QftSettings(config_file=str(config_file))),
        )
        logged = [
            entry.user_message
            for entry in instance.all_logs(result.run_id)
            if entry.level == logging.WARNING and entry.step_key == "deployment_package"
        ]

    expected = [
        f"corpus: escape.md: symlink_outside_root: points to {tmp_path.resolve() / 'secret.md'}, outside {corpus}; "
        "skipped",
        DEGRADED,
        "gptq: no quantized variant of this merged model (no package was ever built); not listed",
        "gguf: no GGUF export of this merged model (materialize gguf_model); not included",
    ]
    assert result.success
    (materialization,) = result.asset_materializations_for_node("deployment_package")
    assert materialization.metadata["warnings"].value == "\n".join(f"- {warning}" for warning in expected)
    assert logged == expected
    package_metadata = json.loads((Path(materialization.metadata["path"].value) / "qft_metadata.json").read_text())
    assert package_metadata["warnings"] == expected
    assert package_metadata["quantized_variants"] == [DEGRADED_ROW]
    assert package_metadata["data_hash"] == manifest.content_hash
    # The card says who wrote the training data's reasoning, a model's marked as such.
    assert package_metadata["data"]["reasoning_origins"] == {
        "expert": 3, "model": 2, "template": 0, "none": 0, "rejected": 0
    }
    card = (Path(materialization.metadata["path"].value) / "README.md").read_text(encoding="utf-8")
    assert "Reasoning: 3 written by experts, 2 written by a model (kept after the quality and" in card
    assert package_metadata["lora"] == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert card.count("| `lora.r` | 4 |") == 2
