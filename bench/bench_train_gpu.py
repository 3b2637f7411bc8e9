"""Training throughput on GPUs: a plain transformers + PEFT LoRA loop against qft's engine path, on a model of
Qwen3-4B-Thinking-2507's exact shape with random bf16 weights built on the GPU.

    python bench/bench_train_gpu.py                          # the table in docs/performance.md, on one GPU
    python bench/bench_train_gpu.py --smoke                  # a tiny model, every path, in seconds
    python bench/bench_train_gpu.py --scaling 1,2,4          # DDP on 1, 2, 4 GPUs (torchrun per count)
    python bench/bench_train_gpu.py --rows 2048x4 --paths baseline,engine,engine-nocompile --profile
    python bench/bench_train_gpu.py --rows 2048x4 --paths levers   # baseline, engine and every round-two lever
    python bench/bench_train_gpu.py --rows 2048x8c,4096x4c,16384x1c --memory-budget-gib 26.4   # selective

Rows are SEQxMICRO with suffixes: `c` gradient checkpointing, `p` packed documents (random lengths 64-1024,
first-fit into rows of SEQ tokens) instead of one full sequence a row. Paths:
  baseline   the issue's plain loop: Qwen3ForCausalLM (sdpa) + PEFT LoRA, `model(input_ids, labels=...).loss`,
             torch.optim.AdamW over the LoRA parameters; packed rows get the dense 4D document mask.
  engine     what qft_core.train.engine runs: TokenLossSum (chunked linear + cross-entropy) over the PEFT
             model with the fast path (`choose_fast_path`), grad clipping, the fast path's AdamW.
  engine-X   the engine with one piece of the fast path off, to measure it: X in nocompile (eager layers),
             fp32lora (PEFT's float32 adapter compute), foreach (unfused AdamW), sdpa (no flex attention);
             or one round-two lever on: fusedlora (base + adapter in one addmm, fused_lora.py), autotune
             (layers compiled with mode max-autotune-no-cudagraphs), cudagraphs (mode reduce-overhead), ddp1 (DDP
             on a one-rank process group, dynamo's graph split at buckets as the fast path sets it), nosplit (with
             ddp1: optimize_ddp off), fsdp1 (FSDP2's fully_shard around the compiled layers, one rank);
             several join with '-' (engine-nocompile-fp32lora, engine-ddp1-nosplit).
On `c` rows the baseline checkpoints every layer (transformers' switch); the engine checkpoints every layer too,
from outside each compiled layer (`layer_checkpointing.checkpoint_first_layers`), or with --memory-budget-gib only
the first k layers, the fewest the planner's memory model (`plan.fewest_checkpoint_layers`) fits into that many
GiB in all (CUDA context and allocator slack included, as the plan counts them); each row records k and the
predicted allocator peak. That import needs qft's pydantic (the wheels of bench/device_wheels.sh).
Both paths train the same LoRA (r 16, alpha 32, q/k/v/o/gate/up/down) from the same seed, with LoRA B drawn
small and non-zero so the adapters take part in the step-1 loss that the `d loss` column compares.

Throughput is the median step time (forward, backward, optimizer step; synchronised each step) after warm-up
steps (which hold torch.compile's compilation); MFU counts 4 FLOPs per matmul parameter per token (forward and
activation gradients; frozen weights need no weight gradients) against the bf16 matmul rate measured on the
card in the same run (or --peak-tflops). Asserts nothing; prints a table and writes results.jsonl and table.md
under --out. Measured results, and what each piece of the fast path is worth: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
import torch._dynamo

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qft_core.model.registry import QWEN3_4B_ARCHITECTURE
from qft_core.train.attention import SDPA, packed_model_inputs
from qft_core.train.fast_path import (
    FastPath,
    apply_fast_path,
    begin_step,
    build_optimizer,
    choose_fast_path,
)
from qft_core.train.layer_checkpointing import checkpoint_first_layers
from qft_core.train.loss import TokenLossSum, causal_lm
from qft_core.train.packing import collate_packed, pack_sequences
from qft_core.train.parallel import full_tensor, replicate_with_ddp, shard_with_fsdp2

GIB = 1024**3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QWEN3_4B = QWEN3_4B_ARCHITECTURE
TINY = {
    "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 4096,
    "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
DEFAULT_ROWS = "2048x4,2048x8c,4096x4c,16384x1c,2048x4p"
# A card too small for the 2048x4 baseline (86.6 GiB) also gets this row, the baseline's largest
# unchecked micro-batch that fits.
SMALL_CARD_ROW = "2048x2"
SMALL_CARD_GIB = 100
DOC_LENGTHS = (64, 1024)
PIECES = {"nocompile", "fp32lora", "foreach", "sdpa", "fusedlora", "autotune", "cudagraphs", "ddp1", "nosplit", "fsdp1"}
COMPILE_MODES = {"autotune": "max-autotune-no-cudagraphs", "cudagraphs": "reduce-overhead"}
# `--paths levers`: slowest compile (autotune) last, so a deadline cuts it first.
LEVER_PATHS = (
    "baseline,engine,engine-fusedlora,engine-ddp1,engine-ddp1-nosplit,engine-fsdp1,engine-cudagraphs,engine-autotune"
)


@dataclass(frozen=True)
class Row:
    seq: int
    micro: int
    checkpointing: bool
    packed: bool

    @classmethod
    def parse(cls, text: str) -> Row:
        body = text.rstrip("cp")
        flags = text[len(body):]
        seq, micro = (int(part) for part in body.split("x"))
        return cls(seq, micro, "c" in flags, "p" in flags)

    @property
    def name(self) -> str:
        return f"{self.seq}x{self.micro}" + ("c" if self.checkpointing else "") + ("p" if self.packed else "")


# -- the model and the data ------------------------------------------------------------------------------------


def matmul_params(shape: dict) -> int:
    """Parameters that take part in a matrix product per token: every decoder projection and the lm_head."""
    hidden, heads, kv, head_dim = shape["hidden_size"], shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    mlp = 3 * hidden * shape["intermediate_size"]
    return shape["num_hidden_layers"] * (attention + mlp) + shape["vocab_size"] * hidden


def build_peft_model(shape: dict, attention: str, checkpointing: bool, lora_dropout: float, device: torch.device):
    """The random-weight bf16 model, allocated and initialised on the GPU, with fresh LoRA adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(Qwen3Config(**shape), attn_implementation=attention, dtype=torch.bfloat16)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=lora_dropout, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.01, generator=generator)
    peft_model.train()
    return peft_model


def make_batch(row: Row, vocab: int, device: torch.device) -> tuple[dict, int]:
    """Model inputs for one micro-batch (same on every call) and its real token count. Packed rows carry
    `packed`, the PackedBatch, for the paths to turn into their own inputs."""
    generator = torch.Generator().manual_seed(2)
    if not row.packed:
        input_ids = torch.randint(0, vocab, (row.micro, row.seq), generator=generator)
        return {"input_ids": input_ids.to(device), "labels": input_ids.clone().to(device)}, row.micro * row.seq
    picker = random.Random(3)
    documents, total = [], 0
    while True:
        length = picker.randint(min(DOC_LENGTHS[0], row.seq // 4), min(DOC_LENGTHS[1], row.seq))
        if total + length > row.micro * row.seq:
            break
        ids = torch.randint(0, vocab, (length,), generator=generator)
        documents.append({"input_ids": ids, "labels": ids.clone()})
        total += length
    rows = pack_sequences(documents, row.seq)[: row.micro]
    kept = [[documents[index] for index in indices] for indices in rows]
    batch = collate_packed(kept, row_length=row.seq).to(device)
    return {"packed": batch}, sum(len(d["input_ids"]) for r in kept for d in r)


# -- the two paths ---------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """One path's model, optimizer and step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainable: list
    engine: bool
    fast: FastPath | None
    # The engine's checkpointed decoder layers (the first ones) and the memory model's allocator peak for them.
    checkpoint_layers: int = 0
    predicted_peak_gib: float | None = None

    def inputs(self, batch: dict) -> dict:
        if "packed" not in batch:
            return batch
        if self.engine:
            return packed_model_inputs(batch["packed"], self.fast.attention, torch.bfloat16)
        return batch["packed"].model_inputs("sdpa", torch.bfloat16)

    def step(self, inputs: dict, measure_grad: bool = False) -> tuple[float, float | None]:
        if self.fast is not None:
            begin_step(self.fast)
        if self.engine:
            loss_sum, count = self.model(**inputs)
            loss = loss_sum / count
        else:
            loss = self.model(**inputs).loss
        loss.backward()
        if self.engine:
            norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.trainable, 1.0))
        elif measure_grad:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in self.trainable]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss), float(norm) if (measure_grad or self.engine) else None


def engine_fast_path(path: str, row: Row, device: torch.device) -> FastPath:
    fast = choose_fast_path(device, torch.bfloat16, packing=row.packed)
    pieces = set(path.split("-")[1:])
    unknown = pieces - PIECES
    if unknown:
        raise SystemExit(f"unknown engine piece(s) {sorted(unknown)} in path {path!r}; known: {sorted(PIECES)}")
    changes = {}
    if "nocompile" in pieces:
        changes["compile_layers"] = False
    if "fp32lora" in pieces:
        changes["adapter_compute_dtype"] = None
    if "foreach" in pieces:
        changes["fused_optimizer"] = False
    if "sdpa" in pieces:
        changes["attention"] = SDPA
    if "fusedlora" in pieces:
        changes["fused_lora"] = True
    modes = [COMPILE_MODES[piece] for piece in pieces & COMPILE_MODES.keys()]
    if len(modes) > 1 or (modes and "nocompile" in pieces):
        raise SystemExit(f"path {path!r}: one compile mode at most, and only with compiled layers")
    if modes:
        changes["compile_mode"] = modes[0]
    if "nosplit" in pieces:
        if "ddp1" not in pieces:
            raise SystemExit(f"path {path!r}: nosplit is about DDP's graph split, so it needs ddp1")
        changes["ddp_graph_split"] = False
    return dataclasses.replace(fast, **changes)


def planned_checkpoint_layers(row: Row, args, fast: FastPath, device: torch.device, world: int) -> tuple[int, float]:
    """(the fewest first layers to checkpoint for the row to fit --memory-budget-gib, the predicted allocator
    peak in GiB), from the plan's memory model of this engine path."""
    from transformers import Qwen3Config

    from qft_core.model.shape import ModelShape
    from qft_core.train.attention import FLEX
    from qft_core.train.memory import MemorySetting, allocated_bytes, estimate_memory
    from qft_core.train.plan import fewest_checkpoint_layers

    shape = ModelShape.from_hf_config(Qwen3Config(**args.shape))
    setting = MemorySetting(
        device=device.type, dtype="bfloat16", world_size=world, sharded=False, micro_batch=row.micro,
        seq_len=row.seq, checkpoint_layers=0, lora_r=16, lora_targets=tuple(LORA_TARGETS),
        lora_dropout=args.lora_dropout, loss_chunk_tokens=args.chunk_tokens, rows="packed" if row.packed else "full",
        compiled_kernels=fast.compile_layers, flex_attention=fast.attention == FLEX,
    )
    layers = fewest_checkpoint_layers(shape, setting, int(args.memory_budget_gib * GIB))
    if layers is None:
        raise ValueError(
            f"--memory-budget-gib {args.memory_budget_gib}: row {row.name} does not fit even with every layer"
            " checkpointed"
        )
    predicted = allocated_bytes(estimate_memory(shape, dataclasses.replace(setting, checkpoint_layers=layers)))
    return layers, predicted / GIB


def one_rank_group(device: torch.device) -> None:
    """A process group of this process alone, so DDP and FSDP2 can wrap the model on one GPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)


def build_trainer(path: str, row: Row, args, device: torch.device, world: int) -> Trainer:
    engine = path.startswith("engine")
    fast = engine_fast_path(path, row, device) if engine else None
    attention = fast.attention if engine else "sdpa"
    peft_model = build_peft_model(args.shape, attention, row.checkpointing and not engine, args.lora_dropout, device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    if not engine:
        return Trainer(peft_model, torch.optim.AdamW(trainable, lr=1e-4), trainable, False, None)
    layers, predicted = args.shape["num_hidden_layers"] if row.checkpointing else 0, None
    if row.checkpointing and args.memory_budget_gib:
        layers, predicted = planned_checkpoint_layers(row, args, fast, device, world)
    checkpoint_first_layers(peft_model.get_decoder().layers, layers)
    apply_fast_path(peft_model, fast)
    model = TokenLossSum(peft_model, args.chunk_tokens, compute_dtype=fast.adapter_compute_dtype)
    pieces = set(path.split("-")[1:])
    if pieces & {"ddp1", "fsdp1"}:
        one_rank_group(device)
    if world > 1 or "ddp1" in pieces:
        model = replicate_with_ddp(model, device)
    elif "fsdp1" in pieces:
        model = shard_with_fsdp2(model, causal_lm(peft_model).get_decoder().layers, device, 1, torch.bfloat16)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]  # now FSDP2's sharded parameters
    optimizer = build_optimizer(trainable, lr=1e-4, weight_decay=0.0, fast=fast)
    return Trainer(model, optimizer, trainable, True, fast, layers, predicted)


# -- measuring -------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def measure_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    # Enough warm-up for the clocks to ramp up: with 3, one run read 751 and the next 786 TFLOP/s.
    for _ in range(30):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / sorted(times)[len(times) // 2] / 1e12


def run_path(path: str, row: Row, args, device: torch.device, world: int) -> dict:
    """Build, warm up, time; the result row (status 'ok', 'OOM' or an error)."""
    result = {"path": path, "row": row.name, "seq": row.seq, "micro": row.micro, "checkpointing": row.checkpointing,
              "packed": row.packed, "world": world}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    error = None
    # Each path compiles its own layers: a graph cached by the path before (without DDP's split, another mode)
    # would otherwise serve it.
    torch._dynamo.reset()
    try:
        trainer = build_trainer(path, row, args, device, world)
        batch, tokens = make_batch(row, args.shape["vocab_size"], device)
        inputs = trainer.inputs(batch)
        result["build_s"] = round(time.perf_counter() - started, 1)
        if trainer.engine and row.checkpointing:
            result.update(checkpoint_layers=trainer.checkpoint_layers, predicted_peak_gib=trainer.predicted_peak_gib)
        first_loss, first_grad = trainer.step(inputs, measure_grad=True)
        synchronize(device)
        result.update(step1_loss=first_loss, step1_grad_norm=first_grad, first_step_s=round(time.perf_counter() - started, 1))
        for _ in range(args.warmup - 1):
            trainer.step(inputs)
        synchronize(device)
        step_times = []
        for _ in range(args.steps):
            begin = time.perf_counter()
            trainer.step(inputs)
            synchronize(device)
            step_times.append(time.perf_counter() - begin)
        median = sorted(step_times)[len(step_times) // 2]
        result.update(
            status="ok", tokens_per_step=tokens * world, step_s=median, step_s_min=min(step_times),
            step_s_max=max(step_times), tokens_per_s=tokens * world / median,
            peak_gib=peak_gib(device),
        )
        if trainer.fast is not None:
            result["fast_path"] = {**dataclasses.asdict(trainer.fast), "adapter_compute_dtype": str(trainer.fast.adapter_compute_dtype)}
        if args.profile and world == 1 and device.type == "cuda":
            result["profile"] = profile_step(trainer, inputs)
    except torch.OutOfMemoryError as oom:
        error = ("OOM", str(oom).splitlines()[0][:200])
    except Exception as failure:  # noqa: BLE001 - one failing path must not stop the table
        error = ("error", f"{type(failure).__name__}: {str(failure)[:400]}")
    if error:
        result.update(status=error[0], message=error[1], peak_gib=peak_gib(device))
    trainer = batch = inputs = None  # drop the model before the next path builds its own
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def profile_step(trainer: Trainer, inputs: dict, top: int = 18) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.step(inputs)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)


# -- reporting -------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import peft
    import transformers

    on_gpu = device.type == "cuda"
    return {
        "date": date.today().isoformat(), "card": torch.cuda.get_device_name(device) if on_gpu else platform.processor(),
        "card_gib": round(torch.cuda.get_device_properties(device).total_memory / GIB, 1) if on_gpu else 0.0,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
    }


def annotate(results: list[dict], flops_per_token: float, peak_tflops: float) -> None:
    """MFU, and each engine row's speed ratio and step-1 loss difference against the baseline of its row."""
    baselines = {r["row"]: r for r in results if r["path"] == "baseline" and r.get("status") == "ok"}
    engines = {r["row"]: r for r in results if r["path"] == "engine" and r.get("status") == "ok"}
    for r in results:
        if r.get("status") != "ok":
            continue
        r["mfu"] = r["tokens_per_s"] / r["world"] * flops_per_token / (peak_tflops * 1e12)
        engine = engines.get(r["row"])
        if engine and r["path"].startswith("engine-"):
            r["vs_engine"] = r["tokens_per_s"] / engine["tokens_per_s"]
            r["peak_vs_engine_gib"] = r["peak_gib"] - engine["peak_gib"]
            r["loss_vs_engine"] = abs(r["step1_loss"] - engine["step1_loss"]) / abs(engine["step1_loss"])
        base = baselines.get(r["row"])
        if base and r["path"] != "baseline":
            r["vs_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["loss_rel_diff"] = abs(r["step1_loss"] - base["step1_loss"]) / abs(base["step1_loss"])
            r["grad_rel_diff"] = abs(r["step1_grad_norm"] - base["step1_grad_norm"]) / abs(base["step1_grad_norm"])


def table(results: list[dict], env: dict, peak_tflops: float) -> str:
    lines = [
        (
            f"{env['card']} ({env['card_gib']} GiB), {env['date']}, torch {env['torch']}, "
            f"transformers {env['transformers']}, peft {env['peft']}; "
            f"MFU against a bf16 matmul rate of {peak_tflops:.0f} TFLOP/s"
        ),
        "",
        "| row | path | tokens/s | peak GiB | MFU | x baseline | x engine | step-1 loss | d loss | d grad norm | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ok = r.get("status") == "ok"
        kept = ""
        if "checkpoint_layers" in r:
            predicted = f", plan {r['predicted_peak_gib']:.1f} GiB" if r.get("predicted_peak_gib") else ""
            kept = f" ({r['checkpoint_layers']} layers checkpointed{predicted})"
        cells = [
            r["row"], r["path"] + kept,
            f"{r['tokens_per_s']:,.0f}" if ok else "-",
            f"{r['peak_gib']:.1f}" if ok else "-",
            f"{r['mfu']:.1%}" if ok else "-",
            f"{r['vs_baseline']:.2f}" if "vs_baseline" in r else "",
            f"{r['vs_engine']:.3f} ({r['peak_vs_engine_gib']:+.1f} GiB)" if "vs_engine" in r else "",
            f"{r['step1_loss']:.4f}" if "step1_loss" in r else "",
            f"{r['loss_rel_diff']:.1e}" if "loss_rel_diff" in r else "",
            f"{r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else "",
            r.get("status", "?") + (f": {r['message'][:80]}" if not ok and "message" in r else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- modes -----------------------------------------------------------------------------------------------------


def single_process(args) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.cpu:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    peak = args.peak_tflops or measure_peak_tflops(device)
    rows = [Row.parse(text) for text in args.rows.split(",")]
    small_card_row_added = not args.smoke and env["card_gib"] < SMALL_CARD_GIB and SMALL_CARD_ROW not in args.rows.split(",")
    if small_card_row_added:
        rows.insert(1, Row.parse(SMALL_CARD_ROW))
    paths = (LEVER_PATHS if args.paths == "levers" else args.paths).split(",")
    if rank == 0:
        print(json.dumps({"environment": env, "peak_tflops": peak}), flush=True)
    results: list[dict] = []
    started = time.perf_counter()
    for row in rows:
        for path in paths:
            if world > 1 and not path.startswith("engine"):
                continue
            if row.packed is False and path.endswith("-sdpa"):
                continue
            # The added row gives the baseline a size that fits; the levers compare with the engine's own rows.
            if small_card_row_added and row.name == SMALL_CARD_ROW and path not in ("baseline", "engine"):
                continue
            if time.perf_counter() - started > args.deadline_s:
                results.append({"path": path, "row": row.name, "world": world, "status": "skipped (deadline)"})
                continue
            result = run_path(path, row, args, device, world)
            results.append(result)
            if rank == 0:
                printable = {k: v for k, v in result.items() if k not in ("profile", "fast_path")}
                print(json.dumps(printable), flush=True)
                if "profile" in result:
                    print(f"--- profile {path} {row.name}\n{result['profile']}", flush=True)
    if rank == 0:
        annotate(results, 4 * matmul_params(args.shape), peak)
        with (out / "results.jsonl").open("a", encoding="utf-8") as handle:
            for result in results:
                handle.write(json.dumps({**result, "environment": env, "peak_tflops": peak}) + "\n")
        text = table(results, env, peak)
        (out / "table.md").write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def scaling(args) -> None:
    """The engine on 1, 2, 4... GPUs of this machine, one torchrun per count; efficiency against one GPU."""
    counts = [int(n) for n in args.scaling.split(",")]
    out = Path(args.out)
    summary = []
    for count in counts:
        folder = out / f"gpus{count}"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={count}",
            str(Path(__file__).resolve()), "--rows", args.rows, "--paths", "engine", "--out", str(folder),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--deadline-s", str(args.deadline_s),
            "--chunk-tokens", str(args.chunk_tokens), "--lora-dropout", str(args.lora_dropout),
            *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []),
            *(["--smoke"] if args.smoke else []), *(["--cpu"] if args.cpu else []),
            *(["--memory-budget-gib", str(args.memory_budget_gib)] if args.memory_budget_gib else []),
        ]
        environment_vars = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(count))}
        subprocess.run(command, check=False, env=environment_vars)
        results = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()] if (folder / "results.jsonl").is_file() else []
        summary += [r for r in results if r.get("status") == "ok"]
    one = {r["row"]: r["tokens_per_s"] for r in summary if r["world"] == 1}
    lines = ["| row | GPUs | tokens/s | per GPU | scaling efficiency | peak GiB/GPU |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary:
        efficiency = r["tokens_per_s"] / (r["world"] * one[r["row"]]) if r["row"] in one else float("nan")
        lines.append(
            f"| {r['row']} | {r['world']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / r['world']:,.0f} | "
            f"{efficiency:.1%} | {r['peak_gib']:.1f} |"
        )
    text = "\n".join(lines)
    (out / "scaling.md").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated SEQxMICRO[c][p] (default {DEFAULT_ROWS})")
    parser.add_argument(
        "--paths", default="baseline,engine,engine-sdpa", help="comma-separated paths (engine-sdpa runs on packed rows only)"
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="the engine's loss chunk")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="PEFT's default 0; qft's config default is 0.05")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model of 4,096 tokens' vocabulary, rows 256x2")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (only sensible with --smoke)")
    parser.add_argument("--profile", action="store_true", help="print each path's top CUDA kernels for one step")
    parser.add_argument("--peak-tflops", type=float, help="bf16 matmul rate for MFU (default: measured on the card)")
    parser.add_argument("--scaling", help="comma-separated GPU counts: run the engine under torchrun on each")
    parser.add_argument(
        "--memory-budget-gib", type=float,
        help="c rows: the engine checkpoints the fewest first layers the plan fits into this many GiB (default: all)",
    )
    parser.add_argument("--deadline-s", type=float, default=480, help="skip paths that would start after this")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"), help="folder for results.jsonl and table.md")
    args = parser.parse_args(argv)
    args.shape = TINY if args.smoke else QWEN3_4B
    if args.smoke and args.rows == DEFAULT_ROWS:
        args.rows = "256x2,256x2c,256x2p"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu:
        raise SystemExit("bench_train_gpu.py needs a CUDA GPU")
    if args.scaling:
        scaling(args)
    else:
        single_process(args)


if __name__ == "__main__":
    main()
