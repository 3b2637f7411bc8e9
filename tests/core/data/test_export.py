"""Dataset export: each format is read back by its own rules (LLaMA-Factory's dataset_info.json and data/README.md
for ShareGPT and Alpaca, Qwen3-Thinking's chat template for the messages) and gives back the same examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qft_core.cli import main
from qft_core.data.export import DATASET_INFO, ExportError, export_splits, read_split_files, without_think_tags
from qft_core.model.chat import render_messages
from qft_core.model.tokenizer import load_qwen3_tokenizer
from qft_core.records import ThinkingExample, ThinkingStructure, write_parquet

# LLaMA-Factory's qwen3 template (ReasoningTemplate) finds the chain of thought between these thought words.
THOUGHT = re.compile(r"<think>\n(.*?)\n</think>\n\n", re.DOTALL)


def _example(key: str, question: str, answer: str, steps: list[ThinkingStructure], split: str) -> ThinkingExample:
    return ThinkingExample(id=key, question=question, answer=answer, thinking=steps, source_file="t.md",
                           source_line=1, split=split)


SPLITS = {
    "train": [
        _example("a1", "什么是 AES？", "AES 是分组密码，分组长度 128 位。\n\n密钥长度可为 128、192 或 256 位。",
                 [ThinkingStructure(text="先说定义。", children=[ThinkingStructure(text="再说 \"分组\" 长度。")])],
                 "train"),
        _example("a2", "SM3 的输出有多长？", "256 位。", [], "train"),
    ],
    "validation": [_example("v1", "HMAC 为何抗长度扩展？", "因为外层再哈希一次。", [ThinkingStructure(text="看结构。")],
                            "validation")],
    "test": [_example("t1", "格密码\t抗量子吗？", "目前认为是。", [ThinkingStructure(text="LWE 问题。")], "test")],
}


@pytest.fixture(scope="module")
def splits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("splits")
    for name, examples in SPLITS.items():
        write_parquet(examples, ThinkingExample, folder / f"{name}.parquet")
    return folder


def _expected(split: str) -> list[tuple[str, str, str, str]]:
    return [(example.id, example.question, example.reasoning, example.answer) for example in SPLITS[split]]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _read_llamafactory(folder: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """Every dataset of dataset_info.json read as LLaMA-Factory's data/README.md describes: ShareGPT turns alternate
    user (odd positions) and assistant under the role and content tags; an Alpaca prompt is instruction, then
    input after a newline when there is one; the reasoning is the response's `<think>` block."""
    datasets = {}
    for name, entry in json.loads((folder / DATASET_INFO).read_text(encoding="utf-8")).items():
        columns, rows = entry["columns"], _lines(folder / entry["file_name"])
        recovered = []
        for row in rows:
            if entry["formatting"] == "sharegpt":
                tags = entry["tags"]
                turns = row[columns["messages"]]
                assert [turn[tags["role_tag"]] for turn in turns] == [tags["user_tag"], tags["assistant_tag"]]
                prompt, response = (turn[tags["content_tag"]] for turn in turns)
            else:
                assert entry["formatting"] == "alpaca"
                query = row[columns["query"]]
                prompt = row[columns["prompt"]] + (f"\n{query}" if query else "")
                response = row[columns["response"]]
            thought = THOUGHT.match(response)
            assert thought is not None, response
            recovered.append((row["id"], prompt, thought.group(1), response[thought.end():]))
        datasets[name] = recovered
    return datasets


@pytest.mark.parametrize("dataset_format", ["sharegpt", "alpaca"])
def test_llamafactory_formats_read_back_as_the_same_examples(splits_dir, tmp_path, dataset_format) -> None:
    export = export_splits(read_split_files(splits_dir), dataset_format, tmp_path)

    assert _read_llamafactory(tmp_path) == {f"qft_{dataset_format}_{split}": _expected(split) for split in SPLITS}
    assert export.counts == {"train": 2, "validation": 1, "test": 1}
    assert sorted(path.name for path in export.files) == sorted(
        [DATASET_INFO, "train.jsonl", "validation.jsonl", "test.jsonl"]
    )


def test_messages_carry_reasoning_content_and_render_as_qwen3_thinking(splits_dir, tmp_path) -> None:
    export_splits(read_split_files(splits_dir), "messages", tmp_path)
    export_splits(read_split_files(splits_dir), "sharegpt", tmp_path / "sharegpt")
    tokenizer = load_qwen3_tokenizer(tmp_path / "model-cache")

    for split in SPLITS:
        rows = _lines(tmp_path / f"{split}.jsonl")
        recovered = []
        for row in rows:
            user, assistant = row["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            recovered.append((row["id"], user["content"], assistant["reasoning_content"], assistant["content"]))
        assert recovered == _expected(split)
        # Qwen3-Thinking's template renders the messages with the very assistant text the <think> formats carry.
        for row, shared in zip(rows, _lines(tmp_path / "sharegpt" / f"{split}.jsonl"), strict=True):
            question, reply = (turn["value"] for turn in shared["conversations"])
            assert render_messages(row["messages"], tokenizer) == (
                f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
            )
    assert not (tmp_path / DATASET_INFO).exists()  # LLaMA-Factory would drop reasoning_content: no entry


def test_export_data_command_writes_the_chosen_format(splits_dir, tmp_path, capsys) -> None:
    assert main(["export-data", str(splits_dir), "--format", "alpaca", "--out", str(tmp_path / "alpaca")]) == 0

    assert "alpaca: train 2, validation 1, test 1 examples" in capsys.readouterr().out
    assert [row["id"] for row in _lines(tmp_path / "alpaca" / "train.jsonl")] == ["a1", "a2"]


def test_folder_with_only_some_splits_exports_those(tmp_path) -> None:
    write_parquet(SPLITS["test"], ThinkingExample, tmp_path / "splits" / "test.parquet")

    export = export_splits(read_split_files(tmp_path / "splits"), "sharegpt", tmp_path / "out")

    assert export.counts == {"test": 1}
    assert list(json.loads((tmp_path / "out" / DATASET_INFO).read_text(encoding="utf-8"))) == ["qft_sharegpt_test"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{missing}", "--format", "alpaca"], "no such splits folder: {missing}"),
        (["{empty}", "--format", "alpaca"], "{empty}: none of train.parquet, validation.parquet, test.parquet here (a splits folder from `qft split`)"),
        (["{bad}", "--format", "alpaca"], "{bad}/train.parquet: row 0: column 'id': Field required (and 7 more); not a ThinkingExample file"),
        (["{good}", "--format", "csv"], "unknown export format 'csv'; choose one of messages, sharegpt, alpaca"),
    ],
)
def test_bad_input_is_one_line_naming_the_folder_or_file(splits_dir, tmp_path, capsys, arguments, message) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    write_parquet([ThinkingStructure(text="not an example")], ThinkingStructure, tmp_path / "bad" / "train.parquet")
    places = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "bad": tmp_path / "bad", "good": splits_dir}
    argv = ["export-data", *(argument.format(**places) for argument in arguments), "--out", str(tmp_path / "out")]

    assert main(argv) == 1

    assert capsys.readouterr().err == f"qft export-data: {message.format(**places)}\n"
    assert not (tmp_path / "out").exists()


def test_reasoning_with_a_think_tag_is_refused_naming_the_example(tmp_path) -> None:
    tagged = _example("x1", "问？", "答 </think> 案。", [ThinkingStructure(text="想。")], "train")

    with pytest.raises(ExportError, match=r"t.md:1: example x1: its answer contains a <think> or </think> tag"):
        export_splits({"train": [tagged]}, "alpaca", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    export_splits({"train": [tagged]}, "messages", tmp_path)  # reasoning_content keeps it apart: no ambiguity


def test_the_pipeline_leaves_out_only_the_examples_the_think_formats_cannot_carry() -> None:
    tagged = _example("x1", "问？", "答。", [ThinkingStructure(text="想 <think> 了。")], "train")
    plain = _example("x2", "问？", "答。", [ThinkingStructure(text="想。")], "train")

    kept, left_out = without_think_tags({"train": [tagged, plain], "test": [plain]})

    assert {split: [example.id for example in examples] for split, examples in kept.items()} == {
        "train": ["x2"], "test": ["x2"],
    }
    assert left_out == ["t.md:1: example x1: its reasoning contains a <think> or </think> tag, which the <think> "
                        "formats cannot carry"]
