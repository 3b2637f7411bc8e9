"""Training checkpoints on disk: staged in a hidden folder, sealed by a sha256 manifest written last, then
renamed into place, so a folder named `step-N` is complete; loading falls back past damaged ones. A write that
fails (a full disk) removes the staged folder and leaves the sealed checkpoints as they were."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from qft_core.publish import PREVIOUS_SUFFIX, fsync_path, move_into_place

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
RNG_DIR = "rng"
_PREFIX = "step-"
_STAGING_PREFIX = ".staging-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the folder or file."""


def checkpoint_step(path: Path) -> int | None:
    """The step a `step-N` folder holds, or None for anything else."""
    name = path.name
    if not name.startswith(_PREFIX) or not name[len(_PREFIX) :].isdigit():
        return None
    return int(name[len(_PREFIX) :])


def checkpoint_path(checkpoints_dir: Path, step: int) -> Path:
    return checkpoints_dir / f"{_PREFIX}{step:08d}"


def staging_path(checkpoints_dir: Path, step: int) -> Path:
    return checkpoints_dir / f"{_STAGING_PREFIX}{_PREFIX}{step:08d}"


def start_staging(checkpoints_dir: Path, step: int) -> Path:
    """An empty hidden folder to write step `step` into; leftovers of an interrupted save are removed."""
    staging = staging_path(checkpoints_dir, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def seal(staging: Path, keep_last: int) -> Path:
    """Write the manifest, rename the staged folder to `step-N` and drop all but the newest `keep_last`."""
    step = checkpoint_step(Path(staging.name[len(_STAGING_PREFIX) :]))
    if step is None or not staging.name.startswith(_STAGING_PREFIX):
        raise CheckpointError(f"{staging}: not a staging folder made by start_staging")
    with writing(staging, MANIFEST):
        files = {}
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                fsync_path(path)
                files[path.relative_to(staging).as_posix()] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        manifest = staging / MANIFEST
        _write_file(manifest, json.dumps({"step": step, "files": files}, indent=1, sort_keys=True).encode("utf-8"))
        fsync_path(manifest)
        fsync_path(staging)
    # An existing folder of this step is a damaged checkpoint (we resumed from an earlier one): it is replaced.
    target = move_into_place(staging, checkpoint_path(staging.parent, step))
    prune(staging.parent, keep_last)
    return target


def prune(checkpoints_dir: Path, keep_last: int) -> list[Path]:
    """Delete every `step-N` folder but the `keep_last` newest; returns what went."""
    removed = []
    for path in list_checkpoints(checkpoints_dir)[keep_last:]:
        shutil.rmtree(path)
        removed.append(path)
    return removed


def clear_staging(checkpoints_dir: Path) -> None:
    """Remove half-written folders that a killed save left behind."""
    if not checkpoints_dir.is_dir():
        return
    for path in checkpoints_dir.iterdir():
        if path.name.startswith(_STAGING_PREFIX) or path.name.endswith(PREVIOUS_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """`step-N` folders, newest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [path for path in checkpoints_dir.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def damage(checkpoint: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted (missing manifest, missing file, size or hash mismatch), or None."""
    manifest_path = checkpoint / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{manifest_path}: manifest missing or unreadable ({error})"
    for relative, expected in files.items():
        path = checkpoint / relative
        if not path.is_file():
            return f"{path}: listed in the manifest but missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, manifest says {expected['bytes']} (truncated?)"
        if _sha256(path) != expected["sha256"]:
            return f"{path}: sha256 differs from the manifest (corrupt)"
    return None


def latest_valid(checkpoints_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint whose files match its manifest; each damaged newer one is reported via `warn`."""
    for checkpoint in list_checkpoints(checkpoints_dir):
        reason = damage(checkpoint)
        if reason is None:
            return checkpoint
        warn(f"checkpoint {checkpoint.name} is damaged and skipped, falling back to an earlier one: {reason}")
    return None


@contextmanager
def writing(staging: Path, name: str) -> Iterator[None]:
    """Around a write of file `name` into a staged checkpoint: a failure (a full disk, an I/O error) removes the
    staged folder and is raised as CheckpointError naming the folder, the file and the cause. The sealed
    checkpoints are untouched, so the next start resumes from the newest of them."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        staged = staging.name.startswith(_STAGING_PREFIX)
        if staged:
            shutil.rmtree(staging, ignore_errors=True)
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        message = f"{staging}: cannot write checkpoint file {name}: {cause.lower()}"
        if staged:
            sealed = list_checkpoints(staging.parent)
            kept = f"{sealed[0].name} is the newest checkpoint and intact" if sealed else "no checkpoint is sealed yet"
            message += f"; the staged checkpoint was removed, {kept}"
        raise CheckpointError(message) from error


def save_optimizer_state(directory: Path, optimizer_state: dict, scheduler_state: dict) -> None:
    _save_tensors({"optimizer": optimizer_state, "scheduler": scheduler_state}, directory, OPTIMIZER_STATE)


def load_optimizer_state(checkpoint: Path) -> tuple[dict, dict]:
    state = _load_tensors(checkpoint / OPTIMIZER_STATE)
    return state["optimizer"], state["scheduler"]


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    with writing(directory, TRAINER_STATE):
        _write_file(directory / TRAINER_STATE, json.dumps(state, indent=1, sort_keys=True).encode("utf-8"))


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))


def capture_rng() -> dict[str, Any]:
    """Every random stream training draws from, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(directory: Path, rank: int) -> Path:
    return directory / RNG_DIR / f"rank-{rank:05d}.pt"


def save_rng(directory: Path, rank: int) -> None:
    _save_tensors(capture_rng(), directory, rng_file(directory, rank).relative_to(directory).as_posix())


def load_rng(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    """This rank's saved random state, or None when the checkpoint came from a run with fewer ranks."""
    path = rng_file(checkpoint, rank)
    return _load_tensors(path) if path.is_file() else None


def _save_tensors(value: Any, directory: Path, name: str) -> None:
    # Serialized in memory first: torch.save writing to a failing file reports a bare "unexpected pos" and loses
    # the cause (ENOSPC), which _write_file keeps.
    buffer = io.BytesIO()
    torch.save(value, buffer)
    with writing(directory, name):
        path = directory / name
        path.parent.mkdir(exist_ok=True)
        # A copy, not getbuffer(): a failed write keeps a view of the buffer in its traceback, and clearing
        # that cycle crashes the garbage collector of the Python 3.12 here (python/cpython#111049).
        _write_file(path, buffer.getvalue())


def _load_tensors(path: Path) -> Any:
    """torch.load with weights_only: a file that holds anything but tensors and plain containers is refused
    (its pickled code never runs), and an unreadable one is named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = f"{path}: not a weights-only checkpoint file ({_unpickler_reason(str(error))}); refusing to unpickle it"
        raise CheckpointError(message) from error
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint file ({_first_sentence(str(error))})") from error


def _unpickler_reason(message: str) -> str:
    """The unpickler's own words in torch's weights_only error, without the advice around them (which opens
    with how to load the file unsafely)."""
    lines = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    kept = " ".join(line for line in lines if not line.startswith(("(1)", "(2)", "Check the documentation")))
    return _first_sentence(kept.rpartition("WeightsUnpickler error:")[2]) or "rejected by torch.load(weights_only=True)"


def _first_sentence(text: str) -> str:
    return text.strip().split("\n")[0].split(". ")[0].rstrip(".")


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` through os.write, going on after short writes: a disk that fills up part-way through a file
    shows as a short write and then ENOSPC, which is raised."""
    view = memoryview(data)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


