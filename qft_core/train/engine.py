"""qft's LoRA training engine, one process per rank under torchrun: set up, resume, then the step loop
(accumulate, guard, step, log, evaluate, checkpoint), then the adapter and the summary.

    python -m torch.distributed.run --standalone --nproc-per-node=N -m qft_core.train.engine --job RUN/job.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from qft_core.model.cache import fingerprint
from qft_core.model.peft_files import ADAPTER_WEIGHTS
from qft_core.model.registry import torch_dtype
from qft_core.publish import publishing_folder
from qft_core.train import checkpoint as ckpt
from qft_core.train.adapter import adapter_state, build_lora_model, load_adapter_weights, save_adapter
from qft_core.train.batches import (
    LAYOUT_FILE,
    BatchError,
    MicroBatch,
    StepFeed,
    collate,
    count_tokens,
    initial_layout,
    micro_batches,
    save_layout,
)
from qft_core.train.dataset import TokenizedDataset, load_tokenized
from qft_core.train.fast_path import apply_fast_path, build_optimizer, choose_fast_path
from qft_core.train.faults import Faults
from qft_core.train.job import SUMMARY_FILE, JobError, TrainingJob, TrainingSummary
from qft_core.train.lifeline import AGENT_PID, die_with_parent
from qft_core.train.loss import TokenLossSum, causal_lm
from qft_core.train.metrics_log import METRICS_FILE, ConsoleReporter, MetricsLog, Reporter
from qft_core.train.parallel import (
    ParallelSetupError,
    Runtime,
    full_tensor,
    gradient_sync,
    start_runtime,
    stop_runtime,
    unwrapped,
    wrap_for_parallelism,
)
from qft_core.train.schedule import build_scheduler
from qft_core.train.token_pieces import TokenPieces
from qft_core.train.validation_metrics import VAL_LOSS, ValidationTally, tally_batch

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
# Written when training stops on purpose (anomalies), so torchrun's restart of the same run does not retry.
HALT_FILE = "halted.json"
# Grad-norm spikes are judged against the median of this many recent accepted steps, once there are MIN of them.
GRAD_NORM_WINDOW = 50
GRAD_NORM_MIN_HISTORY = 5
GIB = 1024**3
# Steps at the start of every process (a first run, each restart or resume) left out of the steady-state
# throughput: the first two steps compile kernels (torch.compile, flex attention; the second recompiles for the
# packed rows' varying shapes), autotune and fill the allocator's cache. Measured on an H200 (8 Qwen3-4B layers,
# bench/engine_gpu_smoke.py): steps 1 and 2 took 42 s and 30 s with a cold compile cache, 4.5 s and 5.5 s with a
# warm one, every later step 0.2 s.
WARMUP_STEPS = 2


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class AnomalyStop(TrainingError):
    """Too many consecutive steps with a non-finite loss or a gradient-norm spike."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the trainer -----------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """What a checkpoint must carry besides weights, optimizer and RNG for a resumed run to continue exactly."""

    step: int = 0
    # Each rank's position in its shard, and the world size it refers to (a resume may use another).
    data_position: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "index": 0})
    data_world_size: int = 1
    tokens: int = 0
    target_tokens: int = 0
    train_seconds: float = 0.0
    # Tokens and step time of the steps after each process's first WARMUP_STEPS: the steady-state throughput.
    steady_tokens: int = 0
    steady_seconds: float = 0.0
    wall_seconds: float = 0.0
    last_loss: float | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    grad_norm_history: list[float] = field(default_factory=list)
    consecutive_anomalies: int = 0
    skipped_steps: int = 0
    restarts: int = 0
    config_hash: str = ""


@dataclass
class StepResult:
    loss: float
    tokens: int
    target_tokens: int


def anomaly_reason(loss: float, grad_norm: float, history: list[float], spike_factor: float) -> str | None:
    """Why a step must not update the weights (non-finite loss or norm, or a norm spike over the median of
    recent accepted steps), or None for a healthy step."""
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    if not math.isfinite(grad_norm):
        return f"non-finite gradient norm {grad_norm}"
    if len(history) >= GRAD_NORM_MIN_HISTORY:
        median = statistics.median(history)
        if grad_norm > spike_factor * median:
            return f"gradient norm {grad_norm:.4g} > {spike_factor:g} x running median {median:.4g}"
    return None


def rescale_position(position: dict[str, int], saved_world: int, world: int) -> dict[str, int]:
    """A shard position saved by `saved_world` ranks, for `world` ranks: the same number of sequences of the
    epoch consumed globally (whole steps divide evenly, since every world splits the same global batch)."""
    consumed = position["index"] * saved_world
    if consumed % world:
        raise TrainingError(
            f"cannot resume a data position of {consumed} sequences into the epoch on {world} ranks; "
            f"resume with {saved_world} ranks"
        )
    return {"epoch": position["epoch"], "index": consumed // world}


def config_hash(job: TrainingJob) -> str:
    """What must not change for a checkpoint to be resumed: model, data, LoRA and the optimisation recipe."""
    recipe = job.training.model_dump(
        exclude={"checkpoint_every", "keep_last", "eval_every", "max_restarts", "nproc", "nnodes", "master_addr",
                 "master_port", "micro_batch_size", "gradient_checkpointing", "sharding", "loss_chunk_tokens"}
    )
    return fingerprint(
        recipe, job.plan.lora.model_dump(), job.plan.global_batch_size,
        Path(job.model_dir).name, _file_identity(job.train_data),
    )


def _file_identity(path: str) -> list[Any]:
    stat = Path(path).stat()
    return [Path(path).name, stat.st_size]


class Trainer:
    """One rank's training run. Built from a job; `run()` returns the summary (on every rank)."""

    def __init__(self, job: TrainingJob, runtime: Runtime, reporter: Reporter) -> None:
        self.job = job
        self.runtime = runtime
        self.reporter = reporter
        self.output_dir = Path(job.output_dir)
        self.checkpoints_dir = self.output_dir / CHECKPOINTS_DIR
        self.metrics = MetricsLog(self.output_dir / METRICS_FILE)
        self.compute_dtype = torch_dtype(job.plan.dtype, runtime.device)
        sharded = runtime.distributed and job.plan.strategy == "fsdp"
        self.fast_path = choose_fast_path(runtime.device, self.compute_dtype, packing=job.training.packing, sharded=sharded)
        self.layout = initial_layout(job.plan, runtime.world_size, self.output_dir)
        self.state = TrainerState(config_hash=config_hash(job))

        seed_everything(job.training.seed)
        self.train_data = TokenizedDataset(load_tokenized(job.train_data))
        self.validation_data = TokenizedDataset(load_tokenized(job.validation_data)) if job.validation_data else None
        # The characters behind token ids, for the validation character accuracy (none without a tokenizer).
        self.token_pieces = TokenPieces.load(job.tokenizer_dir) if job.tokenizer_dir and self.validation_data else None
        self.feed = StepFeed(self.train_data, job.training.seed, runtime.rank, runtime.world_size, self.layout.per_rank)
        self.total_steps = job.training.max_steps or max(1, math.ceil(job.training.epochs * self.feed.steps_per_epoch))

        self.peft_model = build_lora_model(job, self.compute_dtype, runtime.device, attention=self.fast_path.attention)
        resume_from = self._find_checkpoint()
        if resume_from is not None:
            load_adapter_weights(self.peft_model, resume_from)
        apply_fast_path(self.peft_model, self.fast_path)
        self.objective = TokenLossSum(
            self.peft_model, job.training.loss_chunk_tokens or sys.maxsize, self.fast_path.adapter_compute_dtype
        )
        layers = causal_lm(self.peft_model).get_decoder().layers
        self.model = wrap_for_parallelism(self.objective, layers, job.plan, runtime, self.compute_dtype)
        self.trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = build_optimizer(
            self.trainable, lr=job.training.learning_rate, weight_decay=job.training.weight_decay, fast=self.fast_path
        )
        self.scheduler = build_scheduler(
            self.optimizer, self.total_steps, job.training.warmup_ratio, job.training.schedule
        )
        # Dropout masks differ per rank; everything above (LoRA init) used the shared seed.
        torch.manual_seed(job.training.seed + 1 + runtime.rank)
        if resume_from is not None:
            self._resume(resume_from)
        self.faults = Faults.from_env(runtime.rank, resumed=resume_from is not None)
        self.steps_this_process = 0

    # -- resume and checkpoint ---------------------------------------------------------------------------------

    def _find_checkpoint(self) -> Path | None:
        found = None
        if self.runtime.is_main:
            ckpt.clear_staging(self.checkpoints_dir)
            found = ckpt.latest_valid(self.checkpoints_dir, warn=self._warn)
        found = self.runtime.broadcast(str(found) if found else None)
        return Path(found) if found else None

    def _resume(self, checkpoint: Path) -> None:
        saved = ckpt.read_trainer_state(checkpoint)
        if saved["config_hash"] != self.state.config_hash:
            raise TrainingError(
                f"{checkpoint}: written for a different model, data or training recipe (config hash "
                f"{saved['config_hash']} != {self.state.config_hash}); use a new output directory to start afresh"
            )
        self.state = TrainerState(**saved)
        self.state.restarts += 1
        optimizer_state, scheduler_state = ckpt.load_optimizer_state(checkpoint)
        set_optimizer_state_dict(
            self.model, self.optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(scheduler_state)
        self.feed.restore(rescale_position(self.state.data_position, self.state.data_world_size, self.runtime.world_size))
        rng = ckpt.load_rng(checkpoint, self.runtime.rank)
        if rng is not None:
            ckpt.restore_rng(rng)
        else:
            torch.manual_seed(self.job.training.seed + 1 + self.runtime.rank + self.state.step)
        if self.runtime.is_main:
            self.metrics.rewind_to(self.state.step)
            record = {"event": "resume", "step": self.state.step, "checkpoint": checkpoint.name}
            self.metrics.append(record)
            self._log(f"resumed from {checkpoint} at step {self.state.step} (restart {self.state.restarts})")

    def _save_checkpoint(self) -> None:
        staging = ckpt.staging_path(self.checkpoints_dir, self.state.step)
        if self.runtime.is_main:
            ckpt.start_staging(self.checkpoints_dir, self.state.step)
        self.runtime.barrier()
        weights = adapter_state(self.peft_model)
        optimizer_state = get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        ckpt.save_rng(staging, self.runtime.rank)
        if self.runtime.is_main:
            with ckpt.writing(staging, ADAPTER_WEIGHTS):
                save_adapter(self.peft_model, weights, staging)
            ckpt.save_optimizer_state(staging, optimizer_state, self.scheduler.state_dict())
            self.state.data_position = self.feed.position.model_dump()
            self.state.data_world_size = self.runtime.world_size
            ckpt.write_trainer_state(staging, asdict(self.state))
        self.runtime.barrier()
        if self.runtime.is_main:
            sealed = ckpt.seal(staging, self.job.training.keep_last)
            self._log(f"checkpoint {sealed.name} written")
        self.runtime.barrier()
        # Waiting for rank 0's writes is checkpoint time, not the next step's communication.
        self.runtime.take_comm_seconds()

    # -- one optimizer step ------------------------------------------------------------------------------------

    def _accumulate(self, items: list[dict[str, torch.Tensor]], step: int) -> StepResult:
        """Forward and backward every micro-batch of the step; gradients end up as d(mean token loss of the
        global batch)/d(weights), whatever the micro-batch, accumulation or world size."""
        tokens, targets = count_tokens(items)
        tokens, targets = (int(value) for value in self.runtime.all_reduce_sum([tokens, targets]))
        # DDP and FSDP average gradients over ranks; scaling by world/targets turns that into a global token mean.
        scale = self.runtime.world_size / max(targets, 1)
        chunks = micro_batches(items, self.layout)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.runtime.device)
        for index, chunk in enumerate(chunks):
            with gradient_sync(self.model, enabled=index == len(chunks) - 1):
                batch = self._micro_batch(chunk)
                self.faults.raise_oom_if_due(step)
                chunk_loss, _ = self.model(**batch.inputs)
                chunk_loss = self.faults.poison_loss_if_due(step, chunk_loss)
                (chunk_loss * scale).backward()
            loss_sum += chunk_loss.detach().double()
        (global_loss,) = self.runtime.all_reduce_sum([loss_sum.item()])
        return StepResult(loss=global_loss / max(targets, 1), tokens=tokens, target_tokens=targets)

    def _back_off_after_oom(self, step: int, reason: str) -> None:
        """Halve the micro-batch, double the accumulation, record it; with several ranks, exit so torchrun
        restarts the whole group from the last checkpoint with the new layout (the other ranks are waiting in
        collectives this rank will never join)."""
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()
        old, self.layout = self.layout, self.layout.halved()
        save_layout(self.layout, self.output_dir)
        message = (
            f"out of memory at step {step} on rank {self.runtime.rank} ({reason}); micro-batch "
            f"{old.micro_batch_size} -> {self.layout.micro_batch_size}, accumulation {old.grad_accum_steps} -> "
            f"{self.layout.grad_accum_steps}, global batch unchanged"
        )
        self._warn(message, rank_local=True)
        if self.runtime.distributed:
            raise TrainingError(message + "; restarting the group from the last checkpoint (needs --max-restarts >= 1)")
        self.metrics.append({"event": "oom", "step": step, "rank": self.runtime.rank, **asdict(self.layout)})

    def _optimizer_step(self, step: int, result: StepResult) -> tuple[float, str | None]:
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.job.training.max_grad_norm)
        grad_norm = float(full_tensor(norm))
        anomaly = anomaly_reason(
            result.loss, grad_norm, self.state.grad_norm_history, self.job.training.anomaly_spike_factor
        )
        if anomaly is None:
            self.optimizer.step()
            self.state.consecutive_anomalies = 0
            self.state.grad_norm_history = [*self.state.grad_norm_history, grad_norm][-GRAD_NORM_WINDOW:]
        else:
            self.state.consecutive_anomalies += 1
            self.state.skipped_steps += 1
            self._warn(f"step {step} skipped: {anomaly} (no optimizer update)")
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped first step calls the scheduler before any optimizer.step(); that order is intended.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            self.scheduler.step()
        return grad_norm, anomaly

    def _micro_batch(self, sequences: list[dict[str, torch.Tensor]]) -> MicroBatch:
        batch = collate(
            sequences,
            packing=self.job.training.packing,
            row_tokens=self.job.plan.seq_len,
            pad_id=self.job.pad_token_id,
            dtype=self.compute_dtype,
            attention=self.fast_path.attention,
        )
        return batch.to(self.runtime.device)

    # -- evaluation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> ValidationTally | None:
        """The validation tally over the whole split, shared out across ranks and summed over them: the token
        loss and the Chinese metrics (validation_metrics.py) from the same forwards.

        Batches are collated as in training (packed when training packs), carrying the segment flags. Every rank
        runs the same number of forwards (a short rank repeats a batch and ignores it): under FSDP each forward
        is a collective.
        """
        if self.validation_data is None or len(self.validation_data) == 0:
            return None
        indices = list(range(self.runtime.rank, len(self.validation_data), self.runtime.world_size))
        micro = self.layout.micro_batch_size
        batches = [indices[start : start + micro] for start in range(0, len(indices), micro)]
        rounds = math.ceil(math.ceil(len(self.validation_data) / self.runtime.world_size) / micro)
        module = unwrapped(self.model)
        module.eval()
        tally = ValidationTally()
        for round_index in range(rounds):
            chosen = batches[round_index] if round_index < len(batches) else batches[0] if batches else [0]
            batch = self._micro_batch([self.validation_data[index] for index in chosen])
            scores = module(**batch.inputs, token_scores=True)
            if round_index < len(batches):
                tally += tally_batch(scores, batch.inputs["labels"], batch.segments, self.token_pieces)
        module.train()
        return tally.summed_over_ranks(self.runtime.all_reduce_sum)

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> TrainingSummary:
        if self.runtime.is_main:
            self._log(
                f"training {self.total_steps} steps on {self.runtime.world_size} rank(s) ({self.job.plan.strategy}, "
                f"{self.job.plan.device}, {self.job.plan.dtype}); micro-batch {self.layout.micro_batch_size} x "
                f"accumulation {self.layout.grad_accum_steps} x world {self.runtime.world_size} = "
                f"global batch {self.layout.per_rank * self.runtime.world_size}"
            )
            for reason in self.fast_path.fallbacks:
                self._log(f"fast path off in part: {reason}")
        if self.layout.micro_batch_size < self.job.plan.micro_batch_size:
            self._warn(
                f"micro-batch {self.layout.micro_batch_size} x accumulation {self.layout.grad_accum_steps} instead of "
                f"the planned {self.job.plan.micro_batch_size}: kept from an earlier out-of-memory back-off ({LAYOUT_FILE})"
            )
        self.model.train()
        started = time.perf_counter()
        while self.state.step < self.total_steps:
            step = self.state.step + 1
            self._train_step(step)
            self.state.wall_seconds += time.perf_counter() - started
            started = time.perf_counter()
            if step % self.job.training.checkpoint_every == 0 and step < self.total_steps:
                self._save_checkpoint()
        return self._finish()

    def _train_step(self, step: int) -> None:
        self.faults.kill_if_due(step)
        self.faults.hang_if_due(step)
        items = self.feed.next_step()
        if self.runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.runtime.device)
        started = time.perf_counter()
        while True:
            try:
                result = self._accumulate(items, step)
                break
            except torch.OutOfMemoryError as error:
                reason = str(error)
            # Outside the except block the traceback, and the activations its frames hold, are already freed.
            self._back_off_after_oom(step, reason)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm, anomaly = self._optimizer_step(step, result)
        self.runtime.barrier()
        elapsed = time.perf_counter() - started

        state = self.state
        state.step = step
        state.tokens += result.tokens
        state.target_tokens += result.target_tokens
        state.train_seconds += elapsed
        self.steps_this_process += 1
        if self.steps_this_process > WARMUP_STEPS:
            state.steady_tokens += result.tokens
            state.steady_seconds += elapsed
        if anomaly is None:
            state.last_loss = result.loss
        record = {
            "step": step,
            "epoch": round(self.feed.epoch_progress, 6),
            "loss": result.loss if math.isfinite(result.loss) else None,
            "lr": lr,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            "tokens": result.tokens,
            "target_tokens": result.target_tokens,
            "tokens_per_s": result.tokens / elapsed if elapsed > 0 else None,
            "step_time_s": elapsed,
            "comm_s": self.runtime.take_comm_seconds(),
            "memory_gib": self._memory_gib(),
            "micro_batch_size": self.layout.micro_batch_size,
            "grad_accum_steps": self.layout.grad_accum_steps,
            "skipped": anomaly is not None,
            # Lets a live follower show progress and ETA without knowing the plan.
            "total_steps": self.total_steps,
        }
        if anomaly is not None:
            record["anomaly"] = anomaly
        if step % self.job.training.eval_every == 0 or step == self.total_steps:
            self._record_validation(record)
        if self.runtime.is_main:
            self.metrics.append(record)
            self.reporter.metrics(record)
        if state.consecutive_anomalies >= self.job.training.max_consecutive_anomalies:
            raise AnomalyStop(
                f"training stopped at step {step}: {state.consecutive_anomalies} consecutive anomalous steps "
                f"(training.max_consecutive_anomalies={self.job.training.max_consecutive_anomalies}); last: {anomaly}. "
                f"Lower training.learning_rate or check the data; checkpoints are in {self.checkpoints_dir}"
            )

    def _record_validation(self, record: dict[str, Any]) -> None:
        tally = self.evaluate()
        record["comm_s"] += self.runtime.take_comm_seconds()
        if tally is None:
            return
        val_loss = tally.val_loss
        record[VAL_LOSS] = val_loss
        record.update(tally.metrics())
        self.state.last_val_loss = val_loss
        if self.state.best_val_loss is None or val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss

    def _finish(self) -> TrainingSummary:
        weights = adapter_state(self.peft_model)
        adapter_dir = self.output_dir / ADAPTER_DIR
        summary = TrainingSummary(
            final_train_loss=self.state.last_loss,
            final_val_loss=self.state.last_val_loss,
            best_val_loss=self.state.best_val_loss,
            steps=self.state.step,
            tokens=self.state.tokens,
            target_tokens=self.state.target_tokens,
            tokens_per_s=self._throughput(),
            wall_time_s=self.state.wall_seconds,
            world_size=self.runtime.world_size,
            micro_batch_size=self.layout.micro_batch_size,
            grad_accum_steps=self.layout.grad_accum_steps,
            global_batch_size=self.layout.per_rank * self.runtime.world_size,
            restarts=self.state.restarts,
            oom_events=round(math.log2(self.job.plan.micro_batch_size / self.layout.micro_batch_size)),
            skipped_steps=self.state.skipped_steps,
            adapter_dir=str(adapter_dir),
            metrics_file=str(self.metrics.path),
            plan=self.job.plan.model_dump(mode="json"),
        )
        if self.runtime.is_main:
            with publishing_folder(adapter_dir) as staging:
                save_adapter(self.peft_model, weights, staging)
                if self.job.tokenizer_dir:
                    shutil.copytree(self.job.tokenizer_dir, staging, dirs_exist_ok=True)
            summary.write(self.output_dir / SUMMARY_FILE)
            self._log(f"adapter written to {adapter_dir}")
            self.reporter.summary(summary.model_dump(mode="json"))
        self.runtime.barrier()
        return summary

    # -- reporting ---------------------------------------------------------------------------------------------

    def _throughput(self) -> float:
        """Steady-state tokens per second of step time: the steps after each process's first WARMUP_STEPS, or
        every step when none came after a warm-up (a run of WARMUP_STEPS steps per process). Evaluation and
        checkpoint time are in neither; the summary's wall time has them."""
        state = self.state
        if state.steady_seconds > 0:
            return state.steady_tokens / state.steady_seconds
        return state.tokens / state.train_seconds if state.train_seconds else 0.0

    def _memory_gib(self) -> float:
        if self.runtime.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.runtime.device) / GIB
        return psutil.Process().memory_info().rss / GIB

    def _log(self, message: str) -> None:
        self.reporter.log(message)

    def _warn(self, message: str, rank_local: bool = False) -> None:
        if self.runtime.is_main or rank_local:
            self.reporter.log(f"WARNING: {message}")
        if self.runtime.is_main:
            self.metrics.append({"event": "warning", "step": self.state.step, "message": message})


# -- entry point -----------------------------------------------------------------------------------------------


def _check_not_halted(job: TrainingJob) -> None:
    """Refuse to rerun a stop on purpose inside the same torchrun invocation (its restarts would repeat it)."""
    halt = Path(job.output_dir) / HALT_FILE
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and halt.is_file():
        record = json.loads(halt.read_text(encoding="utf-8"))
        if record.get("run_id") == run_id:
            raise AnomalyStop(record["reason"])


def _record_halt(job: TrainingJob, reason: str) -> None:
    halt = Path(job.output_dir) / HALT_FILE
    halt.write_text(json.dumps({"run_id": os.environ.get("TORCHELASTIC_RUN_ID"), "reason": reason}), encoding="utf-8")


def train(job: TrainingJob, reporter: Reporter | None = None) -> TrainingSummary:
    """Run (or resume) the job in this process as the rank torchrun's environment says."""
    reporter = reporter or ConsoleReporter()
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    _check_not_halted(job)
    runtime = start_runtime(job.plan)
    try:
        summary = Trainer(job, runtime, reporter).run()
    except AnomalyStop as error:
        if runtime.is_main:
            _record_halt(job, str(error))
        raise
    # Only a clean finish leaves the group: after a failure other ranks may still wait in a collective, and
    # tearing the group down under them can hang; exiting lets torchrun stop and restart them.
    stop_runtime(runtime)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qft_core.train.engine", description=__doc__)
    parser.add_argument("--job", required=True, help="job.json written by qft_core.train.launch.prepare_run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, reporter: Reporter | None = None) -> int:
    """torchrun's entry on every rank; `reporter` (rank 0's progress hook) defaults to the console."""
    die_with_parent(os.environ.get(AGENT_PID))  # no worker outlives torchrun's agent, killed or not
    args = parse_args(argv)
    reporter = reporter or ConsoleReporter()
    try:
        train(TrainingJob.read(args.job), reporter)
    except (TrainingError, BatchError, ParallelSetupError, JobError, ckpt.CheckpointError) as error:
        reporter.log(f"ERROR: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
