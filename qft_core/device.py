"""The one device setting (`model.device`: auto, cpu, cuda) turned into the device every stage runs on, and
whether torch.compile builds kernels there (training's compiled layers, evaluation's compiled decoding)."""

from __future__ import annotations

from typing import Literal

import torch

from qft_core.config import ConfigError

DeviceSetting = Literal["auto", "cpu", "cuda"]
Device = Literal["cpu", "cuda"]


class DeviceUnavailableError(ConfigError):
    """`model.device: cuda` on a machine where torch sees no CUDA GPU."""


def resolve_device(setting: str, *, cuda_available: bool | None = None) -> Device:
    """The device a stage runs on: `auto` is CUDA where torch sees a GPU, else the CPU.

    `cuda_available` stands for `torch.cuda.is_available()` where the caller knows better (the training plan
    decides for the machine its hardware profile describes).
    """
    if setting not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"key 'model.device': '{setting}' is not one of auto, cpu, cuda")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if setting == "cpu":
        return "cpu"
    if setting == "cuda" and not cuda_available:
        raise DeviceUnavailableError(
            "key 'model.device' is cuda but no CUDA GPU is visible on this machine (torch.cuda.is_available() is "
            "False, or the hardware profile lists no GPU); set it to auto or cpu"
        )
    return "cuda" if cuda_available else "cpu"


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why compiled kernels are not used on `device`, or None when they are."""
    if device.type != "cuda":
        return f"torch.compile is used on CUDA only (on {device.type} the compile time outweighs the gain)"
    try:
        import torch._dynamo
        from torch.utils._triton import has_triton
    except ImportError as error:
        return f"torch.compile is not available in this torch build ({error})"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if not has_triton():
        return "Triton is missing or does not support this GPU, so torch.compile cannot build GPU kernels"
    return None
