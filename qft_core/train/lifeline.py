"""A training's processes die with the process that launched them: torchrun's agent with its launcher, each
worker with the agent, through Linux's parent-death signal, so killing `qft run` never leaves a trainer alone.

    python -m qft_core.train.lifeline TORCHRUN_ARGS…   torchrun, tied to the launcher named in QFT_LAUNCHER_PID
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Set by the launcher to its own pid (worker_environment), and by the agent to its pid for the workers it starts.
LAUNCHER_PID = "QFT_LAUNCHER_PID"
AGENT_PID = "QFT_AGENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: str | None) -> None:
    """Have the kernel SIGKILL this process as soon as its parent, pid `parent_pid`, ends; if the parent has
    ended already (before the request could be made), die now. No-op without a pid or outside Linux.

    SIGKILL because a worker blocked in a collective or a CUDA call cannot run a handler; checkpoints are
    written atomically, so nothing is left half-written."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # The signal is only sent for a parent that ends after the request: one already gone re-parented us.
    if os.getppid() != int(parent_pid):
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.run import main as torchrun

    die_with_parent(os.environ.get(LAUNCHER_PID))
    os.environ[AGENT_PID] = str(os.getpid())  # inherited by the workers torchrun starts
    torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
