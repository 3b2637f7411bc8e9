"""Failures injected on purpose through environment variables, so the recovery paths (OOM back-off, anomaly
skipping, restart and resume) can be exercised on a CPU. Each fault fires on the first attempt only: a run
that torchrun restarts, or that resumes from a checkpoint, is clean.

    QFT_FAULT_OOM_AT_STEP=N      raise torch.OutOfMemoryError in the forward of step N (once)
    QFT_FAULT_NAN_AT_STEPS=3,4   make the loss of these steps NaN
    QFT_FAULT_KILL_AT_STEP=N     SIGKILL this process as step N starts
    QFT_FAULT_HANG_AT_STEP=N     block this process as step N starts, as a stuck worker would, until it is killed
    QFT_FAULT_RANK=R             the rank the faults fire on (default 0)
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import torch

OOM_AT_STEP = "QFT_FAULT_OOM_AT_STEP"
NAN_AT_STEPS = "QFT_FAULT_NAN_AT_STEPS"
KILL_AT_STEP = "QFT_FAULT_KILL_AT_STEP"
HANG_AT_STEP = "QFT_FAULT_HANG_AT_STEP"
FAULT_RANK = "QFT_FAULT_RANK"


class FaultConfigError(ValueError):
    """A QFT_FAULT_* variable that does not parse; the message names it."""


@dataclass
class Faults:
    oom_at_step: int | None = None
    nan_at_steps: frozenset[int] = frozenset()
    kill_at_step: int | None = None
    hang_at_step: int | None = None
    _oom_fired: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls, rank: int, resumed: bool, environ: dict[str, str] | None = None) -> Faults:
        """The faults armed for this process: none unless this is rank QFT_FAULT_RANK on a first attempt."""
        env = os.environ if environ is None else environ
        first_attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and not resumed
        if not first_attempt or rank != _integer(env, FAULT_RANK, default=0):
            return cls()
        nan_steps = env.get(NAN_AT_STEPS, "").strip()
        try:
            nan_at = frozenset(int(part) for part in nan_steps.split(",") if part.strip())
        except ValueError:
            raise FaultConfigError(f"{NAN_AT_STEPS}={nan_steps!r}: expected comma-separated step numbers") from None
        return cls(
            oom_at_step=_integer(env, OOM_AT_STEP),
            nan_at_steps=nan_at,
            kill_at_step=_integer(env, KILL_AT_STEP),
            hang_at_step=_integer(env, HANG_AT_STEP),
        )

    def kill_if_due(self, step: int) -> None:
        if step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def hang_if_due(self, step: int) -> None:
        while step == self.hang_at_step:
            time.sleep(3600)

    def raise_oom_if_due(self, step: int) -> None:
        if step == self.oom_at_step and not self._oom_fired:
            self._oom_fired = True
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {OOM_AT_STEP}={step})")

    def poison_loss_if_due(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_at_steps else loss


def _integer(env, name: str, default: int | None = None) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise FaultConfigError(f"{name}={value!r}: expected an integer step or rank") from None
