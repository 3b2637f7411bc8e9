"""Atomic publishing: a file or folder is replaced whole, or not at all, and no staging is left behind."""

from pathlib import Path

import pytest

from qft_core.publish import publish_text, publishing_file, publishing_folder


def test_a_published_file_replaces_the_old_one_and_leaves_no_staging(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    publish_text(path, "old")

    publish_text(path, "new")

    assert path.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_a_file_whose_writing_fails_keeps_the_old_content(tmp_path: Path) -> None:
    path = publish_text(tmp_path / "report.json", "old")

    with pytest.raises(RuntimeError, match="disk"), publishing_file(path) as staging:
        staging.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_published_folder_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "package"
    with publishing_folder(target) as staging:
        (staging / "old.bin").write_bytes(b"1")

    with publishing_folder(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".package.")
        (staging / "new.bin").write_bytes(b"2")

    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["package"]


def test_a_folder_whose_building_fails_leaves_the_old_folder_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "package"
    with publishing_folder(target) as staging:
        (staging / "old.bin").write_bytes(b"1")

    with pytest.raises(ValueError, match="check"), publishing_folder(target) as staging:
        (staging / "new.bin").write_bytes(b"2")
        raise ValueError("reload check failed")

    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["package"]
