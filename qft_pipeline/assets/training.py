"""Training assets: hardware profile → training plan → LoRA checkpoint (torchrun under Dagster Pipes)."""

import json

import dagster as dg

from qft_core.data.split import SplitResult
from qft_core.diagnose.curves import plot_loss_curve, read_metrics
from qft_core.diagnose.findings import monitor_records
from qft_core.diagnose.report import write_monitor_report
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.model.shape import ModelShape
from qft_core.train.checkpoint import list_checkpoints
from qft_core.train.engine import CHECKPOINTS_DIR
from qft_core.train.hardware import HardwareProfile, profile_hardware
from qft_core.train.job import SUMMARY_FILE, TrainingSummary
from qft_core.train.launch import RESUME_KEY_FILE, prepare_run, resumable_by, training_key
from qft_core.train.launchers import LaunchRefused, check_launch
from qft_core.train.plan import TrainingPlan, plan_for
from qft_pipeline.artifacts import resumable_run_folder
from qft_pipeline.assets.data import term_balanced_splits
from qft_pipeline.resources.training_launcher import TrainingLauncher
from qft_pipeline.metadata import image, stand_in_metadata
from qft_pipeline.resources import QftSettings

GROUP = "training"
# Only one training holds the accelerators at a time (set the pool's limit with `dagster instance concurrency`).
TRAINING_POOL = "training_gpus"
# Dagster attempts of lora_checkpoint after a failed one, once torchrun has spent training.max_restarts. Fixed
# here because a retry policy belongs to the asset definition, not to run config. Each retry resumes from the
# newest checkpoint and so repeats at most checkpoint_every steps; two ride out a killed or lost worker twice in
# a run, while a failure that repeats on every attempt (bad data, a bug) still fails the run soon.
TRAINING_RETRIES = 2
TRAINING_RETRY_DELAY_S = 5
FINDINGS_METADATA = "findings"


@dg.asset(group_name=GROUP, kinds={"nvml"})
def hardware_profile() -> dg.Output[HardwareProfile]:
    """GPUs, interconnect, NUMA affinity, CPU cores and RAM of the machine that will train."""
    profile = profile_hardware()
    return dg.Output(
        profile,
        metadata={
            "gpus": len(profile.gpus),
            "interconnect": profile.interconnect,
            "profile": dg.MetadataValue.md(profile.to_markdown()),
        },
    )


@dg.asset(group_name=GROUP, deps=[term_balanced_splits])
def training_plan(qft: QftSettings, hardware_profile: HardwareProfile) -> dg.Output[TrainingPlan]:
    """Strategy, micro-batch, accumulation, checkpointing and LoRA size that fit this hardware, each explained."""
    config = qft.load()
    plan = plan_for(config, ensure_model_dir(resolve_model(config.model, config.paths)), hardware_profile)
    return dg.Output(
        plan,
        metadata={
            "strategy": plan.strategy,
            "world_size": plan.world_size,
            "micro_batch_size": plan.micro_batch_size,
            "grad_accum_steps": plan.grad_accum_steps,
            "checkpoint_layers": plan.checkpoint_layers,
            "fits": plan.fits,
            "plan": dg.MetadataValue.md(plan.to_markdown()),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    pool=TRAINING_POOL,
    retry_policy=dg.RetryPolicy(max_retries=TRAINING_RETRIES, delay=TRAINING_RETRY_DELAY_S),
)
def lora_checkpoint(
    context: dg.AssetExecutionContext,
    qft: QftSettings,
    training_launcher: TrainingLauncher,
    training_plan: TrainingPlan,
    term_balanced_splits: SplitResult,
) -> dg.MaterializeResult:
    """The LoRA adapter trained by qft's engine under torchrun, on the nodes training.launcher starts; rank 0
    streams progress through Dagster Pipes.

    A retry, a run re-executed from this asset's failure, or a new run of the same training (model, settings,
    plan and examples) that a failure or a kill interrupted, trains in that attempt's folder: the engine resumes
    from its newest valid checkpoint instead of starting again.
    """
    config = qft.load()
    plan, splits = training_plan, term_balanced_splits.splits()
    key = training_key(config, splits, plan)
    run_dir = resumable_run_folder(context, config, resumable=lambda folder: resumable_by(folder, key))
    try:
        check_launch(config, plan, run_dir)
    except LaunchRefused as refusal:  # a setting to change: retrying would only refuse again
        raise dg.Failure(str(refusal), allow_retries=False) from None
    earlier = list_checkpoints(run_dir / CHECKPOINTS_DIR)
    if earlier:
        context.log.info(
            f"attempt {context.retry_number + 1}: {len(earlier)} checkpoint(s) of an earlier attempt in "
            f"{run_dir / CHECKPOINTS_DIR} (newest {earlier[0].name}); training resumes from the newest valid one"
        )
    job_path = prepare_run(config, splits, run_dir, plan)
    (run_dir / RESUME_KEY_FILE).write_text(key, encoding="utf-8")
    training_launcher.launch(context, config, job_path)
    summary = TrainingSummary.read(run_dir / SUMMARY_FILE)
    # Read once: the curve, the findings and their report all draw on these records.
    records = read_metrics(summary.metrics_file)
    curve = plot_loss_curve(records, run_dir / "loss_curve.png")
    spec = resolve_model(config.model, config.paths)
    vocab = ModelShape.from_pretrained_dir(ensure_model_dir(spec), config.model).vocab
    monitor = monitor_records(
        records, summary.steps, summary=summary, source=summary.metrics_file, vocab_size=vocab
    )
    monitor_markdown, monitor_charts = write_monitor_report(monitor, run_dir, records)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(summary.adapter_dir),
            "first_train_loss": monitor.stats.first_loss,
            "final_train_loss": summary.final_train_loss,
            "final_val_loss": summary.final_val_loss,
            "best_val_loss": summary.best_val_loss,
            "first_val_loss": monitor.stats.first_val_loss,
            "steps": summary.steps,
            "tokens_per_s": summary.tokens_per_s,
            "skipped_steps": summary.skipped_steps,
            "restarts": summary.restarts,
            "loss_curve": image(curve, "loss curve"),
            "training_status": monitor.status,
            "base_model": spec.name,
            **stand_in_metadata(spec.name),
            "monitor": dg.MetadataValue.md(monitor_markdown.read_text(encoding="utf-8")),
            **{f"chart_{chart.stem}": image(chart, chart.stem) for chart in monitor_charts},
            # The findings themselves, for the advice that waits for the evaluation (training_advice).
            FINDINGS_METADATA: dg.MetadataValue.json(monitor.model_dump(mode="json")),
            "summary": dg.MetadataValue.json(json.loads(summary.model_dump_json())),
        }
    )
