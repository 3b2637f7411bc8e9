"""The merged model as GGUF files for llama.cpp, Ollama and LM Studio, each read back by transformers' loader."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from qft_core.package.gguf import architecture_refusal
from qft_core.package.gguf_verify import write_gguf_folder
from qft_pipeline.artifacts import run_folder, upstream_path
from qft_pipeline.metadata import markdown_table, stand_in_metadata
from qft_pipeline.resources import QftSettings

GGUF_MODEL = dg.AssetKey("gguf_model")


@dg.asset(
    group_name="packaging",
    deps=[dg.AssetKey("merged_model")],
    kinds={"gguf"},
    check_specs=[dg.AssetCheckSpec("gguf_matches_merged_model", asset="gguf_model")],
)
def gguf_model(context: dg.AssetExecutionContext, qft: QftSettings):
    """The merged model as GGUF files (export.gguf_types) with an Ollama Modelfile each, every file read back by
    transformers' GGUF loader and compared with the merged model (logits, greedy tokens, tokenizer, template)."""
    config = qft.load()
    merged_dir = upstream_path(context, "merged_model")
    out_dir = run_folder(context, config) / "gguf"
    skipped = architecture_refusal(merged_dir) if config.export.gguf_types else None
    if skipped:
        context.log.warning(f"gguf_model: nothing exported: {skipped}")
    types = [] if skipped else config.export.gguf_types
    written = write_gguf_folder(merged_dir, out_dir, types, model_name=config.export.package_name)
    rows = [
        {"file": gguf_file.path.name, "size_mb": round(gguf_file.size_bytes / 1e6, 1), **check.to_metadata()}
        for gguf_file, check in written
    ]
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "merged_model": dg.MetadataValue.path(str(merged_dir)),
            "files": markdown_table(rows or [{"file": f"none ({skipped or 'export.gguf_types is empty'})"}]),
            "gguf": dg.MetadataValue.json(rows),
            "skipped": skipped or "",
            **stand_in_metadata(config.model.name),
        }
    )
    failed = [row["file"] for row in rows if not row["passed"]]
    yield dg.AssetCheckResult(
        check_name="gguf_matches_merged_model", passed=not failed, metadata={"failed": dg.MetadataValue.json(failed)}
    )


def latest_gguf(instance: dg.DagsterInstance, merged_dir: Path) -> Mapping[str, Any] | None:
    """The metadata of the latest GGUF export if it was made from `merged_dir`, else None."""
    event = instance.get_latest_materialization_event(GGUF_MODEL)
    if event is None or event.asset_materialization is None:
        return None
    metadata = {key: entry.value for key, entry in event.asset_materialization.metadata.items()}
    return metadata if metadata.get("merged_model") == str(merged_dir) else None


def gguf_warnings(gguf: Mapping[str, Any] | None, gguf_types: list[str]) -> list[str]:
    """What the deployment package says of its GGUF files: skipped (and why), or missing though configured."""
    if gguf and gguf.get("skipped"):
        return [f"gguf: not included: {gguf['skipped']}"]
    if gguf_types and not gguf:
        return ["gguf: no GGUF export of this merged model (materialize gguf_model); not included"]
    return []
