"""lora_checkpoint through the launcher resource: two nodes asked of the local launcher fail the step at once, in
one line, without a retry and before any data is tokenized (instead of node 0 waiting for peers for ever)."""

from pathlib import Path

import yaml

from qft_core.train.job import JOB_FILE
from qft_pipeline.instance import project_instance
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
