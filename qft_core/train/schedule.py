"""The learning-rate schedule: linear warmup, then cosine, linear or constant, as a pure function of the step."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Warmup climbs to the peak over `warmup` steps (the first step already trains at 1/warmup of it);
    the decay then reaches zero one step after the last one.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup + 1) / max(1, total_steps - warmup + 1))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (training.schedule)")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str) -> LambdaLR:
    factor = partial(
        lr_factor, total_steps=total_steps, warmup=warmup_steps(total_steps, warmup_ratio), schedule=schedule
    )
    return LambdaLR(optimizer, factor)
