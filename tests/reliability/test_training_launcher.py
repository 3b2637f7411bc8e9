"""lora_checkpoint through the launcher resource: two nodes asked of the local launcher fail the step at once, in
one line, without a retry and before any data is tokenized (instead of node 0 waiting for peers for ever); the
slurm launcher trains on two nodes, with rank 0's progress reaching Dagster through the shared run folder."""

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest
import yaml

from qft_core.config import REPO_ROOT
from qft_core.train.job import JOB_FILE, SUMMARY_FILE, TrainingSummary
from qft_pipeline.instance import project_instance
from qft_pipeline.resources.training_launcher import SLURM_MESSAGES_FILE
from qft_pipeline.runner import materialize_graph
from tests.reliability.conftest import write_config
from tests.reliability.test_concurrent_runs import write_pairs

REFUSAL = (
    "training.nnodes: 2 nodes, but training.launcher 'local' starts torchrun on this machine only and node 0 would"
    " wait for peers nothing starts; set training.launcher to slurm or kubernetes"
)


def test_two_nodes_from_the_local_launcher_fail_lora_checkpoint_in_one_line_without_retrying(
    tmp_path: Path, dagster_home: Path
) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    write_pairs(corpus, "launcher", pairs=24)
    config_file = write_config(tmp_path / "qft.yaml", corpus, artifacts)
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    # A reachable-looking rendezvous address, so the plan is made and the launch is what refuses.
    config["training"] = {"nnodes": 2, "master_addr": "10.0.0.1"}
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    outcome = materialize_graph(config_file=str(config_file), selection="+key:lora_checkpoint")

    assert not outcome.success
    (failure,) = outcome.failures
    assert failure.startswith("lora_checkpoint: ") and failure.endswith(REFUSAL) and "\n" not in failure
    events = [
        record.dagster_event.event_type_value
        for record in project_instance().all_logs(outcome.run_ids[0])
        if record.step_key == "lora_checkpoint" and record.dagster_event
    ]
    assert "STEP_UP_FOR_RETRY" not in events and events[-1] == "STEP_FAILURE"
    assert list(artifacts.rglob(JOB_FILE)) == []


# Stand-ins for Slurm's commands on a machine without Slurm: srun runs its task once per requested node, all here,
# as Slurm would on each node of the allocation; scontrol names this machine as every node.
FAKE_SRUN = """#!/bin/bash
nodes=1
while [[ "$1" == --* ]]; do [[ "$1" == --nodes=* ]] && nodes="${1#--nodes=}"; shift; done
pids=()
for ((node = 0; node < nodes; node++)); do SLURM_NODEID=$node SLURM_JOB_NODELIST=here "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
FAKE_SCONTROL = '#!/bin/sh\n[ "$*" = "show hostnames here" ] && echo 127.0.0.1\n'


@pytest.fixture
def shared_dir():
    """A folder outside /tmp standing for the cluster's shared filesystem (tmp_path lies under /tmp, refused)."""
    folder = REPO_ROOT / ".cache" / f"shared-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.slow
def test_the_slurm_launcher_trains_on_two_nodes_and_streams_rank_0s_progress_through_the_shared_folder(
    tmp_path: Path, dagster_home: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(script, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    corpus = tmp_path / "corpus"
    write_pairs(corpus, "slurm", pairs=24)
    config_file = write_config(tmp_path / "qft.yaml", corpus, shared_dir / "artifacts")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["paths"]["model_cache_dir"] = str(shared_dir / "models")
    config["model"] = {"max_length": 256}
    config["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    config["training"] = {
        "nnodes": 2, "launcher": "slurm", "shared_dir": str(shared_dir), "master_port": port,
        "max_steps": 4, "checkpoint_every": 2, "eval_every": 2, "global_batch_size": 2,
    }  # fmt: skip
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    outcome = materialize_graph(config_file=str(config_file), selection="+key:lora_checkpoint")

    assert outcome.success, outcome.failures
    training_dir = Path(outcome.artifacts["lora_checkpoint"]).parent
    summary = TrainingSummary.read(training_dir / SUMMARY_FILE)
    assert (summary.world_size, summary.steps) == (2, 4)
    messages = [
        record.user_message
        for record in project_instance().all_logs(outcome.run_ids[0])
        if record.step_key == "lora_checkpoint" and not record.dagster_event
    ]
    # The engine's own lines, written by rank 0 to the message file and relayed by Dagster.
    assert "checkpoint step-00000002 written" in messages
    assert not (training_dir / SLURM_MESSAGES_FILE).exists()  # the reader removes it when the session ends
