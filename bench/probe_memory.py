"""GPU memory of qft's training path, phase by phase, against the training plan's memory model
(`qft_core/train/plan.py`): what the allocator holds before a step, what the forward pass keeps for backward, and
the forward and backward peaks, on random-weight models of Qwen3-4B-Thinking-2507's width at two depths.

    python bench/probe_memory.py --out DIR                            # on a GPU: the configs of docs/performance.md
    python bench/probe_memory.py --configs compiled,ddp --layers 2,6  # some configs only
    python bench/probe_memory.py --configs smoke --layers 8           # engine_gpu_smoke.py's 8-layer run
    uv run python bench/probe_memory.py --report DIR/probe.jsonl     # the same tables with the plan's figures
    python bench/probe_memory.py --list                               # the configs and what each changes

Each config trains the engine's path as bench_train_gpu.py's `engine` does (PEFT LoRA on q/k/v/o/gate/up/down,
`apply_fast_path`, `TokenLossSum` with 1,024-token loss chunks, the fast path's AdamW, grad clipping) for three
steps on one batch, and reads `torch.cuda.memory_allocated` before the step, after the forward pass and after the
backward pass, with the allocator's peak over the forward and over the backward-and-optimizer phase; the last step
is the one reported. Configs differ from the default (2048 x 4 full rows, compiled layers, dropout 0, r 16, bf16)
by one or two things; `eager` turns off only the decoder layers' compile, as bench_train_gpu.py's
`engine-nocompile` does, so the loss kernel stays compiled. `ddp` wraps the model in DDP over a world of one rank:
DDP buckets the gradients and dynamo splits the compiled layers exactly as on several GPUs.

Two depths of the same width give what one decoder layer keeps per token: the difference of what the forward pass
keeps, divided by the difference in layers and by the tokens of the batch, printed next to the same figure of the
config it differs from. Per run it prints the readings, the forward pass's transient over what it keeps (the loss
chunk), how far the allocator reserved above its peak, and what the process used outside the allocator (the CUDA
context, NCCL's buffers). Measuring needs torch, transformers and peft only. `--report` reads the records back,
on any machine with qft's environment (the plan needs pydantic), and adds the plan's side: the formula for what
one layer keeps (`layer_activation_terms`; with checkpointing, the layer's input), the loss chunk, and the allocated
estimate for the probed depth and setting, which counts an eager loss kernel where the layers are eager (+0.9 GiB
at 2048 x 4). Asserts nothing; appends one record per run to probe.jsonl and writes table.md under --out.
Results: docs/performance.md, "Plan vs measured memory".
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch._dynamo

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench_train_gpu import LORA_TARGETS, QWEN3_4B, Row, environment, make_batch  # noqa: E402

from qft_core.train.attention import FLEX, SDPA, packed_model_inputs  # noqa: E402
from qft_core.train.fast_path import FastPath, apply_fast_path, build_optimizer, choose_fast_path  # noqa: E402
from qft_core.train.layer_checkpointing import checkpoint_first_layers  # noqa: E402
from qft_core.train.loss import TokenLossSum  # noqa: E402
from qft_core.train.packing import (  # noqa: E402
    IGNORE_INDEX,
    PackedBatch,
    collate_packed,
    collate_padded,
    pack_sequences,
)

if TYPE_CHECKING:
    from qft_core.train.memory import MemorySetting

GIB = 1024**3
# Padding tokens at the end of the first row of a `padded` config, so that sdpa is given a padding mask.
PADDED_TAIL = 100
# What a DDP config's process group listens on, unless MASTER_ADDR / MASTER_PORT are set.
DDP_ADDRESS = ("127.0.0.1", "29533")


@dataclass(frozen=True)
class ProbeConfig:
    """One training setup to probe; `baseline` names the config it is compared with, whose per-layer bytes the
    summary subtracts."""

    seq: int = 2048
    micro: int = 4
    checkpointing: bool = False
    # With checkpointing, this many last layers keep all their activations (the plan's selective choice).
    whole_layers: int = 0
    packed: bool = False
    eager: bool = False
    sdpa: bool = False
    rank: int = 16
    dropout: float = 0.0
    ddp: bool = False
    padded: bool = False
    smoke_data: bool = False
    fp32: bool = False
    baseline: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.fp32 else torch.bfloat16


CONFIGS = {
    "compiled": ProbeConfig(),
    "eager": ProbeConfig(eager=True, baseline="compiled"),
    "compiled-dropout": ProbeConfig(dropout=0.05, baseline="compiled"),
    "eager-dropout": ProbeConfig(eager=True, dropout=0.05, baseline="eager"),
    "flex-packed": ProbeConfig(packed=True, baseline="compiled"),
    "sdpa-packed": ProbeConfig(packed=True, sdpa=True, baseline="flex-packed"),
    "eager-sdpa-packed": ProbeConfig(packed=True, sdpa=True, eager=True, baseline="eager"),
    "padded": ProbeConfig(padded=True, baseline="compiled"),
    "eager-padded": ProbeConfig(padded=True, eager=True, baseline="eager"),
    "ddp": ProbeConfig(ddp=True, baseline="compiled"),
    "eager-ddp": ProbeConfig(eager=True, ddp=True, baseline="eager"),
    "compiled-checkpointed": ProbeConfig(seq=4096, checkpointing=True),
    "eager-checkpointed": ProbeConfig(seq=4096, checkpointing=True, eager=True, baseline="compiled-checkpointed"),
    "compiled-checkpointed-dropout": ProbeConfig(
        seq=4096, checkpointing=True, dropout=0.05, baseline="compiled-checkpointed"
    ),
    "compiled-selective": ProbeConfig(seq=4096, checkpointing=True, whole_layers=1, baseline="compiled-checkpointed"),
    "packed-r8-dropout": ProbeConfig(packed=True, rank=8, dropout=0.05, baseline="flex-packed"),
    "eager-fp32": ProbeConfig(eager=True, fp32=True, seq=1024),
    "smoke": ProbeConfig(smoke_data=True, packed=True, micro=8, rank=8, dropout=0.05),
}
# The rows of docs/performance.md's per-layer table.
DEFAULT_CONFIGS = (
    "compiled,eager,compiled-dropout,eager-dropout,flex-packed,sdpa-packed,padded,ddp,compiled-checkpointed"
)


# -- the model and the data ------------------------------------------------------------------------------------


def probe_fast_path(config: ProbeConfig, device: torch.device) -> FastPath:
    """The engine's fast path for this device and dtype, less the pieces the config turns off."""
    fast = choose_fast_path(device, config.dtype, packing=config.packed)
    changes = {}
    if config.eager:
        changes["compile_layers"] = False
    if config.sdpa:
        changes["attention"] = SDPA
    return dataclasses.replace(fast, **changes)


def build_model(config: ProbeConfig, layers: int, attention: str, device: torch.device) -> torch.nn.Module:
    """The random-weight model of Qwen3-4B's width with `layers` decoder layers, built on the GPU, with fresh
    LoRA adapters (rank r, alpha 2r) on every projection."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(
            Qwen3Config(**{**QWEN3_4B, "num_hidden_layers": layers}), attn_implementation=attention, dtype=config.dtype
        )
    model.config.use_cache = False
    if config.checkpointing:
        checkpoint_first_layers(model.get_decoder().layers, layers - config.whole_layers)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=2 * config.rank,
        lora_dropout=config.dropout,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model


def smoke_batch(config: ProbeConfig, device: torch.device) -> PackedBatch:
    """engine_gpu_smoke.py's kind of micro-batch: `micro` random sequences of seq/2 to seq tokens, the first
    quarter of each masked from the loss, packed first-fit into rows no longer than seq."""
    picker = random.Random(1)
    generator = torch.Generator().manual_seed(2)
    sequences = []
    for _ in range(config.micro):
        length = picker.randint(config.seq // 2, config.seq)
        input_ids = torch.randint(0, QWEN3_4B["vocab_size"], (length,), generator=generator)
        labels = input_ids.clone()
        labels[: length // 4] = IGNORE_INDEX
        sequences.append({"input_ids": input_ids, "labels": labels})
    rows = pack_sequences(sequences, config.seq)
    return collate_packed([[sequences[index] for index in row] for row in rows]).to(device)


def padded_inputs(config: ProbeConfig, device: torch.device) -> tuple[dict, int]:
    """Full rows of random tokens except the first, which ends in PADDED_TAIL padding tokens, collated as the
    engine's unpacked path does; and the real token count."""
    generator = torch.Generator().manual_seed(2)
    lengths = [config.seq - PADDED_TAIL] + [config.seq] * (config.micro - 1)
    sequences = []
    for length in lengths:
        input_ids = torch.randint(0, QWEN3_4B["vocab_size"], (length,), generator=generator)
        sequences.append({"input_ids": input_ids, "labels": input_ids.clone()})
    return collate_padded(sequences, pad_id=0).to(device).model_inputs(), sum(lengths)


def probe_inputs(config: ProbeConfig, fast: FastPath, device: torch.device) -> tuple[dict, int]:
    """The model's keyword arguments for the config's micro-batch, and its real token count."""
    if config.smoke_data:
        batch = smoke_batch(config, device)
        return packed_model_inputs(batch, fast.attention, config.dtype), sum(map(sum, batch.seq_lengths))
    if config.padded:
        return padded_inputs(config, device)
    row = Row(config.seq, config.micro, config.checkpointing, config.packed)
    batch, tokens = make_batch(row, QWEN3_4B["vocab_size"], device)
    if config.packed:
        return packed_model_inputs(batch["packed"], fast.attention, config.dtype), tokens
    return batch, tokens


# -- measuring -------------------------------------------------------------------------------------------------


def measured_step(model: torch.nn.Module, trainable: list, optimizer, inputs: dict, device: torch.device) -> dict:
    """One training step with the allocator read around each phase, in bytes."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    loss_sum, count = model(**inputs)
    loss = loss_sum / count
    torch.cuda.synchronize(device)
    after_forward = torch.cuda.memory_allocated(device)
    forward_peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    loss.backward()
    torch.cuda.synchronize(device)
    backward_peak = torch.cuda.max_memory_allocated(device)
    after_backward = torch.cuda.memory_allocated(device)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return {
        "before": before,
        "after_forward": after_forward,
        "forward_peak": forward_peak,
        "backward_peak": backward_peak,
        "after_backward": after_backward,
        "after_step": torch.cuda.memory_allocated(device),
    }


def train_and_measure(config: ProbeConfig, layers: int, args, device: torch.device) -> dict:
    """Build the config's model at `layers` deep, train `args.steps` steps, and return the measurements. Its
    locals (model, optimizer, batch) are freed when it returns, so the next run starts from an empty GPU."""
    fast = probe_fast_path(config, device)
    peft_model = build_model(config, layers, fast.attention, device)
    apply_fast_path(peft_model, fast)
    model = TokenLossSum(peft_model, args.chunk_tokens, compute_dtype=fast.adapter_compute_dtype)
    if config.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    trainable = [parameter for parameter in peft_model.parameters() if parameter.requires_grad]
    optimizer = build_optimizer(trainable, lr=1e-4, weight_decay=0.0, fast=fast)
    inputs, tokens = probe_inputs(config, fast, device)
    result = {
        "attention": fast.attention,
        "shape": list(inputs["input_ids"].shape),
        "tokens": tokens,
        "built": torch.cuda.memory_allocated(device),
        "steps": [measured_step(model, trainable, optimizer, inputs, device) for _ in range(args.steps)],
    }
    free, total = torch.cuda.mem_get_info(device)
    result.update(
        max_reserved=torch.cuda.max_memory_reserved(device),
        reserved=torch.cuda.memory_reserved(device),
        max_allocated=torch.cuda.max_memory_allocated(device),
        used_by_process=total - free,
        total=total,
    )
    return result


def probe(name: str, layers: int, args, device: torch.device) -> dict:
    """One config at one depth: the record with status 'ok', 'OOM' or the error."""
    config = CONFIGS[name]
    record = {"config": name, "layers": layers, "chunk_tokens": args.chunk_tokens, **dataclasses.asdict(config)}
    # Each run compiles its own graphs, as a fresh engine process does: otherwise a layer graph cached by a run
    # without DDP passes its guards under DDP and runs unsplit.
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        record.update(train_and_measure(config, layers, args, device), status="ok")
    except torch.OutOfMemoryError:
        record["status"] = "OOM"
    except Exception as failure:  # noqa: BLE001 - one failing config must not stop the others
        record["status"] = f"error {type(failure).__name__}: {str(failure)[:300]}"
    record["wall_s"] = round(time.perf_counter() - started, 1)
    gc.collect()
    torch.cuda.empty_cache()
    return record


# -- the plan's side (qft's environment) -----------------------------------------------------------------------


def plan_setting(record: dict) -> MemorySetting:
    """The plan's MemorySetting of a probed run. DDP on one rank is modelled as a world of two: the buckets and
    the graph split are the same, and the plan counts them only where there is more than one rank."""
    from qft_core.train.memory import MemorySetting

    config = CONFIGS[record["config"]]
    return MemorySetting(
        device="cuda",
        dtype="float32" if config.fp32 else "bfloat16",
        world_size=2 if config.ddp else 1,
        sharded=False,
        micro_batch=config.micro,
        seq_len=config.seq,
        checkpoint_layers=record["layers"] - config.whole_layers if config.checkpointing else 0,
        lora_r=config.rank,
        lora_targets=tuple(LORA_TARGETS),
        lora_dropout=config.dropout,
        loss_chunk_tokens=record["chunk_tokens"],
        rows="packed" if config.packed else "padded" if config.padded else "full",
        compiled_kernels=not config.eager,
        flex_attention=record["attention"] == FLEX,
    )


def plan_figures(record: dict) -> dict[str, int]:
    """What the plan predicts for a probed run, in bytes: the allocated peak, the loss chunk, and what one
    decoder layer keeps per token (with checkpointing only its input, a·h)."""
    from transformers import Qwen3Config

    from qft_core.model.shape import ModelShape
    from qft_core.train.memory import (
        allocated_bytes,
        dtype_bytes,
        estimate_memory,
        layer_activation_bytes_per_token,
        loss_chunk_bytes,
    )

    shape = ModelShape.from_hf_config(Qwen3Config(**{**QWEN3_4B, "num_hidden_layers": record["layers"]}))
    setting = plan_setting(record)
    if setting.checkpoint_layers:
        layer = dtype_bytes(setting.dtype) * shape.hidden
    else:
        layer = layer_activation_bytes_per_token(shape, setting)
    return {
        "allocated": allocated_bytes(estimate_memory(shape, setting)),
        "loss_chunk": loss_chunk_bytes(shape, setting),
        "layer": layer,
    }


# -- reporting -------------------------------------------------------------------------------------------------


def kept_by_forward(record: dict) -> int:
    last = record["steps"][-1]
    return last["after_forward"] - last["before"]


def peak(record: dict) -> int:
    last = record["steps"][-1]
    return max(last["forward_peak"], last["backward_peak"], record["max_allocated"])


def gib(value: float) -> str:
    return f"{value / GIB:.3f}"


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def runs_table(records: list[dict], with_plan: bool) -> list[str]:
    """One line per run: the last step's allocator readings (GiB), and with_plan the plan's figures beside them."""
    headers = [
        "config", "layers", "batch", "before", "kept by forward", "forward peak", "backward peak", "peak",
        "forward transient", "reserved over peak", "outside allocator",
    ]
    if with_plan:
        headers += ["plan allocated", "plan loss chunk"]
    lines = [markdown_row(headers + ["status"]), markdown_row(["---"] * 3 + ["---:"] * (len(headers) - 3) + ["---"])]
    for record in records:
        if record["status"] != "ok":
            blanks = [""] * (len(headers) - 2)
            lines.append(markdown_row([record["config"], str(record["layers"]), *blanks, record["status"]]))
            continue
        last = record["steps"][-1]
        cells = [
            record["config"], str(record["layers"]), "x".join(map(str, record["shape"])),
            gib(last["before"]), gib(kept_by_forward(record)), gib(last["forward_peak"]), gib(last["backward_peak"]),
            gib(peak(record)), gib(last["forward_peak"] - last["after_forward"]),
            f"{record['max_reserved'] / peak(record) - 1:+.1%}",
            gib(record["used_by_process"] - record["reserved"]),
        ]
        if with_plan:
            plan = plan_figures(record)
            cells += [gib(plan["allocated"]), gib(plan["loss_chunk"])]
        lines.append(markdown_row(cells + ["ok"]))
    return lines


def per_layer(records: list[dict], with_plan: bool) -> dict[str, dict]:
    """Per config probed at two depths or more: the bytes one layer keeps per token, measured between the
    shallowest and the deepest run, and with_plan the formula's."""
    by_config: dict[str, list[dict]] = {}
    for record in records:
        if record["status"] == "ok":
            by_config.setdefault(record["config"], []).append(record)
    found = {}
    for name, runs in by_config.items():
        shallow = min(runs, key=lambda run: run["layers"])
        deep = max(runs, key=lambda run: run["layers"])
        if deep["layers"] == shallow["layers"]:
            continue
        tokens = deep["shape"][0] * deep["shape"][1]
        measured = (kept_by_forward(deep) - kept_by_forward(shallow)) / (deep["layers"] - shallow["layers"]) / tokens
        found[name] = {"depths": (shallow["layers"], deep["layers"]), "measured": measured}
        if with_plan:
            found[name]["formula"] = plan_figures(deep)["layer"]
    return found


def per_layer_table(found: dict[str, dict], with_plan: bool) -> list[str]:
    """The bytes one layer keeps per token, and each config's difference from its baseline where both ran."""
    measures = ["measured", "formula"] if with_plan else ["measured"]
    headers = [
        "config", "depths", *(f"bytes per layer per token, {what}" for what in measures),
        "baseline", *(f"difference, {what}" for what in measures),
    ]
    numbers = ["---:"] * len(measures)
    lines = [markdown_row(headers), markdown_row(["---", "---", *numbers, "---", *numbers])]
    for name, layer in found.items():
        baseline = CONFIGS[name].baseline
        cells = [name, "/".join(map(str, layer["depths"])), *(f"{layer[what]:,.0f}" for what in measures)]
        if baseline in found:
            cells += [baseline, *(f"{layer[what] - found[baseline][what]:+,.0f}" for what in measures)]
        else:
            cells += [""] * (1 + len(measures))
        lines.append(markdown_row(cells))
    return lines


def report(records: list[dict], env: dict, with_plan: bool) -> str:
    """Both tables as markdown, under a line naming the card and the software."""
    return "\n".join(
        [
            f"{env['card']} ({env['card_gib']} GiB), {env['date']}, torch {env['torch']}, "
            f"transformers {env['transformers']}, peft {env['peft']}; GiB unless named otherwise",
            "",
            *runs_table(records, with_plan),
            "",
            *per_layer_table(per_layer(records, with_plan), with_plan),
        ]
    )


# -- running ---------------------------------------------------------------------------------------------------


def configs_text() -> str:
    default = ProbeConfig()
    lines = []
    for name, config in CONFIGS.items():
        changes = {
            field.name: getattr(config, field.name)
            for field in dataclasses.fields(config)
            if field.name != "baseline" and getattr(config, field.name) != getattr(default, field.name)
        }
        against = f" (against {config.baseline})" if config.baseline else ""
        lines.append(f"{name}: {changes or 'the default'}{against}")
    return "\n".join(lines)


def measure(args) -> list[dict]:
    """Every config at every depth, one after the other on GPU 0; each record, with the environment, is appended
    to probe.jsonl as it comes."""
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    if any(CONFIGS[name].ddp for name in args.config_names):
        os.environ.setdefault("MASTER_ADDR", DDP_ADDRESS[0])
        os.environ.setdefault("MASTER_PORT", DDP_ADDRESS[1])
        torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(json.dumps({"environment": env}), flush=True)
    records = []
    started = time.perf_counter()
    with (out / "probe.jsonl").open("a", encoding="utf-8") as handle:
        for name in args.config_names:
            for layers in args.depths:
                if args.deadline_s is not None and time.perf_counter() - started > args.deadline_s:
                    record = {"config": name, "layers": layers, "status": "skipped (deadline)"}
                else:
                    record = probe(name, layers, args, device)
                record["environment"] = env
                records.append(record)
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                summary = {key: record[key] for key in ("config", "layers", "status", "wall_s") if key in record}
                if record["status"] == "ok":
                    summary |= {"kept_by_forward_gib": kept_by_forward(record) / GIB, "peak_gib": peak(record) / GIB}
                print(json.dumps(summary), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated config names (default {DEFAULT_CONFIGS})"
    )
    parser.add_argument("--layers", default="2,6", help="comma-separated depths to build each config at")
    parser.add_argument("--steps", type=int, default=3, help="training steps per run; the last one is reported")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="the loss chunk (the engine's default)")
    parser.add_argument("--deadline-s", type=float, help="skip runs that would start after this many seconds")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"), help="folder for probe.jsonl and table.md")
    parser.add_argument("--report", type=Path, help="print the tables of this probe.jsonl with the plan's figures")
    parser.add_argument("--list", action="store_true", help="print the configs and exit")
    args = parser.parse_args(argv)
    args.config_names = args.configs.split(",")
    unknown = sorted(set(args.config_names) - CONFIGS.keys())
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    args.depths = [int(depth) for depth in args.layers.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list:
        print(configs_text())
        return
    if args.report:
        records = [json.loads(line) for line in args.report.read_text(encoding="utf-8").splitlines() if line]
        print(report(records, records[0]["environment"], with_plan=True), flush=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit("probe_memory.py needs a CUDA GPU to measure (--report and --list do not)")
    records = measure(args)
    text = report(records, records[0]["environment"], with_plan=False)
    (Path(args.out) / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)


if __name__ == "__main__":
    main()
