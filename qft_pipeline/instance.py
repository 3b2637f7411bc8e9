"""The project-local Dagster instance: SQLite under .dagster_home unless DAGSTER_HOME says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from qft_core.config import REPO_ROOT


def project_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    return home


def project_instance() -> dg.DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(project_dagster_home())
    return dg.DagsterInstance.get()
