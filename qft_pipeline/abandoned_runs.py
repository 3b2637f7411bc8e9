"""Runs whose `qft run` process died (kill -9, a crash, a reboot) stay STARTED in the instance for ever: each run
names the process executing it, and the next `qft run` marks as failed those whose process is gone."""

from __future__ import annotations

import socket

import dagster as dg
import psutil

from qft_pipeline.jobs import LAUNCHER_TAG

_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def launcher_tag() -> dict[str, str]:
    """This process, named so that a later process can tell whether it still runs (a pid alone may be reused)."""
    me = psutil.Process()
    return {LAUNCHER_TAG: f"{socket.gethostname()}:{me.pid}:{me.create_time():.3f}"}


def _gone(launcher: str) -> bool:
    host, pid, started = launcher.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another machine's process: nothing here can tell
    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" != started
    except psutil.NoSuchProcess:
        return True


def fail_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every unfinished run of this machine whose `qft run` process has ended; returns their ids."""
    abandoned = [
        run
        for run in instance.get_runs(dg.RunsFilter(statuses=_UNFINISHED))
        if LAUNCHER_TAG in run.tags and _gone(run.tags[LAUNCHER_TAG])
    ]
    for run in abandoned:
        instance.report_run_failed(
            run,
            message=f"the qft run process that executed this run ({run.tags[LAUNCHER_TAG]}) ended without "
            "finishing it (killed?); marked failed by the next qft run",
        )
    return [run.run_id for run in abandoned]
