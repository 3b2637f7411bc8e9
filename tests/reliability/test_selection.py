"""`qft run --select`: a selection that matches nothing or does not parse runs nothing; one that names a
packaging asset reaches its own job, so an interrupted quantize or deploy can be redone alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qft_core.cli import main as qft
from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import DEPLOY_JOB, FORMAT_TAG, MAIN_JOB, QUANTIZE_JOB
from qft_pipeline.runner import materialize_graph, plan_steps
from tests.reliability.conftest import write_config


@pytest.fixture
def config_file(tmp_path: Path, dagster_home: Path) -> Path:
    return write_config(tmp_path / "qft.yaml", tmp_path / "corpus", tmp_path / "artifacts")


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("key:does_not_exist", "--select 'key:does_not_exist' matches no asset; nothing was run"),
        ("tag:nothing=here", "--select 'tag:nothing=here' matches no asset; nothing was run"),
        ("a b", "--select 'a b' is not a valid asset selection: Invalid selection string: a b"),
        ("", "--select '' is not a valid asset selection: Invalid selection string:"),
        ("does_not_exist", "--select 'does_not_exist' is not a valid asset selection: AssetKey(s) ['does_not_exist']"),
    ],
)
def test_a_selection_that_matches_nothing_or_does_not_parse_is_one_line_and_runs_nothing(
    selection: str, message: str, config_file: Path, dagster_home: Path, capsys: pytest.CaptureFixture
) -> None:
    assert qft(["--config", str(config_file), "run", "--select", selection]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"qft run: {message}")
    # Nothing ran: no run in the instance (not even the instance's folder), no artifacts folder.
    assert not dagster_home.exists()
    assert not (config_file.parent / "artifacts").exists()


def _steps(config_file: Path, selection: str | None) -> list[tuple[str, list[str], str | None]]:
    return [
        (step.job, sorted(key.to_user_string() for key in step.assets), step.partition)
        for step in plan_steps(str(config_file), selection)
    ]


def _quantize_to(config_file: Path, formats: list[str]) -> None:
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["quant"] = {"formats": formats}
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")


def test_a_selection_reaches_the_quantize_and_deploy_jobs_in_graph_order(config_file: Path) -> None:
    _quantize_to(config_file, ["int8", "int4"])

    assert _steps(config_file, "quantized_package") == [
        (QUANTIZE_JOB, ["quantized_package"], "int8"),
        (QUANTIZE_JOB, ["quantized_package"], "int4"),
    ]
    assert _steps(config_file, "deployment_package") == [(DEPLOY_JOB, ["deployment_package"], None)]
    assert _steps(config_file, "key:merged_model+") == [
        (MAIN_JOB, ["gguf_model", "merged_model", "reference_scores"], None),
        (QUANTIZE_JOB, ["quantized_package"], "int8"),
        (QUANTIZE_JOB, ["quantized_package"], "int4"),
        (DEPLOY_JOB, ["deployment_package"], None),
    ]
    assert _steps(config_file, "group:data") == [
        (
            MAIN_JOB,
            [
                "dataset_exports",
                "parsed_thinking_examples",
                "raw_thinking_documents",
                "term_annotated_examples",
                "term_balanced_splits",
            ],
            None,
        )
    ]
    whole = _steps(config_file, None)
    assert [job for job, _, _ in whole] == [MAIN_JOB, QUANTIZE_JOB, QUANTIZE_JOB, DEPLOY_JOB]
    assert whole == _steps(config_file, "*")


def test_quantized_package_selected_alone_runs_in_the_quantize_job_of_each_format(config_file: Path) -> None:
    _quantize_to(config_file, ["int8"])
    outcome = materialize_graph(config_file=str(config_file), selection="quantized_package")
    assert not outcome.success
    (run_id,) = outcome.run_ids
    run = project_instance().get_run_by_id(run_id)
    assert run.job_name == QUANTIZE_JOB
    assert run.tags[FORMAT_TAG] == "int8"
    assert run.tags["dagster/partition"] == "int8"
    # It ran, and failed for the reason a quantize before any main run must (no reference scores of a merged
    # model to compare with): not a main-job run in disguise.
    (failure,) = outcome.failures
    assert failure.startswith("int8: quantized_package: ")
    assert "asset 'reference_scores' has never been materialized" in failure
