"""The packaging assets hand merge and quantization the device that `model.device` resolves to, and merge in the
model's dtype with that dtype's tolerance."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import torch

from qft_core.config import QuantConfig
from qft_core.device import DeviceUnavailableError
from qft_pipeline.assets import packaging
from qft_pipeline.resources import QftSettings


@pytest.fixture
def merge_calls(monkeypatch, tmp_path: Path) -> list[dict]:
    """What `merged_model` passes to merge_adapter, with the upstream adapter and run folder in tmp."""
    calls: list[dict] = []

    def merge_adapter(spec, adapter_dir, out_dir, **options):
        calls.append({"spec": spec, "adapter_dir": adapter_dir, **options})
        return SimpleNamespace(out_dir=out_dir, to_metadata=lambda: {})

    monkeypatch.setattr(packaging, "merge_adapter", merge_adapter)
    monkeypatch.setattr(packaging, "upstream_path", lambda context, asset: tmp_path / asset)
    monkeypatch.setattr(packaging, "run_folder", lambda context, config: tmp_path / "run")
    return calls


def _merge(device: str) -> dg.MaterializeResult:
    settings = QftSettings(model={"device": device})
    return packaging.merged_model(dg.build_asset_context(), qft=settings)


def test_merge_gets_the_resolved_cpu_device_and_the_float32_tolerance(merge_calls):
    result = _merge("cpu")
    (call,) = merge_calls
    assert (call["device"], call["dtype"]) == ("cpu", torch.float32)  # qwen3-tiny is saved in float32
    assert call["tolerance"] == QuantConfig().merge_tolerance
    assert result.metadata["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_merge_with_device_cuda_and_no_gpu_fails_before_loading_anything(merge_calls):
    with pytest.raises(DeviceUnavailableError, match="model.device"):
        _merge("cuda")
    assert merge_calls == []


def test_auto_resolves_to_what_torch_sees(merge_calls):
    _merge("auto")
    assert merge_calls[0]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
