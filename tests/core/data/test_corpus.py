import hashlib
import os

import pytest

from qft_core.config import DataConfig
from qft_core.data.corpus import CorpusNotFoundError, scan_corpus
from qft_core.data.parse import CorpusChangedError, parse_manifest


def test_manifest_lists_markdown_files_sorted_with_hashes(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_bytes("问：二\n答：二\n".encode())
    (tmp_path / "one.md").write_bytes(b"Q: one\nA: one\n")
    (tmp_path / "notes.txt").write_text("ignored")
    manifest = scan_corpus(tmp_path)
    assert [entry.path for entry in manifest.files] == ["b/two.md", "one.md"]
    assert manifest.files[1].sha256 == hashlib.sha256(b"Q: one\nA: one\n").hexdigest()
    assert manifest.total_bytes == len("问：二\n答：二\n".encode()) + 14


def test_content_hash_changes_only_when_content_changes(tmp_path):
    (tmp_path / "one.md").write_text("Q: one\nA: one\n")
    first = scan_corpus(tmp_path).content_hash
    assert scan_corpus(tmp_path).content_hash == first
    (tmp_path / "one.md").write_text("Q: one\nA: changed\n")
    assert scan_corpus(tmp_path).content_hash != first


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="corpus folder not found"):
        scan_corpus(tmp_path / "absent")


def test_parse_manifest_reads_the_manifests_files_and_not_a_file_added_since(tmp_path):
    (tmp_path / "one.md").write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    manifest = scan_corpus(tmp_path)
    (tmp_path / "two.md").write_text("Q: 乙？\nA: 乙。\n", encoding="utf-8")

    result = parse_manifest(manifest, DataConfig())

    assert [(example.source_file, example.question) for example in result.examples] == [("one.md", "甲？")]
    assert result.files_read == 1


@pytest.mark.parametrize(
    ("change", "then_now"),
    [
        (lambda path: path.write_text("Q: 甲？\nA: 丙。\n", encoding="utf-8"), "sha256"),  # same size, other bytes
        (lambda path: path.write_text("Q: 甲？\nA: 甲乙。\n", encoding="utf-8"), "20 bytes then, 23 now"),
    ],
)
def test_parse_manifest_refuses_a_file_changed_after_the_scan_naming_it(tmp_path, change, then_now):
    (tmp_path / "one.md").write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    manifest = scan_corpus(tmp_path)
    change(tmp_path / "one.md")

    with pytest.raises(CorpusChangedError, match=rf"^one\.md: changed since the corpus manifest was taken \(.*{then_now}"):
        parse_manifest(manifest, DataConfig())


def test_parse_manifest_refuses_a_file_removed_after_the_scan(tmp_path):
    (tmp_path / "one.md").write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    manifest = scan_corpus(tmp_path)
    (tmp_path / "one.md").unlink()

    with pytest.raises(CorpusChangedError, match=r"^one\.md: listed in the corpus manifest but No such file"):
        parse_manifest(manifest, DataConfig())


def test_parse_manifest_finds_a_file_whose_name_the_manifest_escapes(tmp_path):
    (tmp_path / os.fsdecode(b"latin1-\xe9.md")).write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    (tmp_path / "new\nline.md").write_text("Q: 乙？\nA: 乙。\n", encoding="utf-8")
    manifest = scan_corpus(tmp_path)

    result = parse_manifest(manifest, DataConfig())

    assert sorted(example.source_file for example in result.examples) == ["latin1-\\xe9.md", "new\\x0aline.md"]
