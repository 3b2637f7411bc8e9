"""The project-local Dagster instance: SQLite under .dagster_home unless DAGSTER_HOME says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from filelock import FileLock

from qft_core.config import REPO_ROOT


def dagster_home_path() -> Path:
    """Where the project's Dagster instance lives ($DAGSTER_HOME, else .dagster_home), without creating it."""
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home")


def project_dagster_home() -> Path:
    home = dagster_home_path()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        # SQLite storage in this folder is Dagster's default; telemetry off because this machine is offline.
        settings.write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n", encoding="utf-8")
    return home


def project_instance() -> dg.DagsterInstance:
    home = project_dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    # The first open creates the SQLite storage: processes doing that at once can leave it unusable.
    with FileLock(home / ".instance.lock"):
        return dg.DagsterInstance.get()
