"""Which attention kernel trains a batch: flex attention with a document mask for packed rows where it can run,
sdpa otherwise, and the model inputs each takes for a packed batch."""

from __future__ import annotations

import torch

from qft_core.train.compiler import compile_unavailable_reason
from qft_core.train.packing import PackedBatch

FLEX = "flex_attention"
SDPA = "sdpa"
# Flex attention's Triton backward needs bf16 tensor cores (Ampere and later).
FLEX_MIN_CAPABILITY = (8, 0)


def flex_unavailable_reason(device: torch.device) -> str | None:
    """Why flex attention cannot train on `device`, or None when it can."""
    reason = compile_unavailable_reason(device)
    if reason is not None:
        return f"flex attention needs compiled kernels: {reason}"
    try:
        import torch.nn.attention.flex_attention
    except ImportError as error:
        return f"this torch build has no flex attention ({error})"
    capability = torch.cuda.get_device_capability(device)
    if capability < FLEX_MIN_CAPABILITY:
        return f"flex attention needs compute capability {FLEX_MIN_CAPABILITY}, this GPU has {capability}"
    return None


def choose_attention(device: torch.device, packing: bool) -> tuple[str, str | None]:
    """The transformers attention implementation for training and, when it is sdpa for packed rows, why.

    Unpacked rows are plain causal attention, which sdpa's flash kernel already does best. Packed rows need a
    document mask: sdpa takes it as a dense (T x T) mask and so loses its flash kernel, while flex attention
    skips the blocks between documents altogether.
    """
    if not packing:
        return SDPA, None
    reason = flex_unavailable_reason(device)
    return (SDPA, reason) if reason is not None else (FLEX, None)


def packed_model_inputs(batch: PackedBatch, attention: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model keyword arguments for a packed batch under `attention`.

    Flex attention gets no mask: transformers finds the documents from the position ids, which restart at 0 for
    every packed sequence, and builds a block-sparse document mask. sdpa (and eager) get the dense mask.
    """
    if attention == FLEX:
        return {"input_ids": batch.input_ids, "labels": batch.labels, "position_ids": batch.position_ids}
    return batch.model_inputs(attention, dtype)
