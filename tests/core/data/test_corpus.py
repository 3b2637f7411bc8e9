import hashlib

import pytest

from qft_core.data.corpus import CorpusNotFoundError, scan_corpus


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
