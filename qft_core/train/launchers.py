"""Starting torchrun on every node of a training: what each launcher (training.launcher) runs, and the checks that
refuse a launch which could only hang, before anything starts: several nodes from the local launcher, or a run or
model folder the other nodes cannot see."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qft_core.config import QftConfig
from qft_core.model.registry import resolve_model
from qft_core.train.launch import NODE_ENVIRONMENT, torchrun_command
from qft_core.train.plan import TrainingPlan, rendezvous_args

# Folders that each machine has its own of, whatever is configured: a run folder there is invisible to the others.
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# The shell variable the Slurm launcher sets, on every node, to the allocation's first node (the rendezvous host).
SLURM_FIRST_NODE = "QFT_FIRST_NODE"
# The pod label that ties a launch's pods to its headless service.
LAUNCH_LABEL = "qft/launch"


class LaunchRefused(ValueError):
    """A launch that could not work as configured; the one-line message names the setting at fault."""


def check_launch(config: QftConfig, plan: TrainingPlan, run_dir: Path) -> None:
    """Refuse, before anything is tokenized or started, a launch that would hang or fail on the other nodes: the
    local launcher with several nodes; for slurm and kubernetes, a missing setting or a run or model folder
    outside training.shared_dir."""
    training = config.training
    if training.launcher == "local":
        if plan.nnodes > 1:
            raise LaunchRefused(
                f"training.nnodes: {plan.nnodes} nodes, but training.launcher 'local' starts torchrun on this machine"
                " only and node 0 would wait for peers nothing starts; set training.launcher to slurm or kubernetes"
            )
        return
    if training.launcher == "kubernetes":
        for key in ("image", "volume_claim"):
            if getattr(config.kubernetes, key) is None:
                raise LaunchRefused(f"kubernetes.{key}: not set; the kubernetes launcher needs it for every pod")
    check_shared_filesystem(config, {"paths.artifacts_dir": run_dir, _model_setting(config): _model_dir(config)})


def check_shared_filesystem(config: QftConfig, folders: Mapping[str, Path]) -> None:
    """Every folder (keyed by the setting that places it) must lie inside training.shared_dir, which must not be a
    node-local folder: each node reads the job, data and model there, and rank 0 writes the checkpoints."""
    launcher = config.training.launcher
    if config.training.shared_dir is None:
        raise LaunchRefused(
            f"training.shared_dir: not set; the {launcher} launcher needs a folder every node mounts at the same path,"
            " holding the run and model folders"
        )
    shared = Path(config.training.shared_dir).expanduser().resolve()
    for local in NODE_LOCAL_DIRS:
        if shared.is_relative_to(Path(local).resolve()):
            raise LaunchRefused(
                f"training.shared_dir: {shared} is under {local}, which every node has its own of; the {launcher}"
                " launcher needs a folder all nodes share"
            )
    for setting, folder in folders.items():
        folder = Path(folder).expanduser().resolve()
        if not folder.is_relative_to(shared):
            raise LaunchRefused(
                f"{setting}: {folder} is outside training.shared_dir ({shared}); the other nodes of the {launcher}"
                " launch would not see it"
            )


def _model_dir(config: QftConfig) -> Path:
    return resolve_model(config.model, config.paths).local_dir


def _model_setting(config: QftConfig) -> str:
    """The setting that places the model folder."""
    if config.model.path is not None:
        return "model.path"
    if Path(config.model.name).expanduser().is_dir():
        return "model.name"
    return "paths.model_cache_dir"


def slurm_command(
    config: QftConfig, plan: TrainingPlan, job_path: Path, entry_module: str, max_restarts: int
) -> list[str]:
    """srun starting one torchrun per node of the allocation (srun makes one when it runs outside any), each
    meeting the others at the allocation's first node, found on the node itself with scontrol."""
    slurm = config.slurm
    options = [f"--nodes={plan.nnodes}", f"--ntasks={plan.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if plan.device == "cuda":
        options.append(f"--gpus-per-node={plan.nproc_per_node}")
    options += [f"--{key}={value}" for key, value in (
        ("partition", slurm.partition), ("account", slurm.account), ("time", slurm.time)
    ) if value is not None]  # fmt: skip
    endpoint = f"${SLURM_FIRST_NODE}:{config.training.master_port}"
    node = torchrun_command(
        job_path, plan, entry_module, max_restarts,
        rendezvous=rendezvous_args(plan.nnodes, plan.nproc_per_node, endpoint), python=slurm.python,
    )  # fmt: skip
    # Double quotes let the node's shell expand the first node into the endpoint; every other word is quoted whole.
    words = [f'"{word}"' if endpoint in word else shlex.quote(word) for word in node]
    first_node = f'{SLURM_FIRST_NODE}=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    script = f"{first_node} && exec {' '.join(words)}"
    return ["srun", *options, *slurm.extra_args, "bash", "-c", script]


@dataclass(frozen=True)
class KubernetesLaunch:
    """A kubernetes launch: the headless service that gives each pod a DNS name, and one pod per node (node 0
    first: it hosts the rendezvous and global rank 0, the one that reports through Dagster Pipes)."""

    namespace: str
    service: dict[str, Any]
    pods: list[dict[str, Any]]


def kubernetes_launch(
    config: QftConfig, plan: TrainingPlan, job_path: Path, entry_module: str, max_restarts: int, name: str
) -> KubernetesLaunch:
    """The manifests of a launch called `name` (a DNS label, unique to the attempt): pod i is reachable as
    node-i.NAME, and runs torchrun with that as its --local-addr. The rendezvous numbers nodes in the order of
    those addresses, and node-0 sorts before every node-K, so global rank 0 is on pod 0."""
    kubernetes, port = config.kubernetes, config.training.master_port
    labels = {"app.kubernetes.io/name": "qft", LAUNCH_LABEL: name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": kubernetes.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {LAUNCH_LABEL: name},
            # Pods are found before they report ready: node 0's rendezvous is reached while the others start.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": port}],
        },
    }
    rendezvous = rendezvous_args(plan.nnodes, plan.nproc_per_node, f"node-0.{name}:{port}")
    limits = {
        key: value
        for key, value in (("cpu", kubernetes.cpu), ("memory", kubernetes.memory)) if value is not None
    }  # fmt: skip
    if plan.device == "cuda":
        limits["nvidia.com/gpu"] = str(plan.nproc_per_node)
    pods = []
    for node in range(plan.nnodes):
        command = torchrun_command(
            job_path, plan, entry_module, max_restarts,
            rendezvous=[*rendezvous, f"--local-addr=node-{node}.{name}"], python=kubernetes.python,
        )  # fmt: skip
        container = {
            "name": "torchrun",
            "image": kubernetes.image,
            "command": command,
            "env": [{"name": key, "value": value} for key, value in NODE_ENVIRONMENT.items()],
            "resources": {"requests": dict(limits), "limits": dict(limits)},
            "volumeMounts": [
                {"name": "shared", "mountPath": config.training.shared_dir},
                # Containers get 64 MiB of /dev/shm; the gloo and NCCL transports and the data loader need more.
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
        }
        pods.append({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-node-{node}", "namespace": kubernetes.namespace, "labels": labels},
            "spec": {
                "hostname": f"node-{node}",
                "subdomain": name,
                # torchrun restarts failed workers inside the pod; a lost pod fails the launch (Dagster retries it).
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [
                    {"name": "shared", "persistentVolumeClaim": {"claimName": kubernetes.volume_claim}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                ],
            },
        })  # fmt: skip
    return KubernetesLaunch(namespace=kubernetes.namespace, service=service, pods=pods)
