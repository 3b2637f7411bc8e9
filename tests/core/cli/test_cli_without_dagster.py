"""`qft` on a machine without Dagster (a GPU box with only PyTorch): the library's commands work, and `qft run`
says in one line that it needs Dagster; without qft_pipeline there is no `run` at all. Each command runs in a fresh
Python in which importing the blocked packages fails as it does where they are not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

# Put before every other finder, so that the top-level packages whose names start with BLOCKED are unimportable
# even though this environment has them.
WITHOUT = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith({blocked!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Blocked())
from qft_core.cli import main
sys.exit(main(sys.argv[1:]))
"""

PAIR = """### Q: 第 {n} 题：请说明 {term} 在场景 {n} 中的用途？
<thinking>
{term} 是本题的关键概念，需要先回忆它的定义。
</thinking>
### A: {term} 的作用是保护数据的机密性或完整性，这是第 {n} 个示例。
"""
TERMS = ["AES", "SM4", "RSA", "SM2", "SHA-256", "SM3", "HMAC", "ECDSA", "TLS 1.3", "Diffie-Hellman"]
PAIRS = 30


def qft_without(blocked: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT.format(blocked=blocked), *argv],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    pairs = [PAIR.format(n=n, term=TERMS[n % len(TERMS)]) for n in range(PAIRS)]
    for index in range(2):
        (folder / f"part{index}.md").write_text("\n".join(pairs[index::2]), encoding="utf-8")
    return folder


def test_the_blocker_makes_dagster_unimportable(tmp_path: Path) -> None:
    probe = WITHOUT.format(blocked="dagster").replace("from qft_core.cli import main\nsys.exit(main(sys.argv[1:]))", "import dagster")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'dagster'" in result.stderr


def test_parse_and_split_run_without_dagster(corpus: Path, tmp_path: Path) -> None:
    parsed = qft_without("dagster", "parse", str(corpus), "--out", "examples.parquet", cwd=tmp_path)
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.startswith(f"parsed {PAIRS} of {PAIRS} pairs from 2 file(s); 0 quarantined")
    assert pq.read_metadata(tmp_path / "examples.parquet").num_rows == PAIRS

    split = qft_without("dagster", "split", "examples.parquet", "--out-dir", "splits", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    rows = {name: pq.read_metadata(tmp_path / "splits" / f"{name}.parquet").num_rows
            for name in ("train", "validation", "test")}
    assert sum(rows.values()) == PAIRS
    assert [line.split()[:2] for line in split.stdout.splitlines()] == [[name, str(n)] for name, n in rows.items()]


def test_train_help_works_without_dagster(tmp_path: Path) -> None:
    result = qft_without("dagster", "train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: qft train [-h] --splits SPLITS --out OUT [--nproc NPROC]")


def test_run_says_it_needs_dagster_in_one_line(tmp_path: Path) -> None:
    result = qft_without("dagster", "run", "--select", "term_balanced_splits", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "qft run: needs Dagster, which this Python cannot import (No module named 'dagster'); install the project "
        "with its dependencies (`uv sync`). The other commands work without it."
    ]


def test_without_qft_pipeline_there_is_no_run_command(tmp_path: Path) -> None:
    listed = qft_without("qft_pipeline", "--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "\n    serve " in listed.stdout
    assert "\n    run " not in listed.stdout and "\n    ui " not in listed.stdout
    assert qft_without("qft_pipeline", "run", cwd=tmp_path).returncode == 2
