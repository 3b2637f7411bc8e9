"""Whether torch.compile can build kernels for a device in this process, and compiling a function with an eager
fallback when it cannot."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Every decoder layer runs the same compiled code; each shape change (first to dynamic sizes) and each
# train/eval switch adds a guarded entry. Dynamo's default of 8 would send the later ones back to eager.
RECOMPILE_LIMIT = 64


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
