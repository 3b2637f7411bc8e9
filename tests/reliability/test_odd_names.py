"""File names are data: a corpus file whose name holds bytes that are not UTF-8, or a control character, is
parsed and reported under an escaped name; no command or asset fails on it and no other file's output is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qft_core.cli import main as qft
from qft_core.data.corpus import scan_corpus
from qft_core.data.sources import printable_name
from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.runner import materialize_graph
from tests.reliability.conftest import write_config

PAIR = "### Q: {question}\n<thinking>\n先回忆定义。\n</thinking>\n### A: 这是答案。\n"
# name on disk (bytes) → the name reports carry
ODD_NAMES = {
    b"latin1-\xe9t\xe9.md": "latin1-\\xe9t\\xe9.md",
    b"gbk-\xc3\xdc\xc2\xeb.md": "gbk-\\xc3\\xdc\\xc2\\xeb.md",
    b"new\nline.md": "new\\x0aline.md",
    b"tab\tand-del\x7f.md": "tab\\x09and-del\\x7f.md",
    "密码学.md".encode(): "密码学.md",
}


def test_printable_name_escapes_bytes_that_are_not_utf8_and_control_characters_only() -> None:
    assert printable_name(os.fsdecode(b"a\xff\x80b.md")) == "a\\xff\\x80b.md"
    assert printable_name("x\ny\r\x00.md") == "x\\x0ay\\x0d\\x00.md"
    assert printable_name("分组密码 AES-128 (v2).md") == "分组密码 AES-128 (v2).md"


@pytest.fixture
def odd_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    (corpus / os.fsdecode(b"sub\xff")).mkdir(parents=True)
    for index, name in enumerate(ODD_NAMES):
        (corpus / os.fsdecode(name)).write_text(PAIR.format(question=f"问题 {index}：什么是 AES？"), encoding="utf-8")
    (corpus / os.fsdecode(b"sub\xff") / "inner.md").write_text(PAIR.format(question="子目录里的问题？"), encoding="utf-8")
    return corpus


def test_qft_parse_reports_odd_file_names_escaped_and_keeps_every_file(odd_corpus: Path, tmp_path: Path) -> None:
    out, report_file = tmp_path / "examples.parquet", tmp_path / "report.json"

    assert qft(["parse", str(odd_corpus), "--out", str(out), "--report", str(report_file)]) == 0

    expected = sorted([*ODD_NAMES.values(), "sub\\xff/inner.md"])
    examples = read_parquet(out, ThinkingExample)
    assert sorted(example.source_file for example in examples) == expected
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert (report["files_read"], report["parsed"], report["quarantined"]) == (6, 6, 0)
    assert [entry.path for entry in scan_corpus(odd_corpus).files] == expected


def test_qft_parse_report_names_an_unreadable_odd_file(odd_corpus: Path, tmp_path: Path) -> None:
    (odd_corpus / os.fsdecode(b"binary-\xff.md")).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    report_file = tmp_path / "report.json"

    assert qft(["parse", str(odd_corpus), "--out", str(tmp_path / "x.parquet"), "--report", str(report_file)]) == 0

    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["parsed"] == 6
    assert [(item["file"], item["reason"].split(":")[0]) for item in report["quarantine"]] == [
        ("binary-\\xff.md", "binary_file")
    ]


@pytest.mark.slow
def test_the_data_assets_read_a_corpus_with_odd_file_names(odd_corpus: Path, tmp_path: Path, dagster_home: Path) -> None:
    config_file = write_config(tmp_path / "qft.yaml", odd_corpus, tmp_path / "artifacts")

    outcome = materialize_graph(config_file=str(config_file), selection="key:raw_thinking_documents or key:parsed_thinking_examples")

    assert outcome.success, outcome.failures
    parsed = read_parquet(Path(outcome.artifacts["parsed_thinking_examples"]), ThinkingExample)
    assert sorted(example.source_file for example in parsed) == sorted([*ODD_NAMES.values(), "sub\\xff/inner.md"])
