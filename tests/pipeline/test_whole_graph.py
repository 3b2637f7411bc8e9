"""The whole graph on the embedded default, as `qft run` materializes it: every asset, the GGUF export checked
against the merged model, and a deployment package that carries it and verifies."""

import json
from pathlib import Path

import dagster as dg
import pytest

from qft_core.package.bundle import archive_path, verify_package
from qft_core.package.layout import METADATA_FILE
from qft_core.package.manifest import MANIFEST_FILE
from qft_pipeline.definitions import defs

pytestmark = pytest.mark.slow


def test_every_asset_of_the_graph_is_materialized(whole_graph):
    graph = defs.resolve_asset_graph()
    expected = set()
    for key in graph.materializable_asset_keys:
        name = key.to_user_string()
        partitions = graph.get(key).partitions_def
        # quantized_package is one partition a format: the tiny run builds int8 only.
        expected |= {f"{name}[int8]"} if partitions else {name}
    assert set(whole_graph["outcome"].metadata) == expected


def test_the_gguf_export_is_checked_against_the_merged_model_and_shipped(whole_graph):
    metadata = whole_graph["outcome"].metadata
    (row,) = metadata["gguf_model"]["gguf"]  # export.gguf_types defaults to [q8_0]
    assert row["file"].endswith("-Q8_0.gguf") and row["passed"] is True
    assert metadata["gguf_model"]["skipped"] == ""

    package_dir = Path(metadata["deployment_package"]["path"])
    shipped = sorted(path.name for path in (package_dir / "gguf").iterdir())
    assert shipped == sorted([row["file"], row["file"].removesuffix(".gguf") + ".Modelfile"])
    package_metadata = json.loads((package_dir / METADATA_FILE).read_text(encoding="utf-8"))
    assert [entry["file"] for entry in package_metadata["gguf"]] == [row["file"]]
    assert not [warning for warning in package_metadata["warnings"] if warning.startswith("gguf")]


def test_the_gguf_check_result_is_recorded_as_passed(whole_graph, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(whole_graph["home"]))
    with dg.DagsterInstance.get() as instance:
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("gguf_model"), "gguf_matches_merged_model")]
        )
    (execution,) = check.values()
    assert execution.status.value == "SUCCEEDED"
    assert execution.event.asset_check_evaluation.passed is True


def test_the_deployment_archive_verifies(whole_graph):
    package_dir = Path(whole_graph["outcome"].metadata["deployment_package"]["path"])
    report = verify_package(archive_path(package_dir), device="cpu")
    # Every file of the folder is in the manifest, which verify_package checked against the unpacked archive.
    files = [path for path in package_dir.rglob("*") if path.is_file() and path.name != MANIFEST_FILE]
    assert report.files_checked == len(files)
    assert report.completion_tokens > 0 and report.stand_in  # the embedded default is labelled a stand-in
