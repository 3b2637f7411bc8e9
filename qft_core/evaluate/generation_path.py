"""How evaluation generation decodes on the device at hand: a static KV cache with compiled decoding on CUDA, where
plain batched `generate` (dynamic cache, eager forward) made only ~500–1,000 tokens/s at Qwen3-4B shape on an H100;
transformers' dynamic cache elsewhere. The choice carries its reasons, for the evaluation report."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel, StaticCache

from qft_core.device import compile_unavailable_reason

STATIC = "static"
DYNAMIC = "dynamic"


@dataclass(frozen=True)
class GenerationPath:
    """The KV cache `generate` decodes with and whether its decoding steps are compiled (transformers compiles the
    forward, CUDA graphs included, for a static cache). `fallbacks` says, per piece left off, why."""

    cache: str = DYNAMIC
    compiled: bool = False
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def plain(cls) -> GenerationPath:
        """The reference path: transformers' dynamic cache, eager decoding."""
        return cls()

    @property
    def name(self) -> str:
        return f"{self.cache} cache, {'compiled' if self.compiled else 'eager'} decoding"

    def as_metadata(self) -> dict:
        return {"path": self.name, "cache": self.cache, "compiled": self.compiled, "fallbacks": list(self.fallbacks)}

    def decoding_context(self) -> AbstractContextManager:
        """Where compiled decoding is built: Inductor rounds its fused bfloat16 intermediates as eager code does, so
        the greedy tokens stay eager's (a fused kernel keeping float32 between ops can flip a near-tie)."""
        if not self.compiled:
            return nullcontext()
        import torch._inductor.config

        return torch._inductor.config.patch(emulate_precision_casts=True)

    def new_cache(self, model: PreTrainedModel, length: int) -> StaticCache | None:
        """A cache of `length` positions for one batch (its rows, device and dtype are taken on first use), or None
        for the dynamic cache that `generate` builds itself."""
        if self.cache == DYNAMIC:
            return None
        return StaticCache(config=model.config, max_cache_len=length)


def choose_generation_path(*, compile_unavailable: str | None, static_cache_supported: bool) -> GenerationPath:
    """A static cache with compiled decoding where the device compiles (`compile_unavailable` is None: CUDA with
    Triton) and the model supports a static cache; otherwise the plain path, with the reason.

    A static cache without compiled decoding is no win: each step attends over the whole preallocated cache
    instead of the positions written so far (on the CPU, qwen3-tiny: see docs/performance.md, "Generation").
    """
    if not static_cache_supported:
        return GenerationPath(fallbacks=("cache: dynamic, since this model class does not support a static cache",))
    if compile_unavailable is not None:
        return GenerationPath(
            fallbacks=(
                f"cache: dynamic and decoding eager, since compiled decoding is off ({compile_unavailable}) and a "
                "static cache alone attends over all its preallocated positions every step",
            )
        )
    return GenerationPath(cache=STATIC, compiled=True)


def generation_path_for(model: nn.Module) -> GenerationPath:
    """The path for `model` (a PEFT model is judged by its base model) on the device it sits on."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return choose_generation_path(
        compile_unavailable=compile_unavailable_reason(base.device),
        # The model classes whose forward transformers can compile whole are those written for a static cache.
        static_cache_supported=bool(getattr(base, "_can_compile_fullgraph", False)),
    )
