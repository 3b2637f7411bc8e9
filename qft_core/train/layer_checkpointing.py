"""Activation checkpointing of the first k decoder layers, the plan's `checkpoint_layers`: those layers keep only
their input and recompute the rest in backward, the others keep everything (memory.py says why the first ones).

The checkpoint wraps each layer's whole call from outside, so a compiled layer (`Module.compile`) runs compiled
inside it, and FSDP2's hooks run inside it too (a recomputed layer gathers its shards again). It is applied by
giving each chosen layer a subclass of its own class, as FSDP2 does, so parameter names, and with them the saved
adapter, are unchanged; transformers' all-layers switch is left off.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointLayersError(ValueError):
    """A checkpoint_layers count the model cannot take; the message names both."""


def checkpoint_first_layers(layers: nn.ModuleList, count: int) -> None:
    """Checkpoint layers[:count] (non-reentrant, which works under DDP and FSDP2 and needs no requires_grad on the
    inputs); the recompute replays the forward's random state, so dropout draws the same masks."""
    if not 0 <= count <= len(layers):
        raise CheckpointLayersError(f"checkpoint_layers {count}: the model has {len(layers)} decoder layers")
    subclasses: dict[type, type] = {}
    for layer in layers[:count]:
        cls = type(layer)
        if cls not in subclasses:
            subclasses[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": _checkpointed_call(cls)})
        layer.__class__ = subclasses[cls]


def _checkpointed_call(cls: type):
    """`cls.__call__` under a checkpoint whenever a backward will follow (training, with gradients)."""

    def __call__(self, *args, **kwargs):
        call = partial(cls.__call__, self)
        if self.training and torch.is_grad_enabled():
            return checkpoint(call, *args, use_reentrant=False, **kwargs)
        return call(*args, **kwargs)

    return __call__
