"""Build-once cache directories: built once, atomically, and never left half-built."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from qft_core.model.cache import CacheBuildError, build_once, fingerprint


def write_marker(directory: Path) -> None:
    (directory / "weights.txt").write_text("built", encoding="utf-8")


def test_builds_once_and_then_returns_the_cached_directory(tmp_path):
    calls = []

    def build(directory: Path) -> None:
        calls.append(directory)
        write_marker(directory)

    target = tmp_path / "model"
    assert build_once(target, build) == target
    assert build_once(target, build) == target
    assert len(calls) == 1 and calls[0] != target
    assert (target / "weights.txt").read_text(encoding="utf-8") == "built"


def test_a_failed_build_leaves_neither_target_nor_staging(tmp_path):
    def broken(directory: Path) -> None:
        write_marker(directory)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(tmp_path / "model", broken)
    assert [path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")] == []


def test_concurrent_builders_build_once(tmp_path):
    calls = []

    def slow_build(directory: Path) -> None:
        calls.append(directory)
        time.sleep(0.3)
        write_marker(directory)

    target = tmp_path / "model"
    threads = [threading.Thread(target=build_once, args=(target, slow_build)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert (target / "weights.txt").is_file()


def test_a_file_in_the_way_is_reported(tmp_path):
    (tmp_path / "model").write_text("not a directory", encoding="utf-8")
    with pytest.raises(CacheBuildError, match="model: exists but is not a directory"):
        build_once(tmp_path / "model", write_marker)


def test_fingerprint_depends_on_every_part_and_is_stable():
    assert fingerprint({"hidden": 128}, 1) == fingerprint({"hidden": 128}, 1)
    assert fingerprint({"hidden": 128}, 1) != fingerprint({"hidden": 256}, 1)
    assert fingerprint({"hidden": 128}, 1) != fingerprint({"hidden": 128}, 2)
    assert len(fingerprint("x")) == 12
