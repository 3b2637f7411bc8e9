"""Build-once directories in the model cache: concurrent builders wait on a lock, readers never see half a build."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from qft_core.publish import publishing_folder


class CacheBuildError(RuntimeError):
    """A cached directory could not be built, or an incomplete one is in the way."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts: what a cached build depends on, put into its name."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, first running `build(staging_dir)` and renaming the result into place if it is missing.

    The rename is atomic, so an existing `target` is always complete; the lock keeps two processes from
    building the same directory twice.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if target.is_dir():
            return target
        if target.exists():
            raise CacheBuildError(f"{target}: exists but is not a directory; remove it and retry")
        with publishing_folder(target) as staging:
            build(staging)
    return target
