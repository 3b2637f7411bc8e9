"""Shared fixtures for the reliability tests: a private Dagster home and qft config files in tmp."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def write_config(path: Path, corpus: Path, artifacts: Path) -> Path:
    """A qft config file reading `corpus` and writing under `artifacts` (small splits allowed)."""
    config = {
        "paths": {"corpus_dir": str(corpus), "artifacts_dir": str(artifacts)},
        "split": {"min_split_size": 2},
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
