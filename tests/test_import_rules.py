"""The import directions of the house layout (shared/STYLE.md), written as import-linter contracts in
pyproject.toml: `lint-imports` must keep every one of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The contracts under [tool.importlinter] in pyproject.toml: all of them must be checked, not only some.
CONTRACTS = 6


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout
