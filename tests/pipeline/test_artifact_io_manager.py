"""The artifact IO manager: a value an asset returns is the value the next asset receives, kept as the files people
read in the asset's folder of the run; a type it does not store is refused by name."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from qft_core.data.parse import ParseResult
from qft_core.data.split import SplitResult
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
