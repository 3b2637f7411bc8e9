"""The training plan: a per-device memory model of LoRA fine-tuning and the choices it leads to, each explained.

Memory model, in bytes per GPU (or per process on CPU). It models what qft's engine runs: the base model in the
compute dtype (`a` bytes: 2 for bf16, 4 for fp32), PEFT adapters in fp32 whose products run in the compute dtype
(autocast), the chunked loss of `loss.py`, and the fast path as `fast_path.choose_fast_path` picks it for the
device: compiled decoder layers, the attention kernel, the compiled loss kernel (`MemorySetting`). Symbols: h
hidden, q = heads·head_dim, kv = kv_heads·head_dim, i intermediate, r LoRA rank, V vocabulary, L layers,
T = micro-batch·seq_len tokens. The allocator terms are checked against the peaks measured on GPUs
(torch.cuda.max_memory_allocated, docs/performance.md "Plan vs measured memory"); each per-layer term below was
pinned to the byte by measuring 2- and 6-layer models of Qwen3-4B's width on an H200.

Held all step long:
- base_weights: params·a, frozen. FSDP divides them by the world and adds the all-gathered parameters of two
  decoder layers (the one computing and the one prefetched).
- lora_weights, lora_grads, optimizer_states: 16 bytes per adapter parameter (the fp32 weight, its fp32 gradient,
  AdamW's two fp32 moments); FSDP shards them. ddp_grad_buckets: DDP copies the fp32 gradients into its buckets.
- attention_mask: the batch's own mask, where sdpa is given one: packed rows an additive mask (micro·seq²·a),
  padded rows a bool one (micro·seq²).

activations: what autograd keeps for backward, per token per decoder layer (`layer_activation_terms`):
- norm_inputs: each of the two RMSNorms upcasts its input to fp32; eager keeps that fp32 copy (4h), a compiled
  layer keeps the compute-dtype input and recomputes the upcast (a·h); plus the fp32 1/rms (4 bytes).
- qk_norm_inputs: q_norm and k_norm the same way over q + kv values, plus an fp32 1/rms per head.
- attention_inputs: the roped query and key and the value, a·(q + 2·kv). A kernel that is given a mask gets no
  GQA path from transformers, which then repeats k and v to every query head: a·(q + 2·q).
- attention_output: a·q (also o_proj's adapter input) and the fp32 log-sum-exp per head (4·heads).
- attention_mask: sdpa turns the bool padding mask into an additive one in every layer, and keeps it:
  a·seq_len per token (padded rows, micro-batch > 1).
- mlp: gate and up (a·i each) and, in an eager layer, SiLU(gate) (a compiled layer recomputes it).
- adapter_inputs: what the adapters' weight gradients need. Without dropout that is the shared inputs: the first
  norm's output for q/k/v (a·h), the second's for gate/up (a·h), SiLU(gate)·up for down_proj (a·i); o_proj reads
  the attention output, kept already. With dropout every adapted projection keeps its own dropped-out input and
  its 1-byte mask, (a + 1)·in, and the shared inputs are freed.
- adapter_outputs: the r-wide lora_A output, kept twice: 2·a·r per adapted projection.
- ddp_graph_split: under DDP, dynamo splits each compiled layer where DDP's 1 MiB first gradient bucket fills
  (inside the MLP), and the two graphs keep one i-wide tensor more (a·i).
With gradient checkpointing a layer keeps only its input (a·h). Outside the layers: the final norm's fp32 input
(4h) and the loss's gradient of the hidden states (a·h). attention_scores (CPU): the math kernel keeps the softmax
probabilities, heads·seq² per sequence and layer in fp32 (plus a compute-dtype copy if that is not fp32).

Transients, on top of everything kept; the peak counts the larger of the two, since they never overlap:
- logits: the loss holds one chunk of `loss_chunk_tokens`: compiled, the logits (a), the kernel's fp32 buffer
  (4) and the gradient (a) while the previous chunk's gradient (a) is still referenced, chunk·V·(3a + 4); eager
  (CPU), logits, their fp32 copy, the shifted logits, their exp and the previous gradient, 16 bytes per logit.
  Plus the copy of the scored hidden states the chunks are cut from (a·h per token).
- backward_working_set (its excess over logits): one layer's backward has the gradients of gate, up, SiLU and
  the product and of the layer's input and residual in flight, 4a·i + 2a·h compiled (one graph holds them all),
  2a·i + 2a·h eager (autograd frees them as it goes); with checkpointing also the recomputed layer (and, on
  CPU, its softmax probabilities).

Outside the allocator (not in max_memory_allocated):
- cuda_context: the CUDA context, cuBLAS/cuDNN handles and loaded kernels, 0.75 GiB on an H200 with torch 2.11;
  NCCL's communicator buffers add 0.55 GiB when the world has more than one rank.
- allocator_slack: the caching allocator reserves more than it hands out (3-11% above the peak measured); 10%.
The plan fits all of it into USABLE_FRACTION of the device: 95% of a GPU, keeping the rest for what nothing here
counts (another process on the GPU, evaluation between steps); 85% of the RAM, which the OS and other programs share.

Micro-batches count sequences of at most seq_len tokens (with packing they share rows), so micro·seq_len tokens
is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qft_core.config import ModelConfig, QftConfig
from qft_core.device import resolve_device
from qft_core.train.hardware import GIB, HardwareProfile

USABLE_FRACTION = {"cuda": 0.95, "cpu": 0.85}
FP32_BYTES = 4
# Bytes per logit of the loss's chunk kernel run eagerly: logits, fp32 copy, shifted logits, exp, previous grad.
EAGER_LOSS_BYTES_PER_LOGIT = 16
CUDA_CONTEXT_BYTES = 3 * GIB // 4
NCCL_BUFFER_BYTES = 11 * GIB // 20
ALLOCATOR_SLACK = 0.10
OVERHEAD_TERMS = ("cuda_context", "allocator_slack")
# torch.distributed._DEFAULT_FIRST_BUCKET_BYTES: dynamo's DDPOptimizer cuts a compiled graph once it holds this
# many bytes of trainable parameters.
DDP_FIRST_BUCKET_BYTES = 1024**2
MIN_LORA_RANK = 4
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The tensor each projection's adapter reads: q/k/v share the first norm's output, gate/up the second's.
ADAPTER_INPUTS = {
    "q_proj": "attention_norm",
    "k_proj": "attention_norm",
    "v_proj": "attention_norm",
    "o_proj": "attention_output",
    "gate_proj": "mlp_norm",
    "up_proj": "mlp_norm",
    "down_proj": "mlp_product",
}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

Dtype = Literal["bfloat16", "float16", "float32"]
# How a micro-batch's sequences sit in rows: packed, one padded row each, or rows of exactly seq_len tokens (no
# mask at all: what the benchmark feeds, and what padded rows are at micro-batch 1).
Rows = Literal["packed", "padded", "full"]
Attention = Literal["flash", "flex", "dense_mask", "padding_mask", "math"]
MASKED_ATTENTION = ("dense_mask", "padding_mask", "math")
ATTENTION_WHY = {
    "flash": "sdpa's flash kernel (rows without padding need no mask)",
    "flex": "flex attention with a block mask per packed document",
    "dense_mask": "sdpa with the packed rows' dense mask, which repeats k and v to every query head",
    "padding_mask": "sdpa with a padding mask, which repeats k and v to every query head and is made additive in"
    " every layer (training.packing avoids both)",
    "math": "the CPU's sdpa, counted as the math kernel that keeps the softmax probabilities",
}


class PlanError(ValueError):
    """A configuration the planner cannot turn into a plan; the message names the config key."""


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
            raise PlanError(f"lora.target_modules: unknown projection(s) {unknown}; known: {sorted(shapes)}")
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


def dtype_bytes(dtype: Dtype) -> int:
    return 4 if dtype == "float32" else 2


@dataclass(frozen=True)
class MemorySetting:
    """Everything the memory model depends on besides the model shape."""

    device: Literal["cuda", "cpu"]
    dtype: Dtype
    world_size: int
    sharded: bool
    micro_batch: int
    seq_len: int
    checkpointing: bool
    lora_r: int
    lora_targets: tuple[str, ...]
    lora_dropout: float
    loss_chunk_tokens: int | None
    rows: Rows
    # What the GPU offers the engine's fast path (hardware profile): torch.compile builds kernels, flex attention runs.
    compiled_kernels: bool
    flex_attention: bool

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def compiled_layers(self) -> bool:
        """`choose_fast_path` keeps decoder layers eager under FSDP2 across ranks (a lone rank is never wrapped)."""
        return self.compiled_kernels and not (self.sharded and self.world_size > 1)

    @property
    def attention(self) -> Attention:
        """The kernel attention runs: `attention.choose_attention`, then transformers' sdpa dispatch (a padding
        mask of all ones, as one row has, is dropped for the causal flag)."""
        if self.device == "cpu":
            return "math"
        if self.rows == "packed":
            return "flex" if self.flex_attention else "dense_mask"
        if self.rows == "padded" and self.micro_batch > 1:
            return "padding_mask"
        return "flash"


def layer_activation_terms(shape: ModelShape, setting: MemorySetting) -> dict[str, int]:
    """Bytes one decoder layer without checkpointing keeps for backward per token, by what keeps them (module
    docstring: why each)."""
    a = dtype_bytes(setting.dtype)
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    compiled = setting.compiled_layers
    upcast = a if compiled else FP32_BYTES
    shapes = shape.linear_shapes()
    targets = setting.lora_targets
    if setting.lora_dropout > 0:
        adapter_inputs = sum(shapes[name][0] for name in targets) * (a + 1)
    else:
        shared = {ADAPTER_INPUTS[name]: shapes[name][0] for name in targets}
        adapter_inputs = a * sum(width for source, width in shared.items() if source != "attention_output")
    kv_kept = q if setting.attention in MASKED_ATTENTION else kv
    layer_adapter_bytes = FP32_BYTES * shape.lora_params(setting.lora_r, list(targets)) // shape.layers
    graph_split = compiled and not setting.sharded and setting.world_size > 1
    return {
        "norm_inputs": 2 * (upcast * h + FP32_BYTES),
        "qk_norm_inputs": upcast * (q + kv) + FP32_BYTES * (shape.heads + shape.kv_heads),
        "attention_inputs": a * (q + 2 * kv_kept),
        "attention_output": a * q + FP32_BYTES * shape.heads,
        "attention_mask": a * setting.seq_len if setting.attention == "padding_mask" else 0,
        "mlp": a * i * (2 if compiled else 3),
        "adapter_inputs": adapter_inputs,
        "adapter_outputs": len(targets) * 2 * a * setting.lora_r,
        "ddp_graph_split": a * i if graph_split and layer_adapter_bytes > DDP_FIRST_BUCKET_BYTES else 0,
    }


def layer_activation_bytes_per_token(shape: ModelShape, setting: MemorySetting) -> int:
    """The sum of `layer_activation_terms`."""
    return sum(layer_activation_terms(shape, setting).values())


def backward_bytes_per_token(shape: ModelShape, setting: MemorySetting) -> int:
    """Gradients one layer's backward has in flight per token (module docstring: backward_working_set)."""
    a = dtype_bytes(setting.dtype)
    mlp_gradients = 4 if setting.compiled_layers else 2
    return a * (mlp_gradients * shape.intermediate + 2 * shape.hidden)


def loss_chunk_bytes(shape: ModelShape, setting: MemorySetting) -> int:
    """The loss's transient: one chunk of logits and their gradients, and the scored hidden states' copy."""
    a = dtype_bytes(setting.dtype)
    chunk = min(setting.loss_chunk_tokens or setting.tokens, setting.tokens)
    per_logit = 3 * a + FP32_BYTES if setting.compiled_kernels else EAGER_LOSS_BYTES_PER_LOGIT
    return chunk * shape.vocab * per_logit + setting.tokens * a * shape.hidden


def estimate_memory(shape: ModelShape, setting: MemorySetting) -> dict[str, int]:
    """Bytes per device, by component (module docstring: the memory model). `allocated_bytes` of the result is what
    torch.cuda.max_memory_allocated should show; the OVERHEAD_TERMS come on top."""
    a = dtype_bytes(setting.dtype)
    shards = setting.world_size if setting.sharded else 1
    adapter = shape.lora_params(setting.lora_r, list(setting.lora_targets))
    tokens = setting.tokens
    outside_layers = FP32_BYTES * shape.hidden + a * shape.hidden
    layer_set = tokens * layer_activation_bytes_per_token(shape, setting)
    layer_scores = 0
    if setting.attention == "math":
        layer_scores = setting.micro_batch * shape.heads * setting.seq_len**2 * (4 + (0 if a == 4 else a))
    logits = loss_chunk_bytes(shape, setting)
    gradients_in_flight = tokens * backward_bytes_per_token(shape, setting)
    if setting.checkpointing:
        activations = tokens * (shape.layers * a * shape.hidden + outside_layers)
        scores = 0
        backward = gradients_in_flight + layer_set + layer_scores
    else:
        activations = shape.layers * layer_set + tokens * outside_layers
        scores = shape.layers * layer_scores
        backward = gradients_in_flight
    mask_entry = {"dense_mask": a, "math": a, "padding_mask": 1}.get(setting.attention, 0)
    allocated = {
        "base_weights": math.ceil(shape.params * a / shards),
        "fsdp_gathered_layers": 2 * shape.layer_params * a if setting.sharded else 0,
        "lora_weights": math.ceil(4 * adapter / shards),
        "lora_grads": math.ceil(4 * adapter / shards),
        "optimizer_states": math.ceil(8 * adapter / shards),
        "ddp_grad_buckets": 4 * adapter if not setting.sharded and setting.world_size > 1 else 0,
        "activations": activations,
        "attention_scores": scores,
        "attention_mask": setting.micro_batch * setting.seq_len**2 * mask_entry,
        "logits": logits,
        "backward_working_set": max(0, backward - logits),
    }
    context = 0
    if setting.device == "cuda":
        context = CUDA_CONTEXT_BYTES + (NCCL_BUFFER_BYTES if setting.world_size > 1 else 0)
    slack = math.ceil(ALLOCATOR_SLACK * sum(allocated.values()))
    return allocated | {"cuda_context": context, "allocator_slack": slack}


def allocated_bytes(breakdown: dict[str, int]) -> int:
    """The part of an `estimate_memory` breakdown that PyTorch's allocator hands out (its peak)."""
    return sum(value for name, value in breakdown.items() if name not in OVERHEAD_TERMS)


class TrainingPlan(BaseModel):
    """How to train on this hardware: processes, sharding, batch split, precision, LoRA size, and why."""

    model_config = ConfigDict(extra="forbid")

    world_size: int = Field(ge=1)
    nproc_per_node: int = Field(ge=1)
    nnodes: int = Field(ge=1)
    backend: Literal["nccl", "gloo"]
    device: Literal["cuda", "cpu"]
    strategy: Literal["ddp", "fsdp"]
    micro_batch_size: int = Field(ge=1)
    grad_accum_steps: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    requested_global_batch_size: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    gradient_checkpointing: bool
    dtype: Dtype
    lora_r: int = Field(ge=1)
    lora_targets: list[str]
    lora_params: int = Field(ge=0)
    # The fast path the memory estimate assumes (the engine picks its own at start and logs what it left off).
    compiled_layers: bool = False
    attention: Attention | None = None
    memory_gib: dict[str, float]
    fits: bool
    tokens_per_step: int = Field(ge=1)
    recommended_tp: int = Field(1, ge=1)
    recommended_pp: int = Field(1, ge=1)
    torchrun_args: list[str]
    explanations: list[str]

    def to_markdown(self) -> str:
        lines = [
            "## Training plan",
            "",
            "| setting | value |",
            "|---|---|",
            f"| device / backend | {self.device} / {self.backend} |",
            f"| nodes × processes per node = world | {self.nnodes} × {self.nproc_per_node} = {self.world_size} |",
            f"| strategy | {self.strategy} |",
            f"| dtype | {self.dtype} |",
            f"| micro-batch × accumulation × world = global batch | {self.micro_batch_size} × {self.grad_accum_steps}"
            f" × {self.world_size} = {self.global_batch_size} (requested {self.requested_global_batch_size}) |",
            f"| sequence length / tokens per step (at most) | {self.seq_len} / {self.tokens_per_step} |",
            f"| gradient checkpointing | {'on' if self.gradient_checkpointing else 'off'} |",
            f"| LoRA | r={self.lora_r} on {', '.join(self.lora_targets)} ({self.lora_params:,} parameters) |",
            f"| decoder layers / attention (memory estimate) | {'compiled' if self.compiled_layers else 'eager'}"
            f" / {self.attention or '-'} |",
            f"| fits | {'yes' if self.fits else 'NO'} |",
            f"| recommended tensor / pipeline parallel | {self.recommended_tp} / {self.recommended_pp} |",
            f"| torchrun | `torchrun {' '.join(self.torchrun_args)}` |",
            "",
            "| memory per device | GiB |",
            "|---|---|",
            *(f"| {name} | {value:.3f} |" for name, value in self.memory_gib.items()),
            "",
            "### Why",
            "",
            *(f"- {text}" for text in self.explanations),
        ]
        return "\n".join(lines) + "\n"


def _powers_of_two_up_to(limit: int) -> list[int]:
    """The powers of two ≤ limit (at least [1]), largest first."""
    return [1 << k for k in range(max(limit, 1).bit_length() - 1, -1, -1)]


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


class _Planner:
    def __init__(
        self, shape: ModelShape, budget: int, micro_cap: int, fixed_micro: int | None, checkpointing: bool | None
    ):
        self.shape = shape
        self.budget = budget
        self.micro_cap = micro_cap
        self.fixed_micro = fixed_micro
        self.checkpointing = checkpointing

    def total(self, setting: MemorySetting) -> int:
        return sum(estimate_memory(self.shape, setting).values())

    def fit(self, setting: MemorySetting) -> MemorySetting | None:
        """The largest power-of-two micro-batch that fits, without checkpointing if that fits micro-batch 1."""
        candidates = [self.fixed_micro] if self.fixed_micro else _powers_of_two_up_to(self.micro_cap)
        options = [self.checkpointing] if self.checkpointing is not None else [False, True]
        for checkpointing in options:
            for micro in candidates:
                trial = replace(setting, micro_batch=micro, checkpointing=checkpointing)
                if self.total(trial) <= self.budget:
                    return trial
        return None


def _lora_ladder(r: int, targets: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
    """Smaller adapters to try, in order: halve the rank down to MIN_LORA_RANK, then attention projections only."""
    ranks = [r] + [r // 2**k for k in range(1, 32) if r // 2**k >= MIN_LORA_RANK]
    attention = tuple(name for name in targets if name in ATTENTION_TARGETS)
    ladder = [(rank, targets) for rank in ranks]
    if attention and attention != targets:
        ladder += [(rank, attention) for rank in ranks]
    return ladder


def _batch_split(global_batch: int, world: int, largest_micro: int, fixed: bool) -> tuple[int, int, int]:
    """(micro, accumulation, effective global batch): the requested batch exactly if any micro-batch allows it,
    else the nearest multiple of micro × world (ties to the larger micro-batch)."""
    candidates = [largest_micro] if fixed else _powers_of_two_up_to(largest_micro)
    options = []
    for micro in candidates:
        per_step = micro * world
        accumulation = max(1, round(global_batch / per_step))
        effective = accumulation * per_step
        options.append((abs(effective - global_batch), -micro, accumulation, effective))
    _, negative_micro, accumulation, effective = min(options)
    return -negative_micro, accumulation, effective


def _resolve_dtype(config: QftConfig, hardware: HardwareProfile, why: list[str]) -> Dtype:
    requested = config.model.dtype
    if hardware.device == "cpu":
        if requested == "auto":
            why.append(
                "dtype float32: training on CPU, the reference precision (bf16 on most CPUs is emulated and slow)."
            )
            return "float32"
        why.append(f"dtype {requested}: as configured (model.dtype) for CPU training.")
        return requested
    if requested == "auto":
        if hardware.bf16_supported:
            why.append("dtype bfloat16: every GPU has compute capability ≥ 8.0; LoRA weights stay fp32.")
            return "bfloat16"
        why.append("dtype float32: a GPU lacks bf16 (compute capability < 8.0) and fp16 would need loss scaling.")
        return "float32"
    if requested == "bfloat16" and not hardware.bf16_supported:
        why.append("dtype float32: model.dtype asks for bfloat16 but a GPU lacks it (compute capability < 8.0).")
        return "float32"
    why.append(f"dtype {requested}: as configured (model.dtype).")
    return requested


def _processes(config: QftConfig, hardware: HardwareProfile, why: list[str]) -> int:
    nproc = config.training.nproc
    if hardware.device == "cpu":
        why.append(
            f"{nproc} CPU process(es) per node (training.nproc) with the gloo backend: no GPU was found;"
            f" {hardware.physical_cores} physical cores are shared among them."
        )
        return nproc
    gpus = hardware.gpu_count
    if nproc > gpus:
        why.append(
            f"{gpus} process(es) per node, one per GPU: training.nproc={nproc} exceeds the {gpus} visible GPU(s)."
        )
        return gpus
    note = f"; {gpus - nproc} GPU(s) stay idle (raise training.nproc to use them)" if nproc < gpus else ""
    why.append(f"{nproc} process(es) per node, one per GPU, NCCL backend (training.nproc){note}.")
    return nproc


def rendezvous_args(nnodes: int, nproc_per_node: int, endpoint: str) -> list[str]:
    """torchrun's arguments for a c10d rendezvous of `nnodes` nodes at `endpoint` (host:port); the same on every
    node, the rendezvous assigns the node ranks."""
    return [
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        "--rdzv-id=qft",
    ]


def _torchrun_args(config: QftConfig, nproc_per_node: int, why: list[str]) -> list[str]:
    training = config.training
    endpoint = f"{training.master_addr}:{training.master_port}"
    if training.nnodes == 1:
        return [
            "--nnodes=1",
            f"--nproc-per-node={nproc_per_node}",
            f"--master-addr={training.master_addr}",
            f"--master-port={training.master_port}",
        ]
    if training.launcher != "local":
        why.append(
            f"{training.nnodes} nodes started by the {training.launcher} launcher: the same torchrun command on every"
            f" node, the c10d rendezvous on its first node at port {training.master_port} (training.master_addr is"
            " not used)."
        )
        return rendezvous_args(training.nnodes, nproc_per_node, f"<first node>:{training.master_port}")
    if training.master_addr in LOCAL_HOSTS:
        raise PlanError(
            f"training.master_addr: {training.master_addr!r} cannot be reached from the other "
            f"{training.nnodes - 1} node(s); set it to the address of the rendezvous node"
        )
    why.append(
        f"{training.nnodes} nodes: run the same torchrun command on every node; the c10d rendezvous at {endpoint}"
        f" (training.master_addr:master_port) assigns node ranks, so no --node-rank is needed."
    )
    return rendezvous_args(training.nnodes, nproc_per_node, endpoint)


def _on_configured_device(config: QftConfig, hardware: HardwareProfile, why: list[str]) -> HardwareProfile:
    """The hardware as `model.device` lets training use it: `cpu` hides the GPUs, `cuda` without one is a
    `DeviceUnavailableError`."""
    device = resolve_device(config.model.device, cuda_available=bool(hardware.gpus))
    if device == "cpu" and hardware.gpus:
        why.append(f"device cpu: as configured (model.device); the {hardware.gpu_count} GPU(s) stay idle.")
        return hardware.model_copy(update={"gpus": [], "links": [], "interconnect": "none"})
    return hardware


def plan_training(config: QftConfig, hardware: HardwareProfile, shape: ModelShape) -> TrainingPlan:
    """Decide processes, sharding, micro-batch, accumulation, checkpointing, precision and LoRA size."""
    training, lora = config.training, config.lora
    why: list[str] = []
    hardware = _on_configured_device(config, hardware, why)
    device = hardware.device
    dtype = _resolve_dtype(config, hardware, why)
    nproc = _processes(config, hardware, why)
    world = nproc * training.nnodes
    torchrun_args = _torchrun_args(config, nproc, why)
    if device == "cuda":
        capacity = int(hardware.min_gpu_memory_gib * GIB)
        where = f"the smallest GPU's {hardware.min_gpu_memory_gib:.1f} GiB"
    else:
        capacity = int(hardware.ram_gib * GIB / nproc)
        where = f"{hardware.ram_gib:.1f} GiB RAM shared by {nproc} process(es)"
    budget = int(capacity * USABLE_FRACTION[device])
    why.append(
        f"Memory budget {_gib(budget)} per {'GPU' if device == 'cuda' else 'process'}: {USABLE_FRACTION[device]:.0%} of"
        f" {where}; the estimate inside it counts the CUDA context, NCCL buffers and the allocator's slack."
    )
    seq_len = config.model.max_length
    micro_cap = max(1, training.global_batch_size // world)
    planner = _Planner(shape, budget, micro_cap, training.micro_batch_size, training.gradient_checkpointing)
    base = MemorySetting(
        device=device,
        dtype=dtype,
        world_size=world,
        sharded=False,
        micro_batch=1,
        seq_len=seq_len,
        checkpointing=bool(training.gradient_checkpointing),
        lora_r=lora.r,
        lora_targets=tuple(lora.target_modules),
        lora_dropout=lora.dropout,
        loss_chunk_tokens=training.loss_chunk_tokens,
        rows="packed" if training.packing else "padded",
        compiled_kernels=device == "cuda" and hardware.compiled_kernels,
        flex_attention=device == "cuda" and hardware.flex_attention,
    )
    sharded, fit = _choose_strategy(planner, base, training.sharding, world, why)
    if fit is None:
        fit = _shrink_lora(planner, replace(base, sharded=sharded), why)

    recommended_tp = recommended_pp = 1
    if fit is None:
        fit, recommended_tp, recommended_pp = _recommend_model_parallel(
            planner,
            replace(
                base,
                sharded=sharded,
                micro_batch=training.micro_batch_size or 1,
                checkpointing=training.gradient_checkpointing is not False,
            ),
            hardware,
            why,
        )
    largest_micro = fit.micro_batch
    micro, accumulation, effective = _batch_split(
        training.global_batch_size, world, largest_micro, fixed=training.micro_batch_size is not None
    )
    setting = replace(fit, micro_batch=micro)
    _explain_batch(
        why,
        training.global_batch_size,
        world,
        micro,
        largest_micro,
        accumulation,
        effective,
        fixed=training.micro_batch_size is not None,
    )
    why.append(
        f"Batch sizes count sequences of at most {seq_len} tokens (model.max_length)"
        f"{', packed into shared rows within each micro-batch' if training.packing else ', one per padded row'};"
        f" one optimizer step sees at most {effective * seq_len} tokens, the bound the memory estimate uses."
    )
    _explain_checkpointing(why, planner, setting, training.gradient_checkpointing)
    _explain_fast_path(why, setting)
    breakdown = estimate_memory(shape, setting)
    total = sum(breakdown.values())
    memory_gib = {name: value / GIB for name, value in breakdown.items()}
    memory_gib |= {
        "allocated": allocated_bytes(breakdown) / GIB,
        "total": total / GIB,
        "budget": budget / GIB,
        "capacity": capacity / GIB,
    }
    largest = sorted(breakdown.items(), key=lambda item: -item[1])[:3]
    why.append(
        f"Estimated {_gib(total)} of the {_gib(budget)} budget per device at micro-batch {micro} × {seq_len} tokens"
        f" (largest items: {', '.join(f'{name} {_gib(value)}' for name, value in largest)}); the engine's logged"
        f" peak (max_memory_allocated) should be near {_gib(allocated_bytes(breakdown))}, the total less"
        " cuda_context and allocator_slack."
    )
    return TrainingPlan(
        world_size=world,
        nproc_per_node=nproc,
        nnodes=training.nnodes,
        backend="nccl" if device == "cuda" else "gloo",
        device=device,
        strategy="fsdp" if setting.sharded else "ddp",
        micro_batch_size=micro,
        grad_accum_steps=accumulation,
        global_batch_size=effective,
        requested_global_batch_size=training.global_batch_size,
        seq_len=seq_len,
        gradient_checkpointing=setting.checkpointing,
        dtype=dtype,
        lora_r=setting.lora_r,
        lora_targets=list(setting.lora_targets),
        lora_params=shape.lora_params(setting.lora_r, list(setting.lora_targets)),
        compiled_layers=setting.compiled_layers,
        attention=setting.attention,
        memory_gib=memory_gib,
        fits=total <= budget,
        tokens_per_step=effective * seq_len,
        recommended_tp=recommended_tp,
        recommended_pp=recommended_pp,
        torchrun_args=torchrun_args,
        explanations=why,
    )


_STATIC = ("base_weights", "lora_weights", "lora_grads", "optimizer_states", "ddp_grad_buckets")


def _recommend_model_parallel(
    planner: _Planner, setting: MemorySetting, hardware: HardwareProfile, why: list[str]
) -> tuple[MemorySetting, int, int]:
    """For a model that fits no device even sharded: (the setting kept, tensor parallel, pipeline parallel)."""
    needed = math.ceil(planner.total(replace(setting, sharded=False, world_size=1)) / planner.budget)
    tensor_parallel = min(1 << (needed - 1).bit_length(), 8)
    pipeline_parallel = math.ceil(needed / tensor_parallel)
    why.append(
        f"DOES NOT FIT: micro-batch {setting.micro_batch} {'with' if setting.checkpointing else 'without'}"
        f" checkpointing{' and sharding' if setting.sharded else ''} needs {_gib(planner.total(setting))} of"
        f" {_gib(planner.budget)}, and no smaller LoRA (down to r={MIN_LORA_RANK}, attention projections only)"
        f" fits either. One replica needs about {needed}× one device: recommended tensor parallel {tensor_parallel}"
        f" (within a node; interconnect {hardware.interconnect}) × pipeline parallel {pipeline_parallel}"
        " (across nodes) — a recommendation only, this engine implements neither."
    )
    return setting, tensor_parallel, pipeline_parallel


def _choose_strategy(
    planner: _Planner, base: MemorySetting, sharding: str, world: int, why: list[str]
) -> tuple[bool, MemorySetting | None]:
    """(sharded, fit): FSDP when configured, or when a full replica plus micro-batch 1 exceeds one device."""
    replicated = replace(base, sharded=False)
    breakdown = estimate_memory(planner.shape, replicated)
    static_text = f"replicated weights + LoRA states {_gib(sum(breakdown[name] for name in _STATIC))}"
    if sharding == "ddp":
        why.append(f"strategy DDP: as configured (training.sharding=ddp); {static_text} on every rank.")
        return False, planner.fit(replicated)
    if sharding == "fsdp":
        note = " (one rank: nothing to shard, FSDP only adds overhead)" if world == 1 else ""
        why.append(f"strategy FSDP: as configured (training.sharding=fsdp){note}; {static_text} before sharding.")
        return True, planner.fit(replace(base, sharded=True))
    fit = planner.fit(replicated)
    if fit is not None:
        why.append(
            f"strategy DDP: {static_text} plus the activations of micro-batch 1 fit one device's budget"
            f" {_gib(planner.budget)}, so every rank keeps a full replica and only gradients travel."
        )
        return False, fit
    if world == 1:
        why.append(
            f"strategy DDP (single rank): {static_text} plus micro-batch 1 exceed {_gib(planner.budget)},"
            " and one rank has nobody to shard with."
        )
        return False, None
    why.append(
        f"strategy FSDP: {static_text} plus micro-batch 1 exceed one device's budget {_gib(planner.budget)};"
        f" weights and LoRA states are sharded over {world} ranks."
    )
    return True, planner.fit(replace(base, sharded=True))


def _shrink_lora(planner: _Planner, base: MemorySetting, why: list[str]) -> MemorySetting | None:
    for rank, targets in _lora_ladder(base.lora_r, base.lora_targets)[1:]:
        fit = planner.fit(replace(base, lora_r=rank, lora_targets=targets))
        if fit is not None:
            why.append(
                f"LoRA reduced from r={base.lora_r} on {', '.join(base.lora_targets)} to r={rank} on"
                f" {', '.join(targets)}: the configured adapter does not fit even micro-batch 1."
            )
            return fit
    return None


def _explain_batch(
    why: list[str],
    requested: int,
    world: int,
    micro: int,
    largest: int,
    accumulation: int,
    effective: int,
    *,
    fixed: bool,
) -> None:
    source = (
        "training.micro_batch_size"
        if fixed
        else f"the largest power of two that fits memory with micro-batch × world ≤ global batch is {largest}"
    )
    if micro < largest:
        match = "exactly" if effective == requested else "as closely as possible"
        source += f", lowered to {micro} to match the requested global batch {match}"
    why.append(f"micro-batch {micro} per rank ({source}).")
    if effective == requested:
        why.append(f"gradient accumulation {accumulation}: {requested} = {micro} × {accumulation} × {world} ranks.")
    else:
        why.append(
            f"gradient accumulation {accumulation}: the requested global batch {requested} is not a multiple of"
            f" micro-batch × world = {micro * world}; the effective global batch is {effective}"
            f" = {micro} × {accumulation} × {world} (nearest exact value; learning rate is not rescaled)."
        )


def _explain_checkpointing(why: list[str], planner: _Planner, setting: MemorySetting, configured: bool | None) -> None:
    if configured is not None:
        why.append(
            f"gradient checkpointing {'on' if configured else 'off'}: as configured (training.gradient_checkpointing)."
        )
    elif setting.checkpointing:
        without = planner.total(replace(setting, micro_batch=1, checkpointing=False))
        why.append(
            f"gradient checkpointing on: without it micro-batch 1 needs {_gib(without)} > budget"
            f" {_gib(planner.budget)}; it costs about one extra forward pass per step."
        )
    else:
        why.append("gradient checkpointing off: micro-batch 1 fits without it, so no forward pass is recomputed.")



def _explain_fast_path(why: list[str], setting: MemorySetting) -> None:
    if setting.device == "cpu":
        pieces = "eager decoder layers and loss kernel (torch.compile is used on CUDA only)"
    elif not setting.compiled_kernels:
        pieces = (
            "eager decoder layers and loss kernel: the hardware profile says torch.compile cannot build kernels here"
            " (its notes say why), so every layer keeps its fp32 norm copies and SiLU output"
        )
    elif setting.compiled_layers:
        pieces = "compiled decoder layers and loss kernel"
    else:
        pieces = "eager decoder layers (not compiled under FSDP2 across ranks), compiled loss kernel"
    why.append(
        f"Fast path as the engine will pick it (fast_path.choose_fast_path): {pieces}; attention: "
        f"{ATTENTION_WHY[setting.attention]}. The memory estimate counts the activations these kernels keep."
    )
