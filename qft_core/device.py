"""The one device setting (`model.device`: auto, cpu, cuda) turned into the device every stage runs on."""

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
