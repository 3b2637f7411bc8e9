"""LoRA linear layers whose adapter product the GEMM accumulates into the base product (addmm's beta), in the
forward pass and for the input gradient, instead of a separate elementwise add of a second full-width output."""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


class _BasePlusLowRank(torch.autograd.Function):
    """`x @ weight.T + bias + (adapter_x @ lora_a.T) @ scaled_b.T` on 2-D rows, with the low-rank product added by
    addmm into the base product's output. `adapter_x` None means the adapter reads `x` itself (no dropout); then
    the input gradient `grad @ weight + (grad @ scaled_b) @ lora_a` is one addmm as well."""

    @staticmethod
    def forward(ctx, x, adapter_x, weight, bias, lora_a, scaled_b):
        adapter_in = x if adapter_x is None else adapter_x
        base = x @ weight.T if bias is None else torch.addmm(bias, x, weight.T)
        down = adapter_in @ lora_a.T
        ctx.save_for_backward(x, adapter_in, weight, lora_a, scaled_b, down)
        ctx.shared_input = adapter_x is None
        return torch.addmm(base, down, scaled_b.T)

    @staticmethod
    def backward(ctx, grad):
        x, adapter_in, weight, lora_a, scaled_b, down = ctx.saved_tensors
        need_x, need_adapter_x, need_weight, need_bias, need_a, need_b = ctx.needs_input_grad
        up = grad @ scaled_b
        grad_x = grad_adapter_x = None
        if ctx.shared_input:
            if need_x:
                grad_x = torch.addmm(grad @ weight, up, lora_a)
        else:
            grad_x = grad @ weight if need_x else None
            grad_adapter_x = up @ lora_a if need_adapter_x else None
        grad_weight = grad.T @ x if need_weight else None
        grad_bias = grad.sum(0) if need_bias else None
        grad_a = up.T @ adapter_in if need_a else None
        grad_b = grad.T @ down if need_b else None
        return grad_x, grad_adapter_x, grad_weight, grad_bias, grad_a, grad_b


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA Linear with one fused base + adapter product. Same parameters and names (so the saved adapter
    is unchanged); any case the fusion does not cover (adapters disabled or merged, per-call adapter names, a
    second adapter, mixed dtypes without autocast) runs PEFT's own forward."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        dtype = _fused_dtype(self, x)
        if dtype is None or args or kwargs:
            return super().forward(x, *args, **kwargs)
        name = self.active_adapters[0]
        dropout = self.lora_dropout[name]
        rows = x.reshape(-1, x.shape[-1]).to(dtype)
        adapter_rows = None if isinstance(dropout, nn.Identity) or not self.training else dropout(rows)
        base = self.base_layer
        bias = None if base.bias is None else base.bias.to(dtype)
        scaled_b = (self.lora_B[name].weight * self.scaling[name]).to(dtype)
        out = _BasePlusLowRank.apply(
            rows, adapter_rows, base.weight.to(dtype), bias, self.lora_A[name].weight.to(dtype), scaled_b
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _fused_dtype(layer: PeftLoraLinear, x: torch.Tensor) -> torch.dtype | None:
    """The one dtype all products run in (autocast's, else the input's), or None where the fusion would change
    what PEFT computes."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return None
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    adapter_dtype = layer.lora_A[name].weight.dtype
    casts_input = getattr(layer, "cast_input_dtype_enabled", True)
    if (casts_input and x.dtype != adapter_dtype) or layer.base_layer.weight.dtype != x.dtype:
        return None
    return x.dtype


def fuse_lora_linears(peft_model: nn.Module) -> int:
    """Give every plain LoRA Linear of `peft_model` (nn.Linear base, no DoRA or other variant, weights stored
    out x in) the fused forward, in place. Returns how many layers changed."""
    changed = 0
    for module in peft_model.modules():
        if type(module) is PeftLoraLinear and isinstance(module.base_layer, nn.Linear) and not module.fan_in_fan_out:
            module.__class__ = FusedLoraLinear
            changed += 1
    return changed
