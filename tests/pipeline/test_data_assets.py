import json
import logging
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import yaml

from qft_pipeline.assets.data import raw_thinking_documents
from qft_pipeline.resources import QftSettings

from qft_pipeline.runner import materialize_graph
from tests.pipeline.conftest import write_corpus

DATA_ASSETS = (
    "raw_thinking_documents parsed_thinking_examples term_annotated_examples term_balanced_splits dataset_exports"
)


def _select_data() -> str:
    return "group:data"


def test_data_assets_materialize_and_account_for_every_pair(project):
    write_corpus(project["corpus"], pairs=60, broken=3)
    outcome = materialize_graph(config_file=project["config_file"], selection=_select_data())
    assert outcome.success, outcome.failures
    assert set(outcome.artifacts) == set(DATA_ASSETS.split())

    report = json.loads((Path(outcome.artifacts["parsed_thinking_examples"]).parent / "quarantine.json").read_text())
    assert (report["pairs_found"], report["parsed"], report["quarantined"]) == (63, 60, 3)
    assert {item["reason"].split(":")[0] for item in report["quarantine"]} == {"missing_answer"}

    splits = Path(outcome.artifacts["term_balanced_splits"])
    sizes = {name: pq.read_table(splits / f"{name}.parquet").num_rows for name in ("train", "validation", "test")}
    assert sum(sizes.values()) == 60
    assert all(size > 0 for size in sizes.values())
    ids = [set(pq.read_table(splits / f"{name}.parquet").column("id").to_pylist()) for name in sizes]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])

    exports = Path(outcome.artifacts["dataset_exports"])
    for dataset_format in ("messages", "sharegpt", "alpaca"):
        exported = [
            {json.loads(line)["id"] for line in (exports / dataset_format / f"{name}.jsonl").open(encoding="utf-8")}
            for name in sizes
        ]
        assert exported == ids, dataset_format
    info = json.loads((exports / "sharegpt" / "dataset_info.json").read_text(encoding="utf-8"))
    assert sorted(info) == ["qft_sharegpt_test", "qft_sharegpt_train", "qft_sharegpt_validation"]


def test_failing_quarantine_check_blocks_downstream_assets(project):
    write_corpus(project["corpus"], pairs=8, broken=12)
    outcome = materialize_graph(config_file=project["config_file"], selection=_select_data())
    assert not outcome.success
    assert "check quarantine_ratio_under_threshold failed" in outcome.failures
    assert "parsed_thinking_examples" in outcome.artifacts
    assert "term_annotated_examples" not in outcome.artifacts
    assert "term_balanced_splits" not in outcome.artifacts


def test_corpus_files_left_out_are_warned_in_the_log_and_the_metadata(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("Q: 什么是 AES？\nA: 一种分组密码。\n", encoding="utf-8")
    (tmp_path / "secret.md").write_text("Q: 外面？\nA: 外面。\n", encoding="utf-8")
    (corpus / "escape.md").symlink_to(tmp_path / "secret.md")
    config_file = tmp_path / "qft.yaml"
    config = {"paths": {"artifacts_dir": str(tmp_path / "artifacts"), "corpus_dir": str(corpus)}}
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [raw_thinking_documents], instance=instance, resources={"qft": QftSettings(config_file=str(config_file))}
        )
        assert result.success
        metadata = result.asset_materializations_for_node("raw_thinking_documents")[0].metadata
        logged = [
            event.message
            for event in instance.all_logs(result.run_id)
            if event.level == logging.WARNING and "escape.md" in event.message
        ]
    assert metadata["files"].value == 1
    assert "escape.md" in metadata["warnings"].value and metadata["warnings"].value.startswith("- ")
    assert len(logged) == 1


def test_the_parse_reads_the_manifests_files_and_refuses_one_changed_since(project):
    write_corpus(project["corpus"], pairs=12)
    first = materialize_graph(config_file=project["config_file"], selection="key:raw_thinking_documents")
    assert first.success, first.failures
    assert Path(first.artifacts["raw_thinking_documents"]).is_relative_to(project["root"] / "artifacts")
    (project["corpus"] / "added.md").write_text("Q: 后来加入的问题？\nA: 不在清单里。\n", encoding="utf-8")

    parsed = materialize_graph(config_file=project["config_file"], selection="key:parsed_thinking_examples")

    assert parsed.success, parsed.failures
    assert (parsed.metadata["parsed_thinking_examples"]["files_read"], parsed.metadata["parsed_thinking_examples"]["parsed"]) == (4, 12)
    with (project["corpus"] / "part0.md").open("a", encoding="utf-8") as part:
        part.write("\nQ: 清单之后改的？\nA: 是的。\n")

    changed = materialize_graph(config_file=project["config_file"], selection="key:parsed_thinking_examples")

    assert not changed.success
    (failure,) = changed.failures
    assert "part0.md: changed since the corpus manifest was taken" in failure
    assert "materialize raw_thinking_documents again" in failure


def test_an_unreachable_reasoning_endpoint_leaves_every_pair_accounted_with_the_template(project):
    write_corpus(project["corpus"], pairs=60)
    (project["corpus"] / "bare.md").write_text(
        "\n".join(f"问：第 {n} 个没有推理的问题：SM4 的分组长度是多少？\n答：128 位（第 {n} 题）。\n" for n in range(4)),
        encoding="utf-8",
    )
    config = yaml.safe_load(Path(project["config_file"]).read_text(encoding="utf-8"))
    config["reasoning"] = {"writer": "endpoint", "endpoint_url": "http://127.0.0.1:9/v1", "endpoint_model": "m"}
    Path(project["config_file"]).write_text(yaml.safe_dump(config), encoding="utf-8")

    outcome = materialize_graph(config_file=project["config_file"], selection="group:data")
    assert outcome.success, outcome.failures
    metadata = outcome.metadata["term_annotated_examples"]
    counts = {key: metadata[f"reasoning_{key}"] for key in ("expert", "model", "template", "none", "rejected")}
    assert counts == {"expert": 60, "model": 0, "template": 4, "none": 0, "rejected": 4}
    assert metadata["reasoning_writer"] == "m at http://127.0.0.1:9/v1"
    assert "http://127.0.0.1:9/v1/chat/completions: cannot connect" in metadata["reasoning_writer_failures"]
    splits = Path(outcome.artifacts["term_balanced_splits"])
    origins = json.loads((splits / "split_report.json").read_text(encoding="utf-8"))["reasoning_origins"]
    assert sum(split["template"] for split in origins.values()) == 4
