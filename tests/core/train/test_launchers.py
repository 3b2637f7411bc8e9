"""The launchers' commands and manifests, exactly, and the refusals before a launch: several nodes from the
local launcher, missing settings, and run or model folders the other nodes cannot see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qft_core.config import REPO_ROOT, QftConfig
from qft_core.train.launchers import LaunchRefused, check_launch, kubernetes_launch, slurm_command
from tests.core.train.tiny_run import cpu_plan

JOB = Path("/shared/qft/runs/r1/lora_checkpoint/job.json")
RUN_DIR = JOB.parent
ENTRY = "qft_pipeline.pipes_entry"
# Two nodes of 8 GPUs (4 for Kubernetes below): what the plan says on such machines.
TWO_GPU_NODES = cpu_plan(world_size=16).model_copy(
    update={"nnodes": 2, "nproc_per_node": 8, "device": "cuda", "backend": "nccl"}
)


def cluster_config(launcher: str, **sections: dict) -> QftConfig:
    """Two nodes on a cluster whose shared folder /shared holds the artifacts and the model cache."""
    values = {
        "paths": {"artifacts_dir": "/shared/qft", "model_cache_dir": "/shared/models"},
        "training": {"nnodes": 2, "launcher": launcher, "shared_dir": "/shared"},
        "kubernetes": {"image": "registry.example/qft:1.0", "volume_claim": "qft-shared"},
    }
    for section, settings in sections.items():
        values[section] = {**values.get(section, {}), **settings}
    return QftConfig.model_validate(values)


SLURM = {"partition": "gpu", "account": "crypto", "time": "04:00:00", "extra_args": ["--qos=high"],
         "python": "/shared/venv/bin/python"}  # fmt: skip


def test_slurm_runs_one_torchrun_per_node_meeting_at_the_allocations_first_node() -> None:
    command = slurm_command(cluster_config("slurm", slurm=SLURM), TWO_GPU_NODES, JOB, ENTRY, max_restarts=1)

    assert command == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--gpus-per-node=8",
        "--partition=gpu", "--account=crypto", "--time=04:00:00", "--qos=high", "bash", "-c",
        'QFT_FIRST_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) && exec /shared/venv/bin/python'
        ' -m qft_core.train.lifeline --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d'
        ' "--rdzv-endpoint=$QFT_FIRST_NODE:29511" --rdzv-id=qft --max-restarts=1 -m qft_pipeline.pipes_entry'
        " --job /shared/qft/runs/r1/lora_checkpoint/job.json",
    ]  # fmt: skip


def test_slurm_leaves_unset_options_to_slurm_and_asks_no_gpus_for_a_cpu_plan() -> None:
    plan = cpu_plan(world_size=4).model_copy(update={"nnodes": 2, "nproc_per_node": 2})
    command = slurm_command(cluster_config("slurm"), plan, JOB, ENTRY, max_restarts=0)

    assert command[:7] == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"
    ]  # fmt: skip
    assert f"exec {sys.executable} -m qft_core.train.lifeline --nnodes=2 --nproc-per-node=2 " in command[7]


def test_the_slurm_script_puts_the_first_node_of_the_allocation_in_the_endpoint(tmp_path: Path) -> None:
    """The script as bash runs it on a node, with scontrol standing in for Slurm's and `echo` for Python."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    settings = {**SLURM, "python": "echo"}
    *_, script = slurm_command(cluster_config("slurm", slurm=settings), TWO_GPU_NODES, JOB, ENTRY, max_restarts=1)

    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    echoed = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout

    assert echoed == (
        "-m qft_core.train.lifeline --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu07:29511"
        " --rdzv-id=qft --max-restarts=1 -m qft_pipeline.pipes_entry"
        " --job /shared/qft/runs/r1/lora_checkpoint/job.json\n"
    )


def _pod(node: int, name: str) -> dict:
    labels = {"app.kubernetes.io/name": "qft", "qft/launch": name}
    gpus = {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-node-{node}", "namespace": "ml", "labels": labels},
        "spec": {
            "hostname": f"node-{node}",
            "subdomain": name,
            "restartPolicy": "Never",
            "containers": [{
                "name": "torchrun",
                "image": "registry.example/qft:1.0",
                "command": [
                    "python", "-m", "qft_core.train.lifeline", "--nnodes=2", "--nproc-per-node=4",
                    "--rdzv-backend=c10d", f"--rdzv-endpoint=node-0.{name}:29511", "--rdzv-id=qft",
                    f"--local-addr=node-{node}.{name}", "--max-restarts=2", "-m", "qft_pipeline.pipes_entry",
                    "--job", "/shared/qft/runs/r1/lora_checkpoint/job.json",
                ],
                "env": [
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
                ],
                "resources": {"requests": gpus, "limits": gpus},
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}, {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [
                {"name": "shared", "persistentVolumeClaim": {"claimName": "qft-shared"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }  # fmt: skip


def kubernetes_config() -> QftConfig:
    return cluster_config("kubernetes", kubernetes={"namespace": "ml", "cpu": "16", "memory": "128Gi"})


FOUR_GPU_NODES = TWO_GPU_NODES.model_copy(update={"nproc_per_node": 4, "world_size": 8})


def test_kubernetes_runs_one_pod_per_node_behind_a_headless_service() -> None:
    launch = kubernetes_launch(kubernetes_config(), FOUR_GPU_NODES, JOB, ENTRY, max_restarts=2, name="qft-1a2b3c4d-0")

    assert launch.namespace == "ml"
    assert launch.service == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "qft-1a2b3c4d-0",
            "namespace": "ml",
            "labels": {"app.kubernetes.io/name": "qft", "qft/launch": "qft-1a2b3c4d-0"},
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"qft/launch": "qft-1a2b3c4d-0"},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": 29511}],
        },
    }
    assert launch.pods == [_pod(0, "qft-1a2b3c4d-0"), _pod(1, "qft-1a2b3c4d-0")]


def test_node_0s_manifest_is_a_pod_pipes_k8s_client_accepts() -> None:
    from dagster_k8s.pipes import build_pod_body

    node0 = kubernetes_launch(kubernetes_config(), FOUR_GPU_NODES, JOB, ENTRY, max_restarts=2, name="qft-a-0").pods[0]
    pod = build_pod_body(
        pod_name="dagster-run-lora-checkpoint",
        image=None,
        command=None,
        env_vars={"DAGSTER_PIPES_CONTEXT": "context", "DAGSTER_PIPES_MESSAGES": "messages"},
        base_pod_meta=node0["metadata"],
        base_pod_spec=node0["spec"],
    )

    assert (pod.metadata.name, pod.spec.hostname, pod.spec.subdomain) == (
        "dagster-run-lora-checkpoint", "node-0", "qft-a-0"
    )  # fmt: skip
    (container,) = pod.spec.containers
    assert container.command == node0["spec"]["containers"][0]["command"]
    assert [(variable.name, variable.value) for variable in container.env] == [
        ("PYTHONUNBUFFERED", "1"), ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),
        ("DAGSTER_PIPES_CONTEXT", "context"), ("DAGSTER_PIPES_MESSAGES", "messages"),
    ]  # fmt: skip
    assert container.resources.limits == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}
    assert [(mount.name, mount.mount_path) for mount in container.volume_mounts] == [
        ("shared", "/shared"), ("dshm", "/dev/shm")
    ]  # fmt: skip
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "qft-shared"


# --- refusals ---------------------------------------------------------------------------------------------------


def _refusal(config: QftConfig, run_dir: Path = RUN_DIR, plan=TWO_GPU_NODES) -> str:
    with pytest.raises(LaunchRefused) as refusal:
        check_launch(config, plan, run_dir)
    message = str(refusal.value)
    assert "\n" not in message
    return message


def test_the_local_launcher_refuses_several_nodes_instead_of_waiting_for_peers_nothing_starts() -> None:
    config = QftConfig.model_validate({"training": {"nnodes": 2, "master_addr": "10.0.0.1"}})

    assert _refusal(config) == (
        "training.nnodes: 2 nodes, but training.launcher 'local' starts torchrun on this machine only and node 0 would"
        " wait for peers nothing starts; set training.launcher to slurm or kubernetes"
    )
    check_launch(QftConfig(), cpu_plan(), RUN_DIR)  # one node: nothing to refuse


@pytest.mark.parametrize("launcher", ["slurm", "kubernetes"])
def test_a_cluster_launch_with_everything_shared_is_accepted(launcher: str) -> None:
    check_launch(cluster_config(launcher), TWO_GPU_NODES, RUN_DIR)


def test_a_cluster_launch_needs_a_shared_folder() -> None:
    config = cluster_config("slurm", training={"shared_dir": None})

    assert _refusal(config) == (
        "training.shared_dir: not set; the slurm launcher needs a folder every node mounts at the same path, holding"
        " the run and model folders"
    )


def test_a_shared_folder_under_tmp_is_refused_as_node_local() -> None:
    config = cluster_config("kubernetes", training={"shared_dir": "/tmp/shared"})

    assert _refusal(config, run_dir=Path("/tmp/shared/runs/r1")) == (
        "training.shared_dir: /tmp/shared is under /tmp, which every node has its own of; the kubernetes launcher"
        " needs a folder all nodes share"
    )


def test_a_run_folder_in_tmp_is_refused_naming_the_artifacts_setting(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1" / "lora_checkpoint"

    assert _refusal(cluster_config("slurm"), run_dir=run_dir) == (
        f"paths.artifacts_dir: {run_dir} is outside training.shared_dir (/shared); the other nodes of the slurm"
        " launch would not see it"
    )


def test_a_model_outside_the_shared_folder_is_refused_naming_the_setting_that_places_it(tmp_path: Path) -> None:
    cache = cluster_config("slurm", paths={"model_cache_dir": ".cache/qft/models"})
    message = _refusal(cache)
    assert message.startswith(f"paths.model_cache_dir: {REPO_ROOT / '.cache/qft/models'}/qwen3-tiny-seed0-")
    assert message.endswith(
        " is outside training.shared_dir (/shared); the other nodes of the slurm launch would not see it"
    )
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    local = cluster_config("slurm", model={"name": str(tmp_path)})
    assert _refusal(local).startswith(f"model.name: {tmp_path} is outside training.shared_dir (/shared)")


def test_the_kubernetes_launcher_needs_an_image_and_a_volume_claim() -> None:
    assert _refusal(cluster_config("kubernetes", kubernetes={"image": None})) == (
        "kubernetes.image: not set; the kubernetes launcher needs it for every pod"
    )
    assert _refusal(cluster_config("kubernetes", kubernetes={"volume_claim": None})) == (
        "kubernetes.volume_claim: not set; the kubernetes launcher needs it for every pod"
    )
