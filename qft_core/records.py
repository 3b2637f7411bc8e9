"""The records that flow through the pipeline, with lossless JSONL and parquet round trips."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Self

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qft_core.publish import publishing_file


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ThinkingStructure(Record):
    """One reasoning step; nested `<thinking>` blocks become its children (sub-steps)."""

    text: str
    line: int = Field(0, ge=0)
    children: list[ThinkingStructure] = Field(default_factory=list)

    def depth(self) -> int:
        return 1 + max((child.depth() for child in self.children), default=0)

    def walk(self) -> Iterable[ThinkingStructure]:
        yield self
        for child in self.children:
            yield from child.walk()


def render_thinking(steps: list[ThinkingStructure]) -> str:
    """The reasoning as one text, steps in document order separated by blank lines."""
    return "\n\n".join(step.text.strip() for root in steps for step in root.walk() if step.text.strip())


class CryptoTerm(Record):
    id: str
    zh: str
    en: str
    abbreviation: str | None = None
    synonyms: list[str] = Field(default_factory=list)
    category: str
    complexity: int = Field(ge=1, le=5)

    def surface_forms(self) -> list[str]:
        forms = [self.zh, self.en, *(self.synonyms)]
        if self.abbreviation:
            forms.append(self.abbreviation)
        return [form for form in dict.fromkeys(forms) if form]


class ChineseMetrics(Record):
    char_count: int = Field(ge=0)
    word_count: int = Field(ge=0)
    cjk_ratio: float = Field(ge=0.0, le=1.0)
    punctuation_score: float = Field(ge=0.0, le=1.0)
    repetition_ratio: float = Field(ge=0.0, le=1.0)
    traditional_chars: int = Field(0, ge=0)
    quality_score: float = Field(ge=0.0, le=1.0)


class TrainingExample(Record):
    """A question and its expert answer, with where it came from."""

    id: str
    question: str
    answer: str
    source_file: str
    source_line: int = Field(ge=1)
    category_path: list[str] = Field(default_factory=list)
    category: str | None = None
    difficulty: int | None = Field(None, ge=1, le=5)
    source: str | None = None
    tags: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


ThinkingOrigin = Literal["expert", "model", "template", "none"]
# Who wrote an example's reasoning, in the order the reports list them: an expert in the corpus, a model (the one
# being fine-tuned or an OpenAI-compatible endpoint, accepted by qft_core.evaluate.written_reasoning), the template
# generator (qft_core.data.thinking), or nobody.
THINKING_ORIGINS: tuple[str, ...] = ("expert", "model", "template", "none")


class ThinkingExample(TrainingExample):
    """A training example with its reasoning tree and, once annotated, its terms and text metrics.

    `thinking_writer` names the model or endpoint that wrote the reasoning (origin "model"), or whose reasoning
    was refused; `thinking_rejected` says why it was refused (the example then carries the template's or none).
    """

    thinking: list[ThinkingStructure] = Field(default_factory=list)
    thinking_origin: ThinkingOrigin = "expert"
    thinking_writer: str | None = None
    thinking_rejected: str | None = None
    original_text: str | None = None
    terms: list[str] = Field(default_factory=list)
    term_categories: list[str] = Field(default_factory=list)
    term_complexity: float = Field(0.0, ge=0.0)
    metrics: ChineseMetrics | None = None
    thinking_quality: float | None = Field(None, ge=0.0, le=1.0)
    split: Literal["train", "validation", "test"] | None = None

    @field_validator("thinking_origin", mode="before")
    @classmethod
    def _template_was_called_generated(cls, value: object) -> object:
        # Examples written before model-written reasoning existed call the template's traces "generated".
        return "template" if value == "generated" else value

    @property
    def reasoning(self) -> str:
        return render_thinking(self.thinking)

    def thinking_depth(self) -> int:
        return max((root.depth() for root in self.thinking), default=0)


class QuarantinedPair(Record):
    """A pair (or a whole file) that could not be parsed, kept with its raw text for a human to fix."""

    file: str
    line: int = Field(ge=0)
    reason: str
    raw: str = ""


# Columns whose values are nested models: stored as JSON text so the parquet schema stays flat.
_JSON_COLUMNS = {"thinking", "metrics"}


def to_rows(records: Iterable[Record]) -> list[dict]:
    return [record.model_dump(mode="json") for record in records]


def to_table(records: Iterable[Record], model: type[Record]) -> pa.Table:
    rows = to_rows(records)
    columns: dict[str, list] = {name: [] for name in model.model_fields}
    for row in rows:
        for name in columns:
            value = row.get(name)
            columns[name].append(json.dumps(value, ensure_ascii=False) if name in _JSON_COLUMNS else value)
    return pa.table(columns) if rows else pa.table({name: pa.array([], pa.string()) for name in columns})


class RecordFileError(ValueError):
    """A records file that cannot be read or written as `model`'s rows; the message names the file, and the row
    and column at fault."""


def from_table(table: pa.Table, model: type[Self], source: str = "<table>") -> list[Self]:
    records = []
    for index, row in enumerate(table.to_pylist()):
        try:
            for name in _JSON_COLUMNS & row.keys():
                if isinstance(row[name], str):
                    row[name] = json.loads(row[name])
            records.append(model.model_validate(row))
        except json.JSONDecodeError as error:
            raise RecordFileError(f"{source}: row {index}: a JSON column is not valid JSON ({error})") from None
        except ValidationError as error:
            first = error.errors()[0]
            column = ".".join(str(part) for part in first["loc"]) or "<row>"
            more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
            message = f"{source}: row {index}: column '{column}': {first['msg']}{more}; not a {model.__name__} file"
            raise RecordFileError(message) from None
    return records


def write_parquet(records: Iterable[Record], model: type[Record], path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise RecordFileError(f"{path}: is a folder; name the parquet file to write")
    try:
        with publishing_file(path) as staging:
            pq.write_table(to_table(records, model), staging)
    except OSError as error:
        raise RecordFileError(f"{path}: cannot write: {error.strerror or error}") from None
    return path


def read_parquet(path: str | Path, model: type[Self]) -> list[Self]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RecordFileError(f"{path}: not a readable parquet file ({reason})") from None
    return from_table(table, model, str(path))


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    path = Path(path)
    with publishing_file(path) as staging, staging.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
    return path


def read_jsonl(path: str | Path, model: type[Self]) -> list[Self]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return [model.model_validate_json(line) for line in handle if line.strip()]


def read_records(path: str | Path, model: type[Self], what: str) -> list[Self]:
    """Records of `model` from a .parquet or .jsonl file; `what` names them in the one-line error an unreadable
    or malformed file raises (RecordFileError)."""
    path = Path(path)
    readers = {".parquet": read_parquet, ".jsonl": read_jsonl}
    if path.suffix not in readers:
        raise RecordFileError(f"{path}: {what} are read from .parquet or .jsonl files")
    try:
        return readers[path.suffix](path, model)
    except RecordFileError:
        raise
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "<record>"
        raise RecordFileError(f"{path}: not a file of {what}: '{key}': {first['msg']}") from None
    except (OSError, ValueError) as error:
        raise RecordFileError(f"{path}: cannot read {what}: {str(error).splitlines()[0]}") from None
