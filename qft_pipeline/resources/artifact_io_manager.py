"""The IO manager that carries qft's tabular values between assets and checks: each value is written into its
asset's folder of the run (`artifacts/runs/<run id>/<asset>/`) as the files people read — parquet and JSON — and
read back from the run that materialized it for the run that needs it. The value's type says which files."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import torch
from pydantic import BaseModel

from qft_core.config import QftConfig
from qft_core.data.corpus import CorpusManifest
from qft_core.data.parse import ParseResult
from qft_core.data.split import SPLIT_NAMES, SplitResult
from qft_core.diagnose.advice import SettingChange
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.report import EvaluationReport, read_report
from qft_core.package.compare import GenerationScores, ModelEvaluation, ProbeScores, TextScores
from qft_core.publish import publish_text, publishing_file
from qft_core.records import QuarantinedPair, ThinkingExample, read_jsonl, read_parquet, write_jsonl, write_parquet
from qft_core.train.hardware import HardwareProfile
from qft_core.train.plan import TrainingPlan
from qft_pipeline.artifacts import asset_folder, asset_folder_path, source_materialization
from qft_pipeline.resources.settings import QftSettings

MANIFEST_FILE = "manifest.json"
QUARANTINE_REPORT = "quarantine.json"
EXAMPLES_FILE = "examples.parquet"


class _Files(Protocol):
    def write(self, value: Any, folder: Path) -> Path:
        """Write `value` into `folder`; the file (or folder) people should open, shown as the asset's `path`."""

    def read(self, folder: Path) -> Any: ...


@dataclass(frozen=True)
class _ModelJson:
    model: type[BaseModel]
    name: str

    def write(self, value: BaseModel, folder: Path) -> Path:
        return publish_text(folder / self.name, value.model_dump_json(indent=1))

    def read(self, folder: Path) -> BaseModel:
        return self.model.model_validate_json((folder / self.name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class _ModelListJson:
    model: type[BaseModel]
    name: str

    def write(self, values: list[BaseModel], folder: Path) -> Path:
        rows = [value.model_dump(mode="json") for value in values]
        return publish_text(folder / self.name, json.dumps(rows, ensure_ascii=False, indent=1))

    def read(self, folder: Path) -> list[BaseModel]:
        return [self.model.model_validate(row) for row in json.loads((folder / self.name).read_text(encoding="utf-8"))]


class _Examples:
    def write(self, examples: list[ThinkingExample], folder: Path) -> Path:
        return write_parquet(examples, ThinkingExample, folder / EXAMPLES_FILE)

    def read(self, folder: Path) -> list[ThinkingExample]:
        return read_parquet(folder / EXAMPLES_FILE, ThinkingExample)


class _Parsed:
    """The examples as parquet and the quarantine report as JSON, as `qft parse` writes them (the report keeps no
    quarantined pair's raw text, so a loaded quarantine has none)."""

    def write(self, result: ParseResult, folder: Path) -> Path:
        publish_text(folder / QUARANTINE_REPORT, json.dumps(result.report(), ensure_ascii=False, indent=2))
        return _Examples().write(result.examples, folder)

    def read(self, folder: Path) -> ParseResult:
        report = json.loads((folder / QUARANTINE_REPORT).read_text(encoding="utf-8"))
        return ParseResult(
            examples=_Examples().read(folder),
            quarantined=[QuarantinedPair.model_validate(item) for item in report["quarantine"]],
            warnings=report["warnings"],
            files_read=report["files_read"],
        )


class _Splits:
    """`<split>.parquet` for each split and `split_report.json`, as `qft split` writes them."""

    def write(self, result: SplitResult, folder: Path) -> Path:
        for name, split in result.splits().items():
            write_parquet(split, ThinkingExample, folder / f"{name}.parquet")
        publish_text(folder / "split_report.json", json.dumps(result.report, ensure_ascii=False, indent=2))
        return folder

    def read(self, folder: Path) -> SplitResult:
        splits = {name: read_parquet(folder / f"{name}.parquet", ThinkingExample) for name in SPLIT_NAMES}
        report = json.loads((folder / "split_report.json").read_text(encoding="utf-8"))
        return SplitResult(**splits, report=report)


class _GoldSet:
    def write(self, items: list[GoldItem], folder: Path) -> Path:
        return write_jsonl(items, folder / "gold_set.jsonl")

    def read(self, folder: Path) -> list[GoldItem]:
        return read_jsonl(folder / "gold_set.jsonl", GoldItem)


class _Report:
    """The evaluation writes its own report (Markdown, JSON, charts, generations) into the asset's folder."""

    def write(self, report: EvaluationReport, folder: Path) -> Path:
        if report.out_dir.resolve() != folder.resolve():
            raise ValueError(f"the evaluation report is in {report.out_dir}, not in its asset's folder {folder}")
        return report.markdown

    def read(self, folder: Path) -> EvaluationReport:
        return read_report(folder)


class _ReferenceScores:
    """The unquantized model's measurements, tensors included (what every variant's comparison row needs)."""

    name = "reference_scores.pt"

    def write(self, evaluation: ModelEvaluation, folder: Path) -> Path:
        with publishing_file(folder / self.name) as staging:
            torch.save(evaluation, staging)
        return folder / self.name

    def read(self, folder: Path) -> ModelEvaluation:
        # Tensors, plain containers and these four dataclasses only: a file that holds anything else is refused.
        with torch.serialization.safe_globals([ModelEvaluation, TextScores, ProbeScores, GenerationScores]):
            return torch.load(folder / self.name, weights_only=True)


_FILES: dict[Any, _Files] = {
    CorpusManifest: _ModelJson(CorpusManifest, MANIFEST_FILE),
    ParseResult: _Parsed(),
    list[ThinkingExample]: _Examples(),
    SplitResult: _Splits(),
    HardwareProfile: _ModelJson(HardwareProfile, "hardware_profile.json"),
    TrainingPlan: _ModelJson(TrainingPlan, "training_plan.json"),
    list[GoldItem]: _GoldSet(),
    EvaluationReport: _Report(),
    ModelEvaluation: _ReferenceScores(),
    list[SettingChange]: _ModelListJson(SettingChange, "advice.json"),
}


def _files_for(context: dg.InputContext | dg.OutputContext) -> _Files:
    annotation = context.dagster_type.typing_type
    if typing.get_origin(annotation) is list:  # typing.List[X] and list[X] alike
        annotation = list[typing.get_args(annotation)]
    try:
        return _FILES[annotation]
    except KeyError:
        raise TypeError(
            f"asset '{context.asset_key.to_user_string()}': the artifact IO manager stores no {annotation}; "
            f"annotate the asset's value with one of {', '.join(sorted(map(str, _FILES)))}"
        ) from None


class ArtifactIOManager(dg.IOManager):
    """Stores each asset's value as files in its folder of the run, and loads the value an asset or check needs
    from the run that materialized it: this run, else the latest (not one whose blocking check failed)."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        folder = asset_folder(_config(context), context.run_id, context.asset_key)
        path = _files_for(context).write(obj, folder)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        event = source_materialization(context.instance, context.step_context.run_id, context.asset_key)
        return _files_for(context).read(asset_folder_path(_config(context), event.run_id, context.asset_key))


def _config(context: dg.InputContext | dg.OutputContext) -> QftConfig:
    # The run's own `qft` resource, so a run config that moves artifacts_dir moves the values too.
    settings: QftSettings = context.resources.qft
    return settings.load()


@dg.io_manager(required_resource_keys={"qft"}, description=ArtifactIOManager.__doc__)
def artifact_io_manager() -> ArtifactIOManager:
    return ArtifactIOManager()
