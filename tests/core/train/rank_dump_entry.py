"""A torchrun entry for tests: the engine, plus every rank saving its own final LoRA weights
(rank-RANK-lora.pt in the output folder) so a test can compare the replicas, and announcing its start
(WORKER_STARTS) so a test can count the workers torchrun started."""

import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from qft_core.train import engine
from tiny_run import WORKER_STARTS

_finish = engine.Trainer._finish


def _finish_and_dump(self: engine.Trainer):
    weights = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
        for name, p in self.peft_model.named_parameters()
        if p.requires_grad
    }
    torch.save(weights, Path(self.job.output_dir) / f"rank-{os.environ['RANK']}-lora.pt")
    return _finish(self)


engine.Trainer._finish = _finish_and_dump

if __name__ == "__main__":
    print(f"{WORKER_STARTS}: rank {os.environ['RANK']}", flush=True)
    sys.exit(engine.main())
