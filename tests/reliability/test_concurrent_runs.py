"""Pipeline faults: a run stopped by the blocking quarantine check is not bypassed by a run of the skipped assets
alone and completes once the corpus is fixed; `qft run`s at the same time on one Dagster instance and one
artifacts folder keep their artifacts apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.instance import project_instance
from qft_pipeline.runner import materialize_graph
from tests.reliability.bad_inputs import MISSING_ANSWER, good
from tests.reliability.conftest import write_config

DATA_ASSETS = {
    "raw_thinking_documents", "parsed_thinking_examples", "term_annotated_examples", "term_balanced_splits",
    "dataset_exports",
}
DOWNSTREAM = ("term_annotated_examples", "term_balanced_splits")
SPLITS = ("train", "validation", "test")
REPO_ROOT = Path(__file__).resolve().parents[2]
# One `qft run` of the data assets in its own process; it waits for the go file so that both runs start together.
RUN_DATA_ASSETS = """
import json, sys, time
from pathlib import Path
from qft_pipeline.instance import project_instance
from qft_pipeline.runner import materialize_graph
config_file, out, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.02)
outcome = materialize_graph(config_file=config_file, selection="group:data")
fields = {"run_id": outcome.run_id, "success": outcome.success}
fields |= {"artifacts": outcome.artifacts, "failures": outcome.failures}
Path(out).write_text(json.dumps(fields), encoding="utf-8")
"""
# What every `qft run` does first: open (on first use, create) the project's Dagster instance.
OPEN_INSTANCE = """
import sys, time
from pathlib import Path
from qft_pipeline.instance import project_instance
ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
project_instance()
"""


def write_pairs(corpus: Path, key: str, pairs: int, unanswered: int = 0) -> list[str]:
    """`pairs` good pairs (and `unanswered` questions) over three files; returns the good questions."""
    corpus.mkdir(parents=True, exist_ok=True)
    pieces = [good(key, index, style=index) for index in range(pairs)]
    unanswered_questions = [MISSING_ANSWER.replace("？", f" {n}？", 1) for n in range(unanswered)]
    chunks = [piece.markdown for piece in pieces] + unanswered_questions
    for part in range(3):
        (corpus / f"part{part}.md").write_text("\n".join(chunks[part::3]), encoding="utf-8")
    return [piece.question for piece in pieces]


def split_examples(splits_folder: Path) -> list[ThinkingExample]:
    return [example for name in SPLITS for example in read_parquet(splits_folder / f"{name}.parquet", ThinkingExample)]


def leftover_temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith((".tmp", ".partial"))]


@pytest.mark.slow
def test_fixing_the_corpus_and_rematerializing_completes_the_stopped_run(tmp_path: Path, dagster_home: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    config_file = str(write_config(tmp_path / "qft.yaml", corpus, artifacts))
    write_pairs(corpus, "fix", pairs=8, unanswered=12)

    stopped = materialize_graph(config_file=config_file, selection="group:data")

    assert not stopped.success
    assert "check quarantine_ratio_under_threshold failed" in stopped.failures
    assert set(stopped.artifacts) == {"raw_thinking_documents", "parsed_thinking_examples"}
    instance = dg.DagsterInstance.get()
    assert all(instance.get_latest_materialization_event(dg.AssetKey(name)) is None for name in DOWNSTREAM)
    # Selecting only what was skipped does not go on with the examples that the check stopped.
    bypass = materialize_graph(config_file=config_file, selection="key:term_annotated_examples")
    assert not bypass.success and bypass.artifacts == {}
    assert "its blocking check quarantine_ratio_under_threshold failed" in bypass.failures[0]

    questions = write_pairs(corpus, "fix", pairs=30)
    resumed = materialize_graph(config_file=config_file, selection="group:data")

    assert resumed.success, resumed.failures
    assert set(resumed.artifacts) == DATA_ASSETS
    for name in DOWNSTREAM:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert event is not None and event.run_id == resumed.run_id
    report = json.loads((Path(resumed.artifacts["parsed_thinking_examples"]).parent / "quarantine.json").read_text())
    assert (report["parsed"], report["quarantined"]) == (30, 0)
    in_splits = split_examples(Path(resumed.artifacts["term_balanced_splits"]))
    assert sorted(example.question for example in in_splits) == sorted(questions)
    # Once the check has passed, a run of a later asset alone builds on this run's data.
    again = materialize_graph(config_file=config_file, selection="key:term_balanced_splits")
    assert again.success, again.failures
    assert len(split_examples(Path(again.artifacts["term_balanced_splits"]))) == 30
    # The stopped run's files are left as they were: 8 parsed examples, in its own folder.
    assert len(read_parquet(stopped.artifacts["parsed_thinking_examples"], ThinkingExample)) == 8
    assert leftover_temporaries(artifacts) == []


def start_together(tmp_path: Path, script: str, jobs: dict[str, list[str]], dagster_home: Path) -> dict[str, int]:
    """Run `script` once per job in its own Python process, released at the same moment; their exit codes.

    The script gets its job's arguments followed by a ready file (touched once it has imported) and a go file
    (created once every process is ready).
    """
    go = tmp_path / "go"
    ready = {key: tmp_path / f"{key}.ready" for key in jobs}
    environment = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    processes = {
        key: subprocess.Popen(
            [sys.executable, "-c", script, *arguments, str(ready[key]), str(go)], cwd=REPO_ROOT, env=environment
        )
        for key, arguments in jobs.items()
    }
    try:
        deadline = time.monotonic() + 300
        while not all(path.exists() for path in ready.values()):
            assert all(process.poll() is None for process in processes.values()), "a process exited before starting"
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.05)
        go.touch()
        return {key: process.wait(timeout=600) for key, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()


@pytest.mark.slow
def test_concurrent_runs_on_one_instance_keep_their_artifacts_apart(tmp_path: Path, dagster_home: Path) -> None:
    artifacts = tmp_path / "artifacts"
    questions, jobs = {}, {}
    for key, pairs in (("alpha", 24), ("beta", 33)):
        questions[key] = write_pairs(tmp_path / f"corpus-{key}", key, pairs=pairs)
        config_file = write_config(tmp_path / f"{key}.yaml", tmp_path / f"corpus-{key}", artifacts)
        jobs[key] = [str(config_file), str(tmp_path / f"{key}.json")]
    # An instance that exists already: two first runs on a fresh one race to create it (see the test below).
    project_instance()

    assert start_together(tmp_path, RUN_DATA_ASSETS, jobs, dagster_home) == {"alpha": 0, "beta": 0}

    outcomes = {key: json.loads((tmp_path / f"{key}.json").read_text(encoding="utf-8")) for key in jobs}
    assert outcomes["alpha"]["run_id"] != outcomes["beta"]["run_id"]
    for key, outcome in outcomes.items():
        assert outcome["success"], outcome["failures"]
        assert set(outcome["artifacts"]) == DATA_ASSETS
        own_folder = artifacts / "runs" / outcome["run_id"]
        assert all(Path(path).is_relative_to(own_folder) for path in outcome["artifacts"].values())
        # Each run's files hold its own corpus, whole: nothing of the other run's corpus, nothing missing.
        parsed = read_parquet(outcome["artifacts"]["parsed_thinking_examples"], ThinkingExample)
        assert sorted(example.question for example in parsed) == sorted(questions[key])
        annotated = read_parquet(outcome["artifacts"]["term_annotated_examples"], ThinkingExample)
        assert sorted(example.id for example in annotated) == sorted(example.id for example in parsed)
        in_splits = split_examples(Path(outcome["artifacts"]["term_balanced_splits"]))
        assert sorted(example.id for example in in_splits) == sorted(example.id for example in parsed)
    instance = dg.DagsterInstance.get()
    for outcome in outcomes.values():
        assert instance.get_run_by_id(outcome["run_id"]).status == dg.DagsterRunStatus.SUCCESS
    assert leftover_temporaries(artifacts) == []


@pytest.mark.slow
def test_first_runs_started_together_on_a_fresh_instance_all_open_it(tmp_path: Path) -> None:
    for attempt in range(2):
        scratch = tmp_path / f"attempt-{attempt}"
        scratch.mkdir()
        jobs = {f"run-{index}": [] for index in range(4)}
        codes = start_together(scratch, OPEN_INSTANCE, jobs, scratch / "dagster_home")
        assert set(codes.values()) == {0}, f"attempt {attempt}: exit codes {codes}"
