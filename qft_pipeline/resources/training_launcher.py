"""The training launcher resource: runs the torchrun command qft_core builds on the nodes training.launcher names
(this machine, a Slurm allocation, Kubernetes pods) under Dagster Pipes, so rank 0's progress reaches the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from qft_core.config import QftConfig
from qft_core.train.job import TrainingJob
from qft_core.train.launch import NODE_ENVIRONMENT, torchrun_command, worker_environment
from qft_core.train.launchers import KubernetesLaunch, kubernetes_launch, slurm_command

PIPES_ENTRY = "qft_pipeline.pipes_entry"
# Rank 0 of a Slurm launch runs on some node of the allocation: it writes its Pipes messages to this file of the
# (shared) run folder, and the context reaches it in the environment srun passes on.
SLURM_MESSAGES_FILE = "pipes_messages.jsonl"


class TrainingLauncher(dg.ConfigurableResource):
    """Starts a prepared training job on every node and waits for it; the nodes are the config's
    (training.launcher), the Kubernetes credentials this resource's."""

    kubeconfig_file: Optional[str] = Field(None, description="kubeconfig for the kubernetes launcher; empty: default")
    kube_context: Optional[str] = Field(None, description="kubeconfig context; empty: the file's current one")

    def launch(self, context: dg.AssetExecutionContext, config: QftConfig, job_path: Path) -> None:
        job = TrainingJob.read(job_path)
        restarts = job.training.max_restarts
        if config.training.launcher == "local":
            command = torchrun_command(job_path, job.plan, PIPES_ENTRY, restarts)
            dg.PipesSubprocessClient().run(context=context, command=command, env=worker_environment(job.plan))
        elif config.training.launcher == "slurm":
            client = dg.PipesSubprocessClient(
                context_injector=dg.PipesEnvContextInjector(),
                message_reader=dg.PipesFileMessageReader(str(Path(job.output_dir) / SLURM_MESSAGES_FILE)),
            )
            command = slurm_command(config, job.plan, job_path, PIPES_ENTRY, restarts)
            client.run(context=context, command=command, env=NODE_ENVIRONMENT)
        else:
            name = f"qft-{context.run_id[:8]}-{context.retry_number}"
            self._run_pods(context, kubernetes_launch(config, job.plan, job_path, PIPES_ENTRY, restarts, name))

    def _run_pods(self, context: dg.AssetExecutionContext, launch: KubernetesLaunch) -> None:
        """Create the service and the pods of nodes 1…N-1, run node 0's pod through PipesK8sClient (it streams
        that pod's logs and Pipes messages), then delete them all, whatever happened."""
        import kubernetes
        from dagster_k8s import PipesK8sClient

        if os.getenv("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config(config_file=self.kubeconfig_file, context=self.kube_context)
        core = kubernetes.client.CoreV1Api()
        node0, *others = launch.pods
        core.create_namespaced_service(launch.namespace, launch.service)
        created: list[str] = []
        try:
            for pod in others:
                core.create_namespaced_pod(launch.namespace, pod)
                created.append(pod["metadata"]["name"])
            PipesK8sClient(kubeconfig_file=self.kubeconfig_file, kube_context=self.kube_context).run(
                context=context,
                namespace=launch.namespace,
                base_pod_meta=node0["metadata"],
                base_pod_spec=node0["spec"],
            )
        finally:
            for name in created:
                core.delete_namespaced_pod(name, launch.namespace)
            core.delete_namespaced_service(launch.service["metadata"]["name"], launch.namespace)
