"""The dimensions of a Qwen3-style decoder, read from a model's config: what the memory model and the planner size
the training by, and the monitor's vocabulary for "not learning"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qft_core.config import ModelConfig


class ModelShape(BaseModel):
    """The dimensions of a Qwen3-style decoder (GQA attention with q/k RMSNorm, SwiGLU MLP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: int = Field(ge=1)
    hidden: int = Field(ge=1)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate: int = Field(ge=1)
    vocab: int = Field(ge=1)
    tied_embeddings: bool

    @classmethod
    def from_dims(
        cls,
        *,
        hidden: int,
        layers: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        intermediate: int,
        vocab: int,
        tied_embeddings: bool,
    ) -> ModelShape:
        """The shape with its parameter count: embeddings, per layer q/k/v/o + q_norm/k_norm + MLP + two norms."""
        q, kv = heads * head_dim, kv_heads * head_dim
        per_layer = 2 * hidden * q + 2 * hidden * kv + 2 * head_dim + 3 * hidden * intermediate + 2 * hidden
        params = vocab * hidden * (1 if tied_embeddings else 2) + layers * per_layer + hidden
        return cls(
            params=params,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=vocab,
            tied_embeddings=tied_embeddings,
        )

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        """From a transformers config (Qwen3Config or one with the same attribute names)."""
        heads = config.num_attention_heads
        return cls.from_dims(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @classmethod
    def from_pretrained_dir(cls, directory: str | Path, model_config: ModelConfig) -> ModelShape:
        """From a local model directory's config.json (never downloads, never runs remote code unless asked)."""
        from transformers import AutoConfig

        return cls.from_hf_config(
            AutoConfig.from_pretrained(
                directory, local_files_only=True, trust_remote_code=model_config.trust_remote_code
            )
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        return (
            self.params - self.hidden - self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        ) // self.layers

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one decoder layer, by its module name."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def lora_params(self, r: int, targets: list[str]) -> int:
        """layers × Σ_targets r·(in + out): the A (r×in) and B (out×r) matrices of every adapted linear."""
        shapes = self.linear_shapes()
        unknown = sorted(set(targets) - shapes.keys())
        if unknown:
            raise ValueError(f"unknown projection(s) {unknown}; known: {sorted(shapes)}")
        return self.layers * sum(r * sum(shapes[name]) for name in targets)


QWEN3_4B = ModelShape.from_dims(
    hidden=2560,
    layers=36,
    heads=32,
    kv_heads=8,
    head_dim=128,
    intermediate=9728,
    vocab=151_936,
    tied_embeddings=True,
)
