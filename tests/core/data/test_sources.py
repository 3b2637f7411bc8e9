"""Which files a corpus walk reads: Markdown by suffix in any case, the same files for the parser and the manifest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qft_core.config import DataConfig
from qft_core.data.corpus import scan_corpus
from qft_core.data.parse import parse_paths
from qft_core.data.sources import is_markdown_name, markdown_files

READ = ["a.md", "B.MD", "c.markdown", "d.MarkDown", "sub.MD/e.Md"]
NOT_READ = ["notes.txt", "f.mdx", "g.md.bak", "h.mkd", "README", ".md"]


def _pair(name: str) -> str:
    return f"Q: {name} 是什么？\nA: {name} 是一个语料文件。\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name in READ + NOT_READ:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_pair(name), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("name", "read"),
    [("x.md", True), ("X.MD", True), ("x.markdown", True), ("X.MARKDOWN", True), ("x.mD", True),
     ("x.txt", False), ("x.mdx", False), ("x.md.bak", False), (".md", False), ("md", False)],
)
def test_markdown_names_are_md_or_markdown_in_any_case(name: str, read: bool) -> None:
    assert is_markdown_name(Path(name)) is read


def test_folder_walk_reads_md_and_markdown_files_whatever_their_case(corpus: Path) -> None:
    found, warnings = markdown_files([corpus])
    assert [name for _, name in found] == sorted(READ)
    assert warnings == []


def test_parser_and_manifest_read_the_same_files(corpus: Path) -> None:
    result = parse_paths([corpus], DataConfig())
    manifest = scan_corpus(corpus)
    assert [entry.path for entry in manifest.files] == sorted(READ)
    assert sorted({example.source_file for example in result.examples}) == sorted(READ)
    assert result.files_read == len(READ) == len(manifest.files)


def test_editing_an_upper_case_or_markdown_file_changes_the_content_hash(corpus: Path) -> None:
    before = scan_corpus(corpus).content_hash
    (corpus / "B.MD").write_text(_pair("B.MD edited"), encoding="utf-8")
    edited = scan_corpus(corpus).content_hash
    (corpus / "c.markdown").unlink()
    removed = scan_corpus(corpus).content_hash
    assert len({before, edited, removed}) == 3
    (corpus / "notes.txt").write_text("anything", encoding="utf-8")
    assert scan_corpus(corpus).content_hash == removed


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_upper_case_link_leaving_the_root_is_skipped_with_a_warning(corpus: Path) -> None:
    secret = corpus.parent / "SECRET.MARKDOWN"
    secret.write_text(_pair("secret"), encoding="utf-8")
    (corpus / "ESCAPE.MD").symlink_to(secret)
    (corpus / "gone.Markdown").symlink_to(corpus / "nowhere.md")
    found, warnings = markdown_files([corpus])
    assert [name for _, name in found] == sorted(READ)
    assert warnings == [
        f"ESCAPE.MD: symlink_outside_root: points to {secret.resolve()}, outside {corpus}; skipped",
        "gone.Markdown: broken_symlink: link target does not exist; skipped",
    ]


def test_a_file_given_directly_is_read_whatever_its_name(corpus: Path) -> None:
    found, _ = markdown_files([corpus / "notes.txt", corpus / "B.MD"])
    assert [name for _, name in found] == ["notes.txt", "B.MD"]
