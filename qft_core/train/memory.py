"""The memory model of LoRA fine-tuning: what the planner sizes a run by, each term pinned to measured peaks.

In bytes per GPU (or per process on CPU). It models what qft's engine runs: the base model in the compute dtype
(`a` bytes: 2 for bf16, 4 for fp32), PEFT adapters in fp32 whose products run in the compute dtype (autocast),
the chunked loss of `loss.py`, and the fast path as `fast_path.choose_fast_path` picks it for the device:
compiled decoder layers, the attention kernel, the compiled loss kernel (`MemorySetting`). Symbols: h
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
A checkpointed layer keeps only its input (a·h). The engine checkpoints the first `checkpoint_layers` of the L
layers (layer_checkpointing.py), so backward meets the layers that keep everything first and frees them before it
recomputes any: while one layer is kept whole the recomputed layer never adds to the peak, and only with all L
checkpointed is the recomputed layer on top of the kept inputs. Outside the layers: the final norm's fp32 input
(4h) and the loss's gradient of the hidden states (a·h). attention_scores (CPU): the math kernel keeps the softmax
probabilities, heads·seq² per sequence and layer in fp32 (plus a compute-dtype copy if that is not fp32).

Transients, on top of everything kept; the peak counts the larger of the two, since they never overlap:
- logits: the loss holds one chunk of `loss_chunk_tokens`: compiled, the logits (a), the kernel's fp32 buffer
  (4) and the gradient (a) while the previous chunk's gradient (a) is still referenced, chunk·V·(3a + 4); eager
  (CPU), logits, their fp32 copy, the shifted logits, their exp and the previous gradient, 16 bytes per logit.
  Plus the copy of the scored hidden states the chunks are cut from (a·h per token).
- backward_working_set (its excess over logits): one layer's backward has the gradients of gate, up, SiLU and
  the product and of the layer's input and residual in flight, 4a·i + 2a·h compiled (one graph holds them all),
  2a·i + 2a·h eager (autograd frees them as it goes); with every layer checkpointed also the recomputed layer
  (and, on CPU, its softmax probabilities).

Outside the allocator (not in max_memory_allocated):
- cuda_context: the CUDA context, cuBLAS/cuDNN handles and loaded kernels, 0.75 GiB on an H200 with torch 2.11;
  NCCL's communicator buffers add 0.55 GiB when the world has more than one rank.
- allocator_slack: the caching allocator reserves more than it hands out (3-11% above the peak measured); 10%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from qft_core.model.shape import ModelShape
from qft_core.train.hardware import GIB

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

Dtype = Literal["bfloat16", "float16", "float32"]
# How a micro-batch's sequences sit in rows: packed, one padded row each, or rows of exactly seq_len tokens (no
# mask at all: what the benchmark feeds, and what padded rows are at micro-batch 1).
Rows = Literal["packed", "padded", "full"]
Attention = Literal["flash", "flex", "dense_mask", "padding_mask", "math"]
MASKED_ATTENTION = ("dense_mask", "padding_mask", "math")


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
    # How many decoder layers, the first ones, recompute their activations in backward (0: none).
    checkpoint_layers: int
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
    checkpointed = setting.checkpoint_layers
    if not 0 <= checkpointed <= shape.layers:
        raise ValueError(f"checkpoint_layers {checkpointed}: the model has {shape.layers} decoder layers")
    whole = shape.layers - checkpointed
    activations = tokens * (checkpointed * a * shape.hidden + outside_layers) + whole * layer_set
    scores = whole * layer_scores
    backward = gradients_in_flight + (layer_set + layer_scores if whole == 0 else 0)
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
