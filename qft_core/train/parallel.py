"""One rank's place in a torchrun job: the process group and device it gets from the environment, the
data-parallel wrapping of the model (DDP or FSDP2), and the small collectives the engine issues itself."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from qft_core.train.plan import TrainingPlan

# Long enough for a rank-0 checkpoint of a large adapter while the others wait at a barrier.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class ParallelSetupError(RuntimeError):
    """The process cannot take the place the plan gives it (no GPU, unknown strategy)."""


@dataclass
class Runtime:
    """Rank, world, device, and the time spent waiting in the engine's own collectives since last asked."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool
    comm_seconds: float = 0.0

    @classmethod
    def single(cls, device: str = "cpu") -> Runtime:
        """A lone process, no process group: how tests and one-CPU runs use the engine."""
        return cls(rank=0, world_size=1, local_rank=0, device=torch.device(device), distributed=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over ranks in float64. The device is synchronised first, so the time counted is
        waiting for the other ranks and the transfer, not this rank's queued compute."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.synchronize()
        started = time.perf_counter()
        dist.all_reduce(tensor)
        result = tensor.tolist()
        self.comm_seconds += time.perf_counter() - started
        return result

    def barrier(self) -> None:
        if self.distributed:
            self.synchronize()
            started = time.perf_counter()
            dist.barrier()
            self.comm_seconds += time.perf_counter() - started

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def take_comm_seconds(self) -> float:
        spent, self.comm_seconds = self.comm_seconds, 0.0
        return spent


def start_runtime(plan: TrainingPlan) -> Runtime:
    """Join the process group torchrun describes in the environment (none for a plain single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            raise ParallelSetupError("the plan trains on CUDA but this process sees no GPU; re-plan on this machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    distributed = "RANK" in os.environ and world_size > 1
    if distributed:
        dist.init_process_group(
            backend=plan.backend,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=device, distributed=distributed)


def stop_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_parallelism(
    model: nn.Module, layers: nn.ModuleList, plan: TrainingPlan, runtime: Runtime, compute_dtype: torch.dtype
) -> nn.Module:
    """DDP (full replicas, gradients all-reduced) or FSDP2 (each decoder layer, then the rest, sharded; compute
    in `compute_dtype`, gradients reduced in fp32). A lone process runs the model as it is."""
    if not runtime.distributed:
        return model
    if plan.strategy == "ddp":
        return replicate_with_ddp(model, runtime.device)
    if plan.strategy != "fsdp":
        raise ParallelSetupError(f"unknown parallel strategy {plan.strategy!r} in the plan (expected ddp or fsdp)")
    return shard_with_fsdp2(model, layers, runtime.device, runtime.world_size, compute_dtype)


def replicate_with_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DDP in the current process group (its gradients all-reduced in buckets during backward)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard_with_fsdp2(
    model: nn.Module, layers: nn.ModuleList, device: torch.device, world_size: int, compute_dtype: torch.dtype
) -> nn.Module:
    """FSDP2 in place over the current process group: each decoder layer (compiled or not), then the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The module under DDP (FSDP2 shards in place, so its module is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Whether this backward reduces gradients: off on non-final micro-steps (DDP's no_sync, FSDP2's
    set_requires_gradient_sync), so accumulation costs one reduction per optimizer step."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded FSDP2 tensor gathered whole (a collective: every rank must call it); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
