"""The bad-input corpus through `qft parse` and through the Dagster data assets: every pair is parsed or
quarantined as its file declares, nothing crashes or blocks, no good pair is lost, and every quarantine record
names its file and line."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from qft_core.cli import main
from qft_core.config import DataConfig
from qft_core.data.corpus import scan_corpus
from qft_core.data.parse import parse_paths
from qft_core.records import ThinkingExample, read_parquet
from qft_pipeline.runner import materialize_graph
from tests.reliability.bad_inputs import (
    MISSING_ANSWER,
    UNCLOSED,
    WHOLE_FILE_CODES,
    BadCorpus,
    good,
    warning_codes,
    write_bad_corpus,
)
from tests.reliability.conftest import write_config

NOT_REGULAR = "unreadable: not a regular file (a FIFO, a device or a socket)"


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> BadCorpus:
    return write_bad_corpus(tmp_path_factory.mktemp("bad-inputs") / "corpus")


def assert_every_pair_accounted_for(corpus: BadCorpus, report: dict, examples: list[ThinkingExample]) -> None:
    """The report and the examples against what each file of the corpus declares."""
    counts = (report["files_read"], report["pairs_found"], report["parsed"], report["quarantined"])
    assert counts == (corpus.files_read, corpus.pairs_found, corpus.parsed, corpus.quarantined)
    assert report["parsed"] + report["quarantined"] == report["pairs_found"]
    assert len(examples) + len(report["quarantine"]) == report["pairs_found"]

    reasons: dict[str, Counter[str]] = {}
    for item in report["quarantine"]:
        code = item["reason"].split(":")[0]
        assert item["file"] in corpus.by_name(), item
        assert item["line"] == 0 if code in WHOLE_FILE_CODES else item["line"] >= 1, item
        reasons.setdefault(item["file"], Counter())[code] += 1
    assert reasons == corpus.reasons()

    parsed: dict[str, list[str]] = {}
    for example in examples:
        parsed.setdefault(example.source_file, []).append(example.question)
    assert parsed == {entry.name: list(entry.good) for entry in corpus.inputs if entry.good}
    questions = {example.question for example in examples}
    assert [question for question in corpus.good_questions if question not in questions] == []

    expected_warnings = {entry.name: set(entry.warnings) for entry in corpus.inputs if entry.warnings}
    assert warning_codes(report["warnings"]) == expected_warnings


def test_corpus_holds_at_least_forty_odd_files_of_every_kind(bad_corpus: BadCorpus) -> None:
    assert bad_corpus.odd_files >= 40
    assert {code for counter in bad_corpus.reasons().values() for code in counter} >= {
        "unclosed_tag", "stray_tag", "mismatched_tag", "misplaced_tag", "empty_thinking", "too_deep",
        "missing_answer", "answer_without_question", "empty_question", "empty_answer",
        "binary_file", "undecodable", "file_too_large",
    }  # fmt: skip
    assert (bad_corpus.root / "huge.md").stat().st_size > 4_000_000
    assert (bad_corpus.root / "too_large.md").stat().st_size > DataConfig().max_file_bytes


def test_cli_parse_accounts_for_every_pair_of_the_bad_corpus(bad_corpus: BadCorpus, tmp_path: Path, capsys) -> None:
    out, report_path = tmp_path / "examples.parquet", tmp_path / "report.json"

    code = main(["parse", str(bad_corpus.root), "--out", str(out), "--report", str(report_path)])

    assert code == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith(
        f"parsed {bad_corpus.parsed} of {bad_corpus.pairs_found} pairs from {bad_corpus.files_read} file(s); "
        f"{bad_corpus.quarantined} quarantined"
    )
    examples = read_parquet(out, ThinkingExample)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert_every_pair_accounted_for(bad_corpus, report, examples)
    assert len({example.id for example in examples}) == len(examples)
    outside = (bad_corpus.root.parent / f"{bad_corpus.root.name}-outside" / "secret.md").resolve()
    assert {
        "symlink_loop_a.md: broken_symlink: link loop: it never reaches a file; skipped",
        "symlink_dangling.md: broken_symlink: link target does not exist; skipped",
        f"symlink_outside.md: symlink_outside_root: points to {outside}, outside {bad_corpus.root}; skipped",
        "symlink_to_good.md: duplicate_file: same file as good.md; read once",
    } <= set(report["warnings"])


def test_recovered_pairs_keep_their_text_and_carry_their_warning(bad_corpus: BadCorpus) -> None:
    result = parse_paths([bad_corpus.root], DataConfig())
    by_file: dict[str, list[ThinkingExample]] = {}
    for example in result.examples:
        by_file.setdefault(example.source_file, []).append(example)

    damaged = by_file["invalid_utf8.md"]
    assert ["\ufffd" in example.answer for example in damaged] == [True, True, False]
    assert [any("encoding" in warning for warning in example.warnings) for example in damaged] == [True, True, False]
    assert "對稱加密" in by_file["traditional.md"][0].original_text
    assert by_file["gb18030.md"][0].answer.endswith("生僻字𠮷。")
    assert len(by_file["long_line.md"][0].answer) > 350_000
    chain, depth = by_file["depth_limit.md"][0].thinking, 0
    while chain:
        depth, chain = depth + 1, chain[0].children
    assert depth == 16
    code_answer = by_file["markers_in_code.md"][0].answer
    assert "Q: 这不是问题" in code_answer and "# 这不是分类" in code_answer and "## 也不是分类" in code_answer


def test_corpus_manifest_lists_exactly_the_files_the_parser_reads(bad_corpus: BadCorpus) -> None:
    manifest = scan_corpus(bad_corpus.root)

    unreadable = {entry.name for entry in bad_corpus.inputs if entry.bad == ("unreadable",)}
    read = {entry.name for entry in bad_corpus.inputs if entry.read} - unreadable
    assert {entry.path for entry in manifest.files} == read
    assert {line.split(":")[0] for line in manifest.warnings} >= {"symlink_outside.md", "symlink_outside_dir"}
    assert all("secret" not in entry.path for entry in manifest.files)


def test_cli_exits_non_zero_with_one_line_when_nothing_can_be_parsed(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "binary.md").write_bytes(b"\x89PNG\x00\x00")
    (corpus / "undecodable.md").write_bytes(b"Q: \xff\xff\n")
    (corpus / "broken.md").write_text(UNCLOSED + "\n" + MISSING_ANSWER, encoding="utf-8")
    (corpus / "empty.md").write_bytes(b"")
    out, report_path = tmp_path / "x.parquet", tmp_path / "r.json"

    code = main(["parse", str(corpus), "--out", str(out), "--report", str(report_path)])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip().splitlines() == [
        "qft parse: nothing could be parsed from 4 file(s): binary_file, missing_answer, unclosed_tag, undecodable"
    ]
    assert not out.exists()
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert (report["files_read"], report["pairs_found"], report["parsed"], report["quarantined"]) == (4, 4, 0, 4)


def test_cli_reads_only_regular_files_and_never_blocks_on_a_fifo_or_device(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    pair = good("fifo_neighbour", 1)
    (tmp_path / "good.md").write_text(pair.markdown, encoding="utf-8")
    out, report_path = tmp_path / "x.parquet", tmp_path / "r.json"

    paths = [str(fifo), "/dev/zero", str(tmp_path / "good.md")]
    code = main(["parse", *paths, "--out", str(out), "--report", str(report_path)])

    assert code == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["quarantine"] == [
        {"file": "pipe.md", "line": 0, "reason": NOT_REGULAR},
        {"file": "zero", "line": 0, "reason": NOT_REGULAR},
    ]
    assert [example.question for example in read_parquet(out, ThinkingExample)] == [pair.question]


def test_a_folder_that_cannot_be_listed_is_skipped_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.md").write_text(good("locked", 1).markdown, encoding="utf-8")
    (tmp_path / "b.md").write_text(good("open", 1).markdown, encoding="utf-8")
    list_folder = Path.iterdir

    def refusing_iterdir(folder: Path):
        if folder.name == "locked":
            raise PermissionError(13, "Permission denied", str(folder))
        return list_folder(folder)

    # Simulated: as root (where these tests usually run) a folder's mode does not stop listing it.
    monkeypatch.setattr(Path, "iterdir", refusing_iterdir)
    result = parse_paths([tmp_path], DataConfig())

    assert [example.question for example in result.examples] == [good("open", 1).question]
    assert result.warnings == ["locked: unreadable: folder cannot be listed (Permission denied); skipped"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists and reads any folder whatever its mode")
def test_a_folder_without_permission_is_skipped_with_a_warning(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.md").write_text(good("locked", 1).markdown, encoding="utf-8")
    locked.chmod(0)
    try:
        result = parse_paths([tmp_path], DataConfig())
    finally:
        locked.chmod(0o755)
    assert result.examples == []
    assert result.warnings == ["locked: unreadable: folder cannot be listed (Permission denied); skipped"]


@pytest.mark.slow
def test_data_assets_account_for_every_pair_of_the_bad_corpus(tmp_path: Path, dagster_home: Path) -> None:
    # Fewer unclosed fences than the CLI corpus: the parsed asset logs every warning as a Dagster event.
    corpus = write_bad_corpus(tmp_path / "corpus", unclosed_fences=300)
    config_file = write_config(tmp_path / "qft.yaml", corpus.root, tmp_path / "artifacts")

    outcome = materialize_graph(config_file=str(config_file), selection="group:data")

    assert outcome.success, outcome.failures
    parsed_path = Path(outcome.artifacts["parsed_thinking_examples"])
    report = json.loads((parsed_path.parent / "quarantine.json").read_text(encoding="utf-8"))
    assert_every_pair_accounted_for(corpus, report, read_parquet(parsed_path, ThinkingExample))
    manifest = json.loads(Path(outcome.artifacts["raw_thinking_documents"]).read_text(encoding="utf-8"))
    unreadable = {entry.name for entry in corpus.inputs if entry.bad == ("unreadable",)}
    assert {entry["path"] for entry in manifest["files"]} == {e.name for e in corpus.inputs if e.read} - unreadable
    splits = Path(outcome.artifacts["term_balanced_splits"])
    splits_read = [read_parquet(splits / f"{name}.parquet", ThinkingExample) for name in ("train", "validation", "test")]
    rows = sum(len(split) for split in splits_read)
    assert rows == corpus.parsed
