"""Two nodes on one machine: two torchrun agents (one gloo process each) meeting in a c10d rendezvous on
127.0.0.1 train the same adapter as one process with the same global batch, and a worker SIGKILLed on one node
makes both agents restart and resume from the last checkpoint to the same losses. Also the rendezvous rule the
kubernetes launcher relies on: nodes are numbered in the order of their --local-addr, not of their arrival."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qft_core.model.peft_files import ADAPTER_WEIGHTS
from qft_core.train import faults
from qft_core.train.engine import train
from qft_core.train.job import SUMMARY_FILE, TrainingJob, TrainingSummary
from qft_core.train.launch import torchrun_command, worker_environment
from qft_core.train.metrics_log import METRICS_FILE, MetricsLog
from qft_core.train.plan import rendezvous_args
from tests.core.train.tiny_run import WORKER_STARTS, cpu_plan, make_job, write_synthetic_split, write_tiny_qwen3

HERE = Path(__file__).resolve().parent
# Each node: one process, micro-batch 2, accumulation 2; two nodes make a global batch of 8.
TWO_NODES = cpu_plan(world_size=2, micro=2, accum=2).model_copy(update={"nnodes": 2, "nproc_per_node": 1})
# fp32 throughout. The two-node step sums the nodes' gradients in gloo's all-reduce, one process sums its four
# micro-batches in another order: each step's gradient differs in the last bits (~1e-7 relative), which 8 AdamW
# steps at lr 0.1 carry into the weights (measured: 3.8e-6 at most, on weights up to 0.45; losses within 3e-7).
# 1e-5 is the bound of the one-node DDP test too. The killed and resumed run repeats the clean one's arithmetic
# (same ranks, restored RNG): measured identical, held to the same bound.
TOLERANCE = 1e-5
# Killed as step 5 starts: after the checkpoint of step 4 (checkpoint_every 2), before the last step (8).
KILL_AT_STEP = 5


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> TrainingJob:
    root = tmp_path_factory.mktemp("two-nodes")
    return make_job(
        write_tiny_qwen3(root / "model"),
        write_synthetic_split(root / "train.safetensors", count=32, seed=1),
        write_synthetic_split(root / "validation.safetensors", count=6, seed=2),
        root / "unused",
        TWO_NODES,
        max_restarts=1,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_on_two_nodes(job: TrainingJob, output: Path, env: dict[str, str] | None = None) -> list[str]:
    """Write the job for `output`, start the same torchrun command twice, as a launcher does on two machines (the
    rendezvous numbers the nodes; torchrun ignores --node-rank with c10d), wait for both agents and return their
    outputs; both must succeed."""
    job_path = job.model_copy(update={"output_dir": str(output)}).write(output / "job.json")
    rendezvous = rendezvous_args(2, 1, f"127.0.0.1:{_free_port()}")
    agents = [
        subprocess.Popen(
            torchrun_command(job_path, job.plan, "rank_dump_entry", rendezvous=rendezvous),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**worker_environment(job.plan), "PYTHONPATH": str(HERE), **(env or {})},
        )
        for _node in range(2)
    ]
    outputs = [agent.communicate(timeout=1800)[0] for agent in agents]
    for node, (agent, text) in enumerate(zip(agents, outputs, strict=True)):
        assert agent.returncode == 0, f"node {node} exited with {agent.returncode}:\n{text[-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def two_node_run(job: TrainingJob, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("two-node-run")
    outputs = train_on_two_nodes(job, output, env={faults.KILL_AT_STEP: ""})
    assert [text.count(WORKER_STARTS) for text in outputs] == [1, 1]
    return output


def _losses(output: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in MetricsLog(output / METRICS_FILE).records() if "event" not in r]


def _assert_same_adapter(ours: Path, theirs: Path) -> None:
    mine = load_file(str(ours / "adapter" / ADAPTER_WEIGHTS))
    other = load_file(str(theirs / "adapter" / ADAPTER_WEIGHTS))
    assert mine.keys() == other.keys() and len(mine) == 2 * 3 * 2  # A and B of 3 targets in each of 2 layers
    for name in mine:
        torch.testing.assert_close(mine[name], other[name], rtol=0, atol=TOLERANCE, msg=name)


@pytest.mark.slow
def test_two_nodes_train_the_adapter_of_one_process_with_the_same_global_batch(
    job: TrainingJob, two_node_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = TrainingSummary.read(two_node_run / SUMMARY_FILE)
    assert (summary.world_size, summary.steps, summary.restarts) == (2, 8, 0)
    rank0 = torch.load(two_node_run / "rank-0-lora.pt", weights_only=True)
    rank1 = torch.load(two_node_run / "rank-1-lora.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[name], rank1[name]) for name in rank0)

    for name in (faults.KILL_AT_STEP, faults.NAN_AT_STEPS, faults.OOM_AT_STEP, "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = job.model_copy(update={"output_dir": str(tmp_path), "plan": cpu_plan(micro=2, accum=4)})
    alone_summary = train(alone)

    assert alone_summary.final_train_loss == pytest.approx(summary.final_train_loss, abs=TOLERANCE)
    assert alone_summary.final_val_loss == pytest.approx(summary.final_val_loss, abs=TOLERANCE)
    for (step, loss), (alone_step, alone_loss) in zip(_losses(two_node_run), _losses(tmp_path), strict=True):
        assert step == alone_step and loss == pytest.approx(alone_loss, abs=TOLERANCE)
    _assert_same_adapter(two_node_run, tmp_path)


@pytest.mark.slow
def test_a_worker_killed_on_one_node_restarts_both_nodes_from_the_last_checkpoint(
    job: TrainingJob, two_node_run: Path, tmp_path: Path
) -> None:
    outputs = train_on_two_nodes(job, tmp_path, env={faults.KILL_AT_STEP: str(KILL_AT_STEP), faults.FAULT_RANK: "1"})

    # Each agent started its worker twice: the killed node's after the failure, the other's when the restarted
    # node came back to the rendezvous (torchrun restarts a whole group when its membership changes).
    assert [text.count(WORKER_STARTS) for text in outputs] == [2, 2]
    text = "\n".join(outputs)
    assert text.count(f"resumed from {tmp_path / 'checkpoints' / 'step-00000004'} at step 4 (restart 1)") == 1
    records = MetricsLog(tmp_path / METRICS_FILE).records()
    assert [(r["event"], r["step"]) for r in records if r.get("event") == "resume"] == [("resume", 4)]
    summary = TrainingSummary.read(tmp_path / SUMMARY_FILE)
    assert (summary.world_size, summary.steps, summary.restarts) == (2, 8, 1)
    # Steps 1-4 of the killed attempt, 5-8 after the restart: the same losses as the run nobody killed.
    assert [step for step, _ in _losses(tmp_path)] == list(range(1, 9))
    for (_, loss), (_, clean) in zip(_losses(tmp_path), _losses(two_node_run), strict=True):
        assert loss == pytest.approx(clean, abs=TOLERANCE)
    clean = TrainingSummary.read(two_node_run / SUMMARY_FILE)
    assert summary.final_val_loss == pytest.approx(clean.final_val_loss, abs=TOLERANCE)
    _assert_same_adapter(tmp_path, two_node_run)


RANK_SCRIPT = """import os, sys
import torch.distributed as dist
dist.init_process_group("gloo")
print("rank of", sys.argv[1], os.environ["RANK"], flush=True)
dist.destroy_process_group()
"""


def test_the_rendezvous_numbers_nodes_by_local_address_not_by_arrival(tmp_path: Path) -> None:
    """The node whose address sorts first gets global rank 0 even when it joins last (kubernetes_launch gives pod
    node-0 the first address, so that rank 0, the one reporting through Pipes, runs in the Pipes pod)."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT, encoding="utf-8")
    port = _free_port()

    def node(name: str, address: str) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "torch.distributed.run", *rendezvous_args(2, 1, f"127.0.0.1:{port}"),
            f"--local-addr={address}", str(script), name,
        ]  # fmt: skip
        env = {**worker_environment(TWO_NODES), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    late = node("second-address", "127.0.0.2")
    # Its agent hosts the rendezvous store as it arrives: wait for that before the other node starts.
    while True:
        assert late.poll() is None, late.communicate()[0]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    early = node("first-address", "127.0.0.1")

    outputs = [agent.communicate(timeout=600)[0] for agent in (late, early)]
    ranks = sorted(line for text in outputs for line in text.splitlines() if line.startswith("rank of "))
    assert ranks == ["rank of first-address 0", "rank of second-address 1"], "\n".join(outputs)
