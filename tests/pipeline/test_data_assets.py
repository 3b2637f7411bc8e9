import json
from pathlib import Path

import pyarrow.parquet as pq

from qft_pipeline.runner import materialize_graph
from tests.pipeline.conftest import write_corpus

DATA_ASSETS = "raw_thinking_documents parsed_thinking_examples term_annotated_examples term_balanced_splits"


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


def test_failing_quarantine_check_blocks_downstream_assets(project):
    write_corpus(project["corpus"], pairs=8, broken=12)
    outcome = materialize_graph(config_file=project["config_file"], selection=_select_data())
    assert not outcome.success
    assert "check quarantine_ratio_under_threshold failed" in outcome.failures
    assert "parsed_thinking_examples" in outcome.artifacts
    assert "term_annotated_examples" not in outcome.artifacts
    assert "term_balanced_splits" not in outcome.artifacts
