"""The fast training path: adapters computed in the model's dtype, compiled decoder layers, flex attention for
packed rows and a fused AdamW, each chosen for the device at hand, with the reason whenever one is left off."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from qft_core.train.attention import SDPA, choose_attention
from qft_core.train.compiler import allow_recompiles, compile_unavailable_reason
from qft_core.train.loss import causal_lm

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class FastPath:
    """What the engine turns on. `fallbacks` says, per piece left off, why."""

    attention: str = SDPA
    compile_layers: bool = False
    # Autocast dtype for the decoder, so float32 adapter weights multiply in the model's dtype; None keeps PEFT's
    # float32 adapter compute.
    adapter_compute_dtype: torch.dtype | None = None
    fused_optimizer: bool = False
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def plain(cls) -> FastPath:
        """The reference path: sdpa, eager layers, PEFT's float32 adapter compute, the default AdamW."""
        return cls()


def choose_fast_path(
    device: torch.device, compute_dtype: torch.dtype, *, packing: bool, sharded: bool = False
) -> FastPath:
    """Every piece the device supports; what it does not support falls back to the plain path's choice.
    `sharded` (FSDP2) keeps the layers eager: compiling them with FSDP2's hooks inside is not measured yet."""
    fallbacks: list[str] = []
    attention, attention_reason = choose_attention(device, packing)
    if attention_reason:
        fallbacks.append(f"attention: sdpa with a dense document mask, since {attention_reason}")
    compile_reason = compile_unavailable_reason(device)
    if compile_reason is None and sharded:
        compile_reason = "compiled layers under FSDP2 sharding are not benchmarked yet (DDP and one GPU are)"
    if compile_reason:
        fallbacks.append(f"decoder layers: eager, since {compile_reason}")
    adapter_dtype = compute_dtype if compute_dtype in LOW_PRECISION else None
    if adapter_dtype is None:
        fallbacks.append(f"adapters: computed in {compute_dtype}, the model's own dtype, so nothing to change")
    fused = fused_adamw_supported(device)
    if not fused:
        fallbacks.append(f"optimizer: foreach AdamW, since the fused kernel is for CUDA only (device {device.type})")
    return FastPath(
        attention=attention,
        compile_layers=compile_reason is None,
        adapter_compute_dtype=adapter_dtype,
        fused_optimizer=fused,
        fallbacks=tuple(fallbacks),
    )


def fused_adamw_supported(device: torch.device) -> bool:
    return device.type == "cuda"


def compute_adapters_in_input_dtype(peft_model: nn.Module) -> int:
    """Stop PEFT upcasting each LoRA layer's input to the adapter's float32 (a float32 copy of every adapted
    activation, kept for backward); autocast then runs the adapter product in the input's dtype. Returns the
    number of LoRA layers changed. Only valid together with `TokenLossSum(compute_dtype=...)`."""
    changed = 0
    for module in peft_model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def compile_decoder_layers(layers: nn.ModuleList, **options) -> None:
    """Compile each decoder layer in place (its parameter names, and so the saved adapter, are unchanged).

    Layers share one compiled graph; gradient checkpointing still wraps each compiled layer from outside.
    """
    allow_recompiles()
    for layer in layers:
        layer.compile(**options)


def apply_fast_path(peft_model: nn.Module, fast: FastPath) -> None:
    """Put the model-side pieces of `fast` onto a PEFT model (before DDP or FSDP wraps it). The attention
    implementation is chosen when the model is loaded, and the adapter dtype by `TokenLossSum`."""
    if fast.adapter_compute_dtype is not None:
        compute_adapters_in_input_dtype(peft_model)
    if fast.compile_layers:
        compile_decoder_layers(causal_lm(peft_model).get_decoder().layers)


def build_optimizer(
    parameters: Iterable[nn.Parameter], *, lr: float, weight_decay: float, fast: FastPath
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; one fused kernel for all of them where `fast` allows."""
    if fast.fused_optimizer:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
