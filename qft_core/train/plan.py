"""The training plan: processes, sharding, micro-batch, accumulation, checkpointing, precision and the effective
LoRA settings that fit the memory model (memory.py) of this model on this hardware, each choice explained.

The plan fits all of it into USABLE_FRACTION of the device: 95% of a GPU, keeping the rest for what nothing here
counts (another process on the GPU, evaluation between steps); 85% of the RAM, which the OS and other programs share.

Micro-batches count sequences of at most seq_len tokens (with packing they share rows), so micro·seq_len tokens
is an upper bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qft_core.config import QftConfig
from qft_core.device import resolve_device
from qft_core.model.shape import ModelShape
from qft_core.train.hardware import GIB, HardwareProfile, profile_hardware
from qft_core.train.memory import (
    Attention,
    Dtype,
    MemorySetting,
    allocated_bytes,
    dtype_bytes,
    estimate_memory,
    layer_activation_bytes_per_token,
)

USABLE_FRACTION = {"cuda": 0.95, "cpu": 0.85}
MIN_LORA_RANK = 4
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
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


class LoraSettings(BaseModel):
    """The LoRA adapter a run trains: the configured one (`lora.*`), or the smaller one the planner fell back to
    for memory, whose alpha shrinks with r so that PEFT's scale alpha/r stays as configured."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str]

    @property
    def scale(self) -> float:
        """What PEFT multiplies the adapter's product by."""
        return self.alpha / self.r


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
    # Activation checkpointing: how many decoder layers, the first ones, recompute their activations in backward.
    checkpoint_layers: int = Field(0, ge=0)
    dtype: Dtype
    lora: LoraSettings
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

    def decisions_json(self) -> str:
        """The plan without what quotes the machine's state when it was planned (the explanations, the memory
        budget and capacity: RAM available differs from one run to the next), for telling trainings apart."""
        decisions = self.model_dump(mode="json", exclude={"explanations"})
        decisions["memory_gib"] = {
            name: value for name, value in self.memory_gib.items() if name not in ("budget", "capacity")
        }
        return json.dumps(decisions, sort_keys=True)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.checkpoint_layers > 0

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
            f"| gradient checkpointing | {_checkpoint_text(self.checkpoint_layers)} |",
            f"| LoRA | r={self.lora.r}, alpha={self.lora.alpha:g}, dropout={self.lora.dropout:g} on"
            f" {', '.join(self.lora.target_modules)} ({self.lora_params:,} parameters) |",
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


def _checkpoint_text(layers: int) -> str:
    return f"the first {layers} decoder layer(s); the rest keep their activations" if layers else "off"


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
        """The setting that fits with the fewest checkpointed layers (the least recomputation), at the largest
        power-of-two micro-batch that needs no more."""
        candidates = [self.fixed_micro] if self.fixed_micro else _powers_of_two_up_to(self.micro_cap)
        best = None
        for micro in candidates:
            trial = replace(setting, micro_batch=micro)
            layers = fewest_checkpoint_layers(self.shape, trial, self.budget, self.checkpointing)
            if layers is not None and (best is None or layers < best.checkpoint_layers):
                best = replace(trial, checkpoint_layers=layers)
            if layers == 0:
                break
        return best


def checkpoint_layer_options(layers: int, configured: bool | None) -> list[int]:
    """Checkpointed layer counts to try, fewest first: training.gradient_checkpointing true is every layer,
    false none, unset any count."""
    if configured is None:
        return list(range(layers + 1))
    return [layers if configured else 0]


def fewest_checkpoint_layers(
    shape: ModelShape, setting: MemorySetting, budget: int, configured: bool | None = None
) -> int | None:
    """The fewest decoder layers to checkpoint for `setting` to fit `budget` bytes in all (memory model, with
    the CUDA context and allocator slack), among `checkpoint_layer_options`; None when none fits. Each
    checkpointed layer recomputes its forward in backward, so fewer is faster."""
    for layers in checkpoint_layer_options(shape.layers, configured):
        if sum(estimate_memory(shape, replace(setting, checkpoint_layers=layers)).values()) <= budget:
            return layers
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


def plan_for(config: QftConfig, model_dir: str | Path, hardware: HardwareProfile | None = None) -> TrainingPlan:
    """The plan for the model in `model_dir` (its config.json gives the shape) on `hardware` (default: this
    machine's profile): what the `training_plan` asset, `qft plan` and `qft train` all run."""
    shape = ModelShape.from_pretrained_dir(model_dir, config.model)
    return plan_training(config, hardware or profile_hardware(), shape)


def plan_training(config: QftConfig, hardware: HardwareProfile, shape: ModelShape) -> TrainingPlan:
    """Decide processes, sharding, micro-batch, accumulation, checkpointing, precision and LoRA size."""
    training, lora = config.training, config.lora
    unknown = sorted(set(lora.target_modules) - shape.linear_shapes().keys())
    if unknown:
        raise PlanError(
            f"lora.target_modules: unknown projection(s) {unknown}; known: {sorted(shape.linear_shapes())}"
        )
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
        # What other programs hold is not the trainer's to take: budget from the RAM available when profiled.
        ram = hardware.ram_gib if hardware.ram_available_gib is None else hardware.ram_available_gib
        capacity = int(ram * GIB / nproc)
        where = (
            f"{ram:.1f} GiB RAM"
            + ("" if hardware.ram_available_gib is None else f" available (of {hardware.ram_gib:.1f} GiB)")
            + f" shared by {nproc} process(es)"
        )
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
        checkpoint_layers=shape.layers if training.gradient_checkpointing else 0,
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
        fit = _shrink_lora(planner, replace(base, sharded=sharded), lora.alpha, why)

    recommended_tp = recommended_pp = 1
    if fit is None:
        fit, recommended_tp, recommended_pp = _recommend_model_parallel(
            planner,
            replace(
                base,
                sharded=sharded,
                micro_batch=training.micro_batch_size or 1,
                checkpoint_layers=0 if training.gradient_checkpointing is False else shape.layers,
            ),
            hardware,
            why,
        )
    largest_micro = fit.micro_batch
    micro, accumulation, effective = _batch_split(
        training.global_batch_size, world, largest_micro, fixed=training.micro_batch_size is not None
    )
    setting = replace(fit, micro_batch=micro)
    # A micro-batch lowered to match the global batch may need fewer checkpointed layers.
    fewer = fewest_checkpoint_layers(shape, setting, budget, training.gradient_checkpointing)
    if fewer is not None:
        setting = replace(setting, checkpoint_layers=fewer)
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
        checkpoint_layers=setting.checkpoint_layers,
        dtype=dtype,
        lora=LoraSettings(
            r=setting.lora_r,
            alpha=lora.alpha * setting.lora_r / lora.r,
            dropout=lora.dropout,
            target_modules=list(setting.lora_targets),
        ),
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
        f"DOES NOT FIT: micro-batch {setting.micro_batch} {'with' if setting.checkpoint_layers else 'without'}"
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


def _shrink_lora(planner: _Planner, base: MemorySetting, alpha: float, why: list[str]) -> MemorySetting | None:
    for rank, targets in _lora_ladder(base.lora_r, base.lora_targets)[1:]:
        fit = planner.fit(replace(base, lora_r=rank, lora_targets=targets))
        if fit is not None:
            why.append(
                f"LoRA reduced from r={base.lora_r} on {', '.join(base.lora_targets)} to r={rank} on"
                f" {', '.join(targets)}: the configured adapter does not fit even micro-batch 1. lora.alpha"
                f" {alpha:g} becomes {alpha * rank / base.lora_r:g}, so the adapter's scale alpha/r stays"
                f" {alpha / base.lora_r:g}."
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
    layers, checkpointed = planner.shape.layers, setting.checkpoint_layers
    if configured is not None:
        why.append(
            f"gradient checkpointing {f'on, all {layers} decoder layers' if configured else 'off'}: as configured"
            " (training.gradient_checkpointing; unset, the plan checkpoints only as many layers as memory needs)."
        )
        return
    micro = setting.micro_batch
    if not checkpointed:
        why.append(
            f"gradient checkpointing off: micro-batch {micro} fits with every layer keeping its activations, so no"
            " forward pass is recomputed."
        )
        return
    shape, tokens = planner.shape, setting.tokens
    kept = tokens * layer_activation_bytes_per_token(shape, setting)
    one_fewer = planner.total(replace(setting, checkpoint_layers=checkpointed - 1))
    why.append(
        f"gradient checkpointing of the first {checkpointed} of {layers} decoder layers (the fewest over every"
        f" micro-batch; training.gradient_checkpointing unset): at micro-batch {micro} × {setting.seq_len} tokens"
        f" a layer keeping its activations holds {_gib(kept)}, a checkpointed one only its input"
        f" ({_gib(tokens * dtype_bytes(setting.dtype) * shape.hidden)}); {checkpointed - 1} checkpointed layer(s)"
        f" would need {_gib(one_fewer)} > budget {_gib(planner.budget)}, {checkpointed} need"
        f" {_gib(planner.total(setting))}. Each recomputes its forward in backward: about"
        f" {checkpointed / layers:.0%} of one forward pass more per step."
    )


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
