"""The fast training path: adapters computed in the model's dtype, compiled decoder layers, flex attention for
packed rows and a fused AdamW, each chosen for the device at hand, with the reason whenever one is left off; and
the round-two levers (fused LoRA products, compile mode, DDP's graph split, compiling under FSDP2), each off until
measured on a GPU."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from qft_core.train.attention import SDPA, choose_attention
from qft_core.train.compiler import allow_recompiles, compile_unavailable_reason
from qft_core.train.fused_lora import fuse_lora_linears
from qft_core.train.loss import causal_lm

LOW_PRECISION = (torch.bfloat16, torch.float16)

# The round-two levers' defaults, which follow their measurement in docs/performance.md ("Round two"): each is
# what the engine did before the lever existed until a GPU run beside the baseline says otherwise.
FUSE_LORA_PRODUCTS = False
COMPILE_MODE: str | None = None
SPLIT_GRAPHS_AT_DDP_BUCKETS = True
COMPILE_UNDER_FSDP = False


@dataclass(frozen=True)
class FastPath:
    """What the engine turns on. `fallbacks` says, per piece left off, why."""

    attention: str = SDPA
    compile_layers: bool = False
    # Autocast dtype for the decoder, so float32 adapter weights multiply in the model's dtype; None keeps PEFT's
    # float32 adapter compute.
    adapter_compute_dtype: torch.dtype | None = None
    fused_optimizer: bool = False
    # PEFT's LoRA Linear replaced by `fused_lora.FusedLoraLinear` (adapter product accumulated into the base's).
    fused_lora: bool = False
    # torch.compile's `mode` for the decoder layers (None: the default mode), e.g. "max-autotune-no-cudagraphs"
    # or "reduce-overhead" (CUDA graph trees).
    compile_mode: str | None = None
    # torch._dynamo.config.optimize_ddp: under DDP, split each compiled layer where a gradient bucket fills (so
    # its all-reduce can start early) at the cost of a tensor kept across the split.
    ddp_graph_split: bool = True
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def plain(cls) -> FastPath:
        """The reference path: sdpa, eager layers, PEFT's float32 adapter compute, the default AdamW."""
        return cls()


def choose_fast_path(
    device: torch.device, compute_dtype: torch.dtype, *, packing: bool, sharded: bool = False
) -> FastPath:
    """Every piece the device supports; what it does not support falls back to the plain path's choice.
    `sharded` (FSDP2) keeps the layers eager unless COMPILE_UNDER_FSDP (compiled layers inside `fully_shard`)."""
    fallbacks: list[str] = []
    attention, attention_reason = choose_attention(device, packing)
    if attention_reason:
        fallbacks.append(f"attention: sdpa with a dense document mask, since {attention_reason}")
    compile_reason = compile_unavailable_reason(device)
    if compile_reason is None and sharded and not COMPILE_UNDER_FSDP:
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
        fused_lora=FUSE_LORA_PRODUCTS,
        compile_mode=COMPILE_MODE if compile_reason is None else None,
        ddp_graph_split=SPLIT_GRAPHS_AT_DDP_BUCKETS,
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


def apply_fast_path(peft_model: nn.Module, fast: FastPath, **compile_options) -> None:
    """Put the model-side pieces of `fast` onto a PEFT model (before DDP or FSDP wraps it). The attention
    implementation is chosen when the model is loaded, and the adapter dtype by `TokenLossSum`.
    `compile_options` go to torch.compile besides the fast path's mode (the CPU tests pass a backend)."""
    if fast.adapter_compute_dtype is not None:
        compute_adapters_in_input_dtype(peft_model)
    if fast.fused_lora:
        fuse_lora_linears(peft_model)
    if fast.compile_layers:
        import torch._dynamo

        # Read when dynamo first compiles under DDP; a process trains one model, so the global is that model's.
        torch._dynamo.config.optimize_ddp = fast.ddp_graph_split
        if fast.compile_mode is not None:
            compile_options["mode"] = fast.compile_mode
        compile_decoder_layers(causal_lm(peft_model).get_decoder().layers, **compile_options)


def begin_step(fast: FastPath) -> None:
    """Call as each training step starts: under CUDA graph trees (mode "reduce-overhead") it tells torch that the
    last step's graph outputs are dead, so replaying the graphs may overwrite them."""
    if fast.compile_layers and fast.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def build_optimizer(
    parameters: Iterable[nn.Parameter], *, lr: float, weight_decay: float, fast: FastPath
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; one fused kernel for all of them where `fast` allows."""
    if fast.fused_optimizer:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
