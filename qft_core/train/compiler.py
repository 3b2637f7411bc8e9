"""Compiling a function with an eager fallback where torch.compile cannot build kernels for the device
(`qft_core.device.compile_unavailable_reason`), and Dynamo's recompile limit for compiled layers."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qft_core.device import compile_unavailable_reason

# Every decoder layer runs the same compiled code; each shape change (first to dynamic sizes) and each
# train/eval switch adds a guarded entry. Dynamo's default of 8 would send the later ones back to eager.
RECOMPILE_LIMIT = 64


def allow_recompiles() -> None:
    """Raise Dynamo's per-function recompile limit to RECOMPILE_LIMIT (never lower it), and let a frame that fails
    to compile run eagerly instead of stopping training."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.suppress_errors = True


def compiled_or_eager[Function: Callable](function: Function, device: torch.device, **options) -> Function:
    """`torch.compile(function, **options)` where compiled kernels are used on `device`, else `function`."""
    if compile_unavailable_reason(device) is not None:
        return function
    allow_recompiles()
    return torch.compile(function, **options)
