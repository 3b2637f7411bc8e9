"""Checkpoints: sealed by a manifest and a rename, pruned to the newest K, damaged ones skipped with a
warning, their optimizer and RNG state reloading exactly, and unreadable state files named. (A disk that fills
up mid-save: tests/reliability/test_training_faults.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from qft_core.train import checkpoint as ckpt


def _write_checkpoint(root: Path, step: int, keep_last: int = 10) -> Path:
    staging = ckpt.start_staging(root, step)
    (staging / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    ckpt.write_trainer_state(staging, {"step": step})
    ckpt.save_rng(staging, rank=0)
    return ckpt.seal(staging, keep_last)


def test_sealing_renames_the_staged_folder_and_lists_every_file_in_the_manifest(tmp_path: Path) -> None:
    sealed = _write_checkpoint(tmp_path, 3)

    assert sealed == tmp_path / "step-00000003"
    assert not ckpt.staging_path(tmp_path, 3).exists()
    manifest = json.loads((sealed / "manifest.json").read_text())
    assert manifest["step"] == 3
    assert sorted(manifest["files"]) == ["adapter_model.safetensors", "rng/rank-00000.pt", "trainer_state.json"]
    assert manifest["files"]["adapter_model.safetensors"]["bytes"] == 1024
    assert ckpt.damage(sealed) is None
    assert ckpt.read_trainer_state(sealed) == {"step": 3}


def test_a_save_interrupted_before_sealing_is_invisible_and_cleared(tmp_path: Path) -> None:
    _write_checkpoint(tmp_path, 2)
    interrupted = ckpt.start_staging(tmp_path, 4)
    (interrupted / "adapter_model.safetensors").write_bytes(b"half")

    assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "step-00000002"]
    assert ckpt.latest_valid(tmp_path, warn=lambda message: None) == tmp_path / "step-00000002"
    ckpt.clear_staging(tmp_path)
    assert not interrupted.exists()


def test_only_the_newest_keep_last_checkpoints_remain(tmp_path: Path) -> None:
    for step in range(1, 6):
        _write_checkpoint(tmp_path, step, keep_last=2)
    assert [path.name for path in ckpt.list_checkpoints(tmp_path)] == ["step-00000005", "step-00000004"]


def test_damaged_newer_checkpoints_are_skipped_with_a_warning_each(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        _write_checkpoint(tmp_path, step)
    truncated = tmp_path / "step-00000008" / "adapter_model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    corrupted = tmp_path / "step-00000006" / "adapter_model.safetensors"
    data = bytearray(corrupted.read_bytes())
    data[10] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    (tmp_path / "step-00000004" / "manifest.json").unlink()

    warnings: list[str] = []
    assert ckpt.latest_valid(tmp_path, warn=warnings.append) == tmp_path / "step-00000002"
    assert len(warnings) == 3
    assert "step-00000008 is damaged" in warnings[0] and "100 bytes, manifest says 1024 (truncated?)" in warnings[0]
    assert "step-00000006 is damaged" in warnings[1] and "sha256 differs" in warnings[1]
    assert "step-00000004 is damaged" in warnings[2] and "manifest missing" in warnings[2]


def test_no_checkpoint_at_all_gives_none(tmp_path: Path) -> None:
    assert ckpt.latest_valid(tmp_path / "missing", warn=lambda message: None) is None


def test_resaving_a_damaged_step_replaces_it(tmp_path: Path) -> None:
    first = _write_checkpoint(tmp_path, 4)
    (first / "trainer_state.json").write_text("{}")
    assert ckpt.damage(first) is not None
    again = _write_checkpoint(tmp_path, 4)
    assert again == first and ckpt.damage(again) is None


def test_optimizer_and_scheduler_state_reload_with_weights_only(tmp_path: Path) -> None:
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    parameter.grad = torch.tensor([1.0, -2.0, 3.0])
    optimizer.step()
    scheduler.step()

    ckpt.save_optimizer_state(tmp_path, optimizer.state_dict(), scheduler.state_dict())
    optimizer_state, scheduler_state = ckpt.load_optimizer_state(tmp_path)

    expected = optimizer.state_dict()
    assert optimizer_state["param_groups"] == expected["param_groups"]
    assert torch.equal(optimizer_state["state"][0]["exp_avg"], expected["state"][0]["exp_avg"])
    assert scheduler_state["last_epoch"] == 1


def test_restored_rng_replays_python_numpy_and_torch_draws(tmp_path: Path) -> None:
    ckpt.save_rng(tmp_path, rank=3)
    first = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng(ckpt.load_rng(tmp_path, rank=3))
    again = (random.random(), np.random.rand(), torch.rand(2))

    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
    assert ckpt.load_rng(tmp_path, rank=4) is None


def test_an_unreadable_optimizer_state_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    ckpt.save_optimizer_state(tmp_path, {"state": {}, "param_groups": []}, {"last_epoch": 3})
    whole = (tmp_path / ckpt.OPTIMIZER_STATE).read_bytes()
    (tmp_path / ckpt.OPTIMIZER_STATE).write_bytes(whole[: len(whole) // 2])

    with pytest.raises(ckpt.CheckpointError) as failure:
        ckpt.load_optimizer_state(tmp_path)

    assert str(failure.value) == (
        f"{tmp_path / ckpt.OPTIMIZER_STATE}: unreadable checkpoint file "
        "(PytorchStreamReader failed reading zip archive: failed finding central directory)"
    )


def test_bytes_that_are_no_torch_file_are_refused_unpickled_with_the_unpicklers_reason(tmp_path: Path) -> None:
    ckpt.rng_file(tmp_path, 0).parent.mkdir()
    ckpt.rng_file(tmp_path, 0).write_bytes(b"garbage")

    with pytest.raises(ckpt.CheckpointError) as failure:
        ckpt.load_rng(tmp_path, 0)

    assert str(failure.value) == (
        f"{ckpt.rng_file(tmp_path, 0)}: not a weights-only checkpoint file (Unsupported operand 103); "
        "refusing to unpickle it"
    )
