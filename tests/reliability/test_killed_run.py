"""`qft run` killed with SIGKILL of its whole process group during `lora_checkpoint`: no trainer process survives
it, the next `qft run` marks the killed run failed, and its training resumes from the killed run's checkpoint. Ctrl-C
(SIGINT to the group) ends it at once, with its message and no process left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from qft_core.train import faults
from qft_core.train.engine import CHECKPOINTS_DIR
from qft_core.train.job import SUMMARY_FILE, TrainingSummary
from qft_core.train.lifeline import die_with_parent
from qft_core.train.metrics_log import METRICS_FILE, MetricsLog
from qft_pipeline.instance import project_instance
from qft_pipeline.runner import materialize_graph
from tests.reliability.test_concurrent_runs import write_pairs

REPO = Path(__file__).resolve().parents[2]
TRAINING = {"max_steps": 4, "checkpoint_every": 2, "eval_every": 2, "global_batch_size": 2, "max_restarts": 0}


def test_a_process_whose_parent_is_already_gone_dies_at_once() -> None:
    # The parent-death signal only covers a parent that ends after the request; a wrong pid stands for one
    # that ended before it.
    code = f"from qft_core.train.lifeline import die_with_parent; die_with_parent('{os.getpid() + 10**6}')"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == -signal.SIGKILL
    die_with_parent(None)  # without a launcher (a plain `python -m qft_core.train.engine`) it does nothing


def _trainers(folder: Path) -> list[psutil.Process]:
    """torchrun's agent and its workers: the processes started with a training job of `folder`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "--job" in command and any(str(folder) in part for part in command):
            found.append(process)
    return found


def _start_run_that_hangs_in_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[subprocess.Popen, Path]:
    """`qft run` of the training in a process group of its own, returned once its trainer, after checkpoint 2,
    hangs in step 3; and the config file."""
    corpus, runs = tmp_path / "corpus", tmp_path / "artifacts" / "runs"
    write_pairs(corpus, "killed", pairs=24)
    config = {
        "paths": {"corpus_dir": str(corpus), "artifacts_dir": str(tmp_path / "artifacts")},
        "split": {"min_split_size": 2},
        "model": {"max_length": 256},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": TRAINING,
    }
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    for name in (faults.OOM_AT_STEP, faults.NAN_AT_STEPS, faults.FAULT_RANK, faults.KILL_AT_STEP):
        monkeypatch.delenv(name, raising=False)

    # The first run's trainer stops at step 3, after checkpoint 2, and waits there to be killed.
    env = {**os.environ, faults.HANG_AT_STEP: "3"}
    command = [sys.executable, "-m", "qft_core.cli", "--config", str(config_file), "run", "--select", "+key:lora_checkpoint"]
    with open(tmp_path / "first_run.log", "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not list(runs.glob(f"*/lora_checkpoint/{CHECKPOINTS_DIR}/step-00000002")):
            assert first.poll() is None, (tmp_path / "first_run.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.5)
        time.sleep(3)  # into step 3, where it hangs
    except BaseException:
        os.killpg(first.pid, signal.SIGKILL)
        raise
    return first, config_file


@pytest.mark.slow
def test_a_sigkill_of_qft_runs_process_group_ends_the_trainer_and_the_next_run_resumes_its_checkpoint(
    tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, config_file = _start_run_that_hangs_in_training(tmp_path, monkeypatch)
    runs = tmp_path / "artifacts" / "runs"
    try:
        trainers = _trainers(tmp_path)
        assert any("qft_core.train.lifeline" in " ".join(p.cmdline()) for p in trainers)  # torchrun's agent
        workers = [p for p in trainers if "qft_core.train.lifeline" not in " ".join(p.cmdline())]
        # torchrun starts each worker in a session of its own: a kill of the group does not reach it by itself.
        assert workers and all(os.getsid(worker.pid) != os.getpgid(first.pid) for worker in workers)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        _, alive = psutil.wait_procs(trainers, timeout=30)
        assert alive == []
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    (killed_dir,) = runs.glob("*/lora_checkpoint")
    killed_run_id = killed_dir.parent.name
    assert project_instance().get_run_by_id(killed_run_id).status == dg.DagsterRunStatus.STARTED

    outcome = materialize_graph(config_file=str(config_file), selection="+key:lora_checkpoint")

    assert outcome.success, outcome.failures
    assert outcome.abandoned == [killed_run_id]
    instance = project_instance()
    assert instance.get_run_by_id(killed_run_id).status == dg.DagsterRunStatus.FAILURE
    # Trained on in the killed run's folder, from its checkpoint: steps 3 and 4 only.
    assert outcome.artifacts["lora_checkpoint"] == str(killed_dir / "adapter")
    assert not (runs / outcome.run_id / "lora_checkpoint").exists()
    log = [record.user_message for record in instance.all_logs(outcome.run_id) if record.step_key == "lora_checkpoint"]
    assert f"resumed from {killed_dir / CHECKPOINTS_DIR / 'step-00000002'} at step 2 (restart 1)" in log
    records = MetricsLog(killed_dir / METRICS_FILE).records()
    assert [(r["event"], r["step"]) for r in records if r.get("event") not in (None, "warning")] == [("resume", 2)]
    assert [record["step"] for record in records if "event" not in record] == [1, 2, 3, 4]
    assert TrainingSummary.read(killed_dir / SUMMARY_FILE).steps == 4


@pytest.mark.slow
def test_ctrl_c_during_training_ends_qft_run_at_once_with_its_message_and_no_process_left(
    tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = _start_run_that_hangs_in_training(tmp_path, monkeypatch)
    try:
        trainers = _trainers(tmp_path)
        assert trainers
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C on a terminal sends: the foreground process group
        # Before the fix the job went on in a non-daemon thread that the interpreter waited for (45 s and more).
        first.wait(timeout=20)
        _, alive = psutil.wait_procs(trainers, timeout=20)
        assert alive == []
        # Dead processes not yet reaped (zombies: Dagster's log tails among them) run nothing.
        left = [p for p in psutil.process_iter(["status"]) if _process_group(p) == first.pid
                and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert left == [], [process.cmdline() for process in left]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130
    output = (tmp_path / "first_run.log").read_text(errors="replace")
    assert "qft run: interrupted (Ctrl-C); the next `qft run` marks the unfinished run failed" in output
    assert "Traceback" not in output.split("qft run: loading")[0]


def _process_group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None
