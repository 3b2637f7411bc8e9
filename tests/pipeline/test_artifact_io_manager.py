"""The artifact IO manager: a value an asset returns is the value the next asset receives, kept as the files people
read in the asset's folder of the run; a type it does not store is refused by name."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from qft_core.data.parse import ParseResult
from qft_core.data.split import SplitResult
from qft_core.package.compare import GenerationScores, ModelEvaluation, ProbeScores, TextScores
from qft_core.records import QuarantinedPair, ThinkingExample
from qft_pipeline.resources import QftSettings, resources


def _example(n: int, split: str) -> ThinkingExample:
    return ThinkingExample(
        id=f"e{n}", question=f"问题 {n}？", answer=f"答案 {n}。", source_file="a.md", source_line=n, split=split
    )


PARSED = ParseResult(
    examples=[_example(1, "train")],
    quarantined=[QuarantinedPair(file="b.md", line=3, reason="missing_answer: no answer")],
    warnings=["b.md:3: missing_answer"],
    files_read=2,
)
SPLITS = SplitResult(
    train=[_example(1, "train"), _example(2, "train")],
    validation=[_example(3, "validation")],
    test=[_example(4, "test")],
    report={"near_duplicate_groups": 0, "warnings": []},
)


@pytest.fixture
def settings(tmp_path: Path) -> QftSettings:
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump({"paths": {"artifacts_dir": str(tmp_path / "artifacts")}}), encoding="utf-8")
    return QftSettings(config_file=str(config_file))


def test_values_reach_the_next_asset_as_returned_and_lie_in_the_run_folder_as_files(settings, tmp_path) -> None:
    received = {}

    @dg.asset
    def parsed() -> ParseResult:
        return PARSED

    @dg.asset
    def splits() -> SplitResult:
        return SPLITS

    @dg.asset
    def consumer(parsed: ParseResult, splits: SplitResult) -> None:
        received.update(parsed=parsed, splits=splits)

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([parsed, splits, consumer], instance=instance, resources=resources(settings))

    assert result.success
    assert received["splits"] == SPLITS
    assert (received["parsed"].examples, received["parsed"].quarantined) == (PARSED.examples, PARSED.quarantined)
    assert (received["parsed"].warnings, received["parsed"].files_read) == (PARSED.warnings, 2)
    folder = tmp_path / "artifacts" / "runs" / result.run_id
    assert sorted(path.name for path in (folder / "splits").iterdir()) == [
        "split_report.json", "test.parquet", "train.parquet", "validation.parquet"
    ]  # fmt: skip
    assert pq.read_table(folder / "splits" / "train.parquet").column("id").to_pylist() == ["e1", "e2"]
    (materialization,) = result.asset_materializations_for_node("parsed")
    assert materialization.metadata["path"].value == str(folder / "parsed" / "examples.parquet")
    assert (folder / "parsed" / "quarantine.json").is_file()


def test_a_value_of_a_type_it_does_not_store_is_refused_naming_the_asset(settings) -> None:
    @dg.asset
    def loose() -> dict:
        return {}

    with dg.DagsterInstance.ephemeral() as instance:
        with pytest.raises(TypeError, match=r"^asset 'loose': the artifact IO manager stores no <class 'dict'>"):
            dg.materialize([loose], instance=instance, resources=resources(settings))


REFERENCE = ModelEvaluation(
    variant="merged",
    format=None,
    method="bf16",
    bits=16,
    weights_bytes=1234,
    load_seconds=0.5,
    text=TextScores(perplexity=3.25, tokens=7, predictions=(torch.tensor([1, 2, 3]),)),
    probes=ProbeScores(choices=(0, 1), script_log_probs=(torch.tensor([-0.5, -1.0]), torch.tensor([-0.25, -2.0]))),
    generation=GenerationScores(answers=("答案",), latency_seconds=0.25, tokens_per_second=12.0),
    metrics={"char_rouge_l": 0.5},
)


def _reference_assets(value: ModelEvaluation, received: dict) -> list:
    @dg.asset
    def reference() -> ModelEvaluation:
        return value

    @dg.asset
    def consumer(reference: ModelEvaluation) -> None:
        received["reference"] = reference

    return [reference, consumer]


def test_the_reference_scores_reload_with_their_tensors(settings) -> None:
    received = {}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(_reference_assets(REFERENCE, received), instance=instance, resources=resources(settings))

    assert result.success
    loaded = received["reference"]
    assert (loaded.variant, loaded.metrics, loaded.generation) == ("merged", {"char_rouge_l": 0.5}, REFERENCE.generation)
    assert loaded.text.predictions[0].tolist() == [1, 2, 3]
    assert [tensor.tolist() for tensor in loaded.probes.script_log_probs] == [[-0.5, -1.0], [-0.25, -2.0]]


def test_a_reference_scores_file_holding_other_objects_is_refused(settings, tmp_path) -> None:
    """The file is read with torch's weights-only unpickler: a pickle that names any other class is not loaded."""
    received = {}
    assets = _reference_assets(REFERENCE, received)
    with dg.DagsterInstance.ephemeral() as instance:
        first = dg.materialize(assets, instance=instance, resources=resources(settings))
        (path,) = (tmp_path / "artifacts" / "runs" / first.run_id).rglob("reference_scores.pt")
        torch.save({"scores": REFERENCE, "payload": Path("/etc/passwd")}, path)
        received.clear()
        second = dg.materialize(
            assets, selection=["consumer"], instance=instance, resources=resources(settings), raise_on_error=False
        )

    assert not second.success and received == {}
    (failure,) = [event for event in second.all_events if event.is_step_failure]
    cause = failure.event_specific_data.error.cause
    assert cause.cls_name == "UnpicklingError" and "Weights only load failed" in cause.message
