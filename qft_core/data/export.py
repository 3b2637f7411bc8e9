"""The splits in the formats other trainers read: OpenAI/TRL `messages` with `reasoning_content`, and ShareGPT and
Alpaca with the reasoning in `<think>…</think>` as LLaMA-Factory reads them for reasoning models."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qft_core.data.split import SPLIT_NAMES
from qft_core.model.chat import THINK_CLOSE, THINK_OPEN, THINKING_SCAFFOLD, Turn, conversation_messages
from qft_core.publish import publishing_file
from qft_core.records import RecordFileError, ThinkingExample, read_records

ExportFormat = Literal["messages", "sharegpt", "alpaca"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("messages", "sharegpt", "alpaca")
# LLaMA-Factory's dataset registry, read from the folder its `dataset_dir` names.
DATASET_INFO = "dataset_info.json"

# How LLaMA-Factory (data/README.md) is told where each format keeps the question and the response. ShareGPT's
# tags are its defaults (from/value, human/gpt), written out so the entry reads without the README.
_DATASET_INFO_ENTRIES: dict[str, dict] = {
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    },
    "alpaca": {
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    },
}


class ExportError(ValueError):
    """A splits folder that cannot be exported; the message names the folder or file."""


@dataclass(frozen=True)
class DatasetExport:
    """The files one format's export wrote, and how many examples each split holds."""

    dataset_format: ExportFormat
    out_dir: Path
    files: tuple[Path, ...]
    counts: dict[str, int]


def think_tag_problem(example: ThinkingExample) -> str | None:
    """Why the <think> formats cannot carry `example` (a reader splitting at the first </think> would cut it in
    the wrong place), as one line naming its file, line and id; None when they can."""
    for part, text in (("reasoning", example.reasoning), ("answer", example.answer)):
        if THINK_OPEN in text or THINK_CLOSE in text:
            return (
                f"{example.source_file}:{example.source_line}: example {example.id}: its {part} contains a "
                f"{THINK_OPEN} or {THINK_CLOSE} tag, which the <think> formats cannot carry"
            )
    return None


def assistant_text(example: ThinkingExample) -> str:
    """The assistant turn as Qwen3-Thinking writes it and LLaMA-Factory's reasoning templates expect a response
    with chain of thought: `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` (qwen3's thought words)."""
    problem = think_tag_problem(example)
    if problem is not None:
        raise ExportError(problem)
    return f"{THINK_OPEN}\n{example.reasoning}{THINKING_SCAFFOLD}{example.answer}"


def without_think_tags(
    splits: dict[str, Sequence[ThinkingExample]],
) -> tuple[dict[str, list[ThinkingExample]], list[str]]:
    """The splits less the examples the <think> formats cannot carry, and one line for each one left out: the
    pipeline exports every other example instead of failing on one."""
    kept, left_out = {}, []
    for split, examples in splits.items():
        kept[split] = []
        for example in examples:
            problem = think_tag_problem(example)
            if problem is None:
                kept[split].append(example)
            else:
                left_out.append(problem)
    return kept, left_out


def export_record(example: ThinkingExample, dataset_format: ExportFormat) -> dict:
    """One example as one line of the format, with who wrote its reasoning beside it: `thinking_origin` (expert,
    model, template, none) and, for a model's, `thinking_writer` (trainers ignore keys their mapping does not name).

    - messages: {"id", "messages": [user, assistant with `content` (answer) and `reasoning_content`]}, the chat
      messages Qwen3-Thinking's template renders (what TRL's SFTTrainer passes to it);
    - sharegpt: {"id", "conversations": [{"from": "human", "value"}, {"from": "gpt", "value": assistant_text}]};
    - alpaca: {"id", "instruction", "input": "", "output": assistant_text}.
    """
    origin = {"thinking_origin": example.thinking_origin}
    if example.thinking_writer is not None and example.thinking_origin == "model":
        origin["thinking_writer"] = example.thinking_writer
    if dataset_format == "messages":
        turn = Turn(question=example.question, answer=example.answer, reasoning=example.reasoning)
        return {"id": example.id, "messages": conversation_messages([turn]), **origin}
    if dataset_format == "sharegpt":
        return {
            "id": example.id,
            "conversations": [
                {"from": "human", "value": example.question},
                {"from": "gpt", "value": assistant_text(example)},
            ],
            **origin,
        }
    if dataset_format == "alpaca":
        return {
            "id": example.id, "instruction": example.question, "input": "", "output": assistant_text(example), **origin
        }
    raise ExportError(f"unknown export format '{dataset_format}'; choose one of {', '.join(EXPORT_FORMATS)}")


def read_split_files(splits_dir: str | Path) -> dict[str, list[ThinkingExample]]:
    """The examples of each split file (train, validation, test .parquet) the folder holds, in split order."""
    folder = Path(splits_dir)
    if not folder.is_dir():
        raise ExportError(f"no such splits folder: {folder}")
    splits = {}
    for name in SPLIT_NAMES:
        path = folder / f"{name}.parquet"
        if not path.is_file():
            continue
        try:
            splits[name] = read_records(path, ThinkingExample, "examples")
        except RecordFileError as error:
            raise ExportError(str(error)) from None
    if not splits:
        files = ", ".join(f"{name}.parquet" for name in SPLIT_NAMES)
        raise ExportError(f"{folder}: none of {files} here (a splits folder from `qft split`)")
    return splits


def export_splits(
    splits: dict[str, Sequence[ThinkingExample]],
    dataset_format: ExportFormat,
    out_dir: str | Path,
    name: str = "qft",
) -> DatasetExport:
    """Write `<split>.jsonl` for every split in `dataset_format` into `out_dir`; for sharegpt and alpaca also
    dataset_info.json with one LLaMA-Factory entry per split, named `<name>_<format>_<split>`."""
    if dataset_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format '{dataset_format}'; choose one of {', '.join(EXPORT_FORMATS)}")
    # Every record first: an example the format cannot carry stops the export before any file is written.
    rows = {
        split: [export_record(example, dataset_format) for example in examples] for split, examples in splits.items()
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [_write_jsonl(split_rows, out_dir / f"{split}.jsonl") for split, split_rows in rows.items()]
    if dataset_format in _DATASET_INFO_ENTRIES:
        entry = _DATASET_INFO_ENTRIES[dataset_format]
        info = {f"{name}_{dataset_format}_{split}": {"file_name": f"{split}.jsonl", **entry} for split in splits}
        info_path = out_dir / DATASET_INFO
        info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        files.append(info_path)
    counts = {split: len(examples) for split, examples in splits.items()}
    return DatasetExport(dataset_format, out_dir, tuple(files), counts)


def _write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    with publishing_file(path) as staging, staging.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
