"""Publishing a file or a folder atomically: write it under a staging name in the target's own folder, flush it to
disk, then rename it into place, so that a reader, or a run killed halfway, finds the old version or the new one,
never a torn one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The name an existing folder takes while its replacement is renamed in (`.NAME.previous`); a crash between the two
# renames leaves it behind for the owner of the folder to clear.
PREVIOUS_SUFFIX = ".previous"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (a rename that publishes must follow its data)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def publishing_file(path: str | Path) -> Iterator[Path]:
    """The staging path `.NAME.tmp` beside `path` to write; when the block ends without error the staged file is
    flushed and replaces `path` in one rename, otherwise it is removed and `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        yield staging
        fsync_path(staging)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def publish_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    with publishing_file(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return path


@contextmanager
def publishing_folder(target: str | Path) -> Iterator[Path]:
    """A fresh hidden staging folder beside `target` to fill; when the block ends without error every file in it
    is flushed and it takes `target`'s place (`move_into_place`), otherwise it is removed and `target` stays."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file() and not path.is_symlink():
                fsync_path(path)
        fsync_path(staging)
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_into_place(staging: Path, target: Path) -> Path:
    """Rename the complete folder `staging` to `target` in the same folder. A folder cannot be renamed over another,
    so an existing `target` is first renamed aside and deleted only once the new one is in place: `target` is
    missing for the instant between two renames, and never half-written."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}{PREVIOUS_SUFFIX}")
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
    staging.rename(target)
    fsync_path(target.parent)
    if previous is not None:
        shutil.rmtree(previous)
    return target
