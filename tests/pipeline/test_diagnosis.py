"""training_advice runs after the evaluation, so its evaluation-based rules fire in the pipeline: here a fine-tuned
model that leaves most of its reasoning unclosed gets the advice to take the reasoning out of the loss."""

import json
from pathlib import Path

import dagster as dg
import yaml

from qft_core.evaluate.report import EvaluationReport, read_report
from qft_core.diagnose.findings import monitor_records
from qft_pipeline.artifacts import run_folder
from qft_pipeline.assets.diagnosis import training_advice
from qft_pipeline.assets.training import FINDINGS_METADATA, hardware_profile, training_plan
from qft_pipeline.resources import QftSettings, resources

# A run that finished its 40 steps with the loss still falling evenly: the training alone asks for more epochs.
STEPS = [
    {"step": n, "epoch": n / 20, "loss": 3.0 - 0.04 * (n - 1), "lr": 1e-3, "grad_norm": 1.0, "tokens": 1000,
     "target_tokens": 600, "tokens_per_s": 500.0, "step_time_s": 2.0, "comm_s": 0.0, "memory_gib": 1.0,
     "micro_batch_size": 2, "grad_accum_steps": 2, "skipped": False}
    for n in range(1, 41)
]
# The evaluation: the fine-tuned model closes its reasoning itself in 20 % of the answers, the base model in 95 %.
REPORT = {
    "primary_set": "test",
    "headline": {},
    "sets": {
        "test": {
            "metrics": {"base": {"rougeL_char_f1": {"mean": 0.30}}, "finetuned": {"rougeL_char_f1": {"mean": 0.35}}},
            "generation": {"base": {"closed_by_model_rate": 0.95}, "finetuned": {"closed_by_model_rate": 0.2}},
        }
    },
}


@dg.asset(name="lora_checkpoint")
def checkpoint_stand_in() -> dg.MaterializeResult:
    findings = monitor_records(STEPS, total_steps=40)
    return dg.MaterializeResult(
        metadata={"path": "adapter", FINDINGS_METADATA: dg.MetadataValue.json(findings.model_dump(mode="json"))}
    )


@dg.asset(name="evaluation_report")
def report_stand_in(context: dg.AssetExecutionContext, qft: QftSettings) -> EvaluationReport:
    folder = run_folder(context, qft.load())
    (folder / "report.json").write_text(json.dumps(REPORT), encoding="utf-8")
    return read_report(folder)


def test_poor_fine_tuned_reasoning_in_the_evaluation_advises_reasoning_out_of_the_loss(tmp_path: Path) -> None:
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump({"paths": {"artifacts_dir": str(tmp_path / "artifacts")}}), encoding="utf-8")

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [hardware_profile, training_plan, checkpoint_stand_in, report_stand_in, training_advice],
            instance=instance,
            resources=resources(QftSettings(config_file=str(config_file))),
        )

    assert result.success
    (materialization,) = result.asset_materializations_for_node("training_advice")
    assert materialization.metadata["settings"].value == "training.epochs, training.loss_on_reasoning"
    change = json.loads(Path(materialization.metadata["path"].value).read_text(encoding="utf-8"))[1]
    assert (change["setting"], change["current"], change["proposed"]) == ("training.loss_on_reasoning", True, False)
    assert change["evidence"] == {"closed_by_model_rate_fine_tuned": 0.2, "closed_by_model_rate_base": 0.95}
