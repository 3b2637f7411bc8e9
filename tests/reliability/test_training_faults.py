"""Training faults: a checkpoint write that fills the disk part-way leaves the previous checkpoint intact and
resumable, and a Dagster retry of `lora_checkpoint`, or a run re-executed from its failure, resumes from the
checkpoint the failed attempt wrote. (A rank SIGKILLed under torchrun and a truncated newest checkpoint are
tested in tests/core/train; docs/reliability.md lists every case.)"""

import errno
import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from qft_core.config import ModelConfig, PathsConfig, QftConfig
from qft_core.model.peft_files import ADAPTER_WEIGHTS
from qft_core.model.registry import load_model, resolve_model
from qft_core.train import checkpoint as ckpt
from qft_core.train import engine as engine_module
from qft_core.train import faults
from qft_core.train.engine import CHECKPOINTS_DIR, train
from qft_core.train.job import SUMMARY_FILE, TrainingJob, TrainingSummary
from qft_core.train.metrics_log import METRICS_FILE, MetricsLog
from qft_pipeline.artifacts import resumable_run_folder
from qft_pipeline.definitions import defs
from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import MAIN_JOB
from qft_pipeline.runner import materialize_graph
from tests.core.train.tiny_run import cpu_plan, make_job, write_synthetic_split, write_tiny_qwen3
from tests.reliability.test_concurrent_runs import write_pairs

# The step the first attempt is killed at: after checkpoint step 2, before step 4 (the last) is reached.
KILL_AT_STEP = 3
TRAINING = {"max_steps": 4, "checkpoint_every": 2, "eval_every": 2, "global_batch_size": 2, "max_restarts": 0}
RETRIES_OFF = {"execution": {"config": {"in_process": {"retries": {"disabled": {}}}}}}


class FullDisk:
    """`os.write` on a disk that fills up: files for which `fills(path)` holds get `room` bytes in all, the last
    write short, then ENOSPC; every other write goes through."""

    def __init__(self, fills: Callable[[Path], bool], room: int) -> None:
        self.fills, self.room = fills, room
        self.written = 0
        self.refused: list[Path] = []
        self._write = os.write

    def __call__(self, descriptor: int, data) -> int:
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        if not self.fills(path):
            return self._write(descriptor, data)
        if self.written >= self.room:
            self.refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._write(descriptor, memoryview(data)[: self.room - self.written])
        self.written += written
        return written


def staged_file(step: int, name: str) -> Callable[[Path], bool]:
    return lambda path: path.as_posix().endswith(f"/.staging-step-{step:08d}/{name}")


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# --- a full disk while a checkpoint is written ------------------------------------------------------------------


def _save_checkpoint(root: Path, step: int, optimizer_state: dict) -> Path:
    """What the engine writes, in its order: each rank's RNG, the adapter, optimizer, trainer state, then the seal."""
    staging = ckpt.start_staging(root, step)
    ckpt.save_rng(staging, rank=0)
    (staging / ADAPTER_WEIGHTS).write_bytes(bytes(range(256)) * 8)
    ckpt.save_optimizer_state(staging, optimizer_state, {"last_epoch": step})
    ckpt.write_trainer_state(staging, {"step": step, "tokens": 100 * step})
    return ckpt.seal(staging, keep_last=1)


@pytest.mark.parametrize("name", ["rng/rank-00000.pt", ckpt.OPTIMIZER_STATE, ckpt.TRAINER_STATE, ckpt.MANIFEST])
def test_a_disk_full_part_way_through_any_checkpoint_file_keeps_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    optimizer_state = {"state": {0: {"exp_avg": torch.arange(64.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    previous = _save_checkpoint(tmp_path, 2, optimizer_state)
    before = file_bytes(previous)
    disk = FullDisk(staged_file(4, name), room=8)

    monkeypatch.setattr(os, "write", disk)
    with pytest.raises(ckpt.CheckpointError) as failure:
        _save_checkpoint(tmp_path, 4, optimizer_state)
    monkeypatch.undo()

    staging = ckpt.staging_path(tmp_path, 4)
    assert str(failure.value) == (
        f"{staging}: cannot write checkpoint file {name}: no space left on device; the staged checkpoint was "
        "removed, step-00000002 is the newest checkpoint and intact"
    )
    assert disk.written == 8 and disk.refused == [staging / name]  # it failed part-way through that file
    # keep_last=1: the previous checkpoint is pruned only once a newer one is sealed.
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000002"]
    assert file_bytes(previous) == before
    warnings: list[str] = []
    assert ckpt.latest_valid(tmp_path, warn=warnings.append) == previous and warnings == []
    reloaded, scheduler = ckpt.load_optimizer_state(previous)
    assert torch.equal(reloaded["state"][0]["exp_avg"], torch.arange(64.0)) and scheduler == {"last_epoch": 2}
    assert ckpt.read_trainer_state(previous) == {"step": 2, "tokens": 200}


@pytest.fixture(scope="module")
def engine_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full-disk-inputs")
    return {
        "model": write_tiny_qwen3(root / "model"),
        "train": write_synthetic_split(root / "train.safetensors", count=32, seed=1),
        "validation": write_synthetic_split(root / "validation.safetensors", count=6, seed=2),
    }


class Messages:
    """The engine's reporter, keeping what it logs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def metrics(self, step_record: dict) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass


@pytest.fixture
def job(engine_inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], TrainingJob]:
    """A CPU training job of the tiny model writing to the given folder, in a process with no fault injected."""
    for name in (faults.OOM_AT_STEP, faults.NAN_AT_STEPS, faults.KILL_AT_STEP, faults.FAULT_RANK, "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)

    def job_writing_to(output: Path) -> TrainingJob:
        return make_job(engine_inputs["model"], engine_inputs["train"], engine_inputs["validation"], output, cpu_plan())

    return job_writing_to


@pytest.mark.slow
def test_a_disk_full_during_a_training_checkpoint_fails_clearly_and_the_rerun_resumes_to_the_same_adapter(
    job: Callable[[Path], TrainingJob], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(job(tmp_path / "reference"), Messages())
    output = tmp_path / "full"
    checkpoints = output / CHECKPOINTS_DIR
    disk = FullDisk(staged_file(4, ckpt.OPTIMIZER_STATE), room=4096)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk)
        with pytest.raises(ckpt.CheckpointError) as failure:
            train(job(output), Messages())

    assert str(failure.value).startswith(
        f"{ckpt.staging_path(checkpoints, 4)}: cannot write checkpoint file optimizer.pt: no space left on device; "
        "the staged checkpoint was removed, step-00000002 is the newest checkpoint and intact"
    )
    assert disk.written == 4096 and disk.refused  # optimizer.pt was cut off after 4 KiB
    assert [path.name for path in checkpoints.iterdir()] == ["step-00000002"]
    assert ckpt.damage(checkpoints / "step-00000002") is None

    messages = Messages()
    summary = train(job(output), messages)

    assert any(f"resumed from {checkpoints / 'step-00000002'} at step 2" in line for line in messages.lines)
    records = MetricsLog(output / METRICS_FILE).records()
    assert [record["step"] for record in records if "event" not in record] == list(range(1, 9))
    assert summary.restarts == 1 and summary.steps == 8
    assert summary.final_val_loss == pytest.approx(reference.final_val_loss, abs=1e-6)
    resumed = load_file(str(output / "adapter" / ADAPTER_WEIGHTS))
    uninterrupted = load_file(str(tmp_path / "reference" / "adapter" / ADAPTER_WEIGHTS))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_disk_full_while_the_adapter_is_checkpointed_keeps_the_previous_checkpoint(
    job: Callable[[Path], TrainingJob], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "full"
    checkpoints = output / CHECKPOINTS_DIR
    save_adapter = engine_module.save_adapter

    def adapter_write_fills_the_disk_at_step_4(model, weights, directory: Path) -> None:
        if directory.name != ckpt.staging_path(checkpoints, 4).name:
            return save_adapter(model, weights, directory)
        (directory / ADAPTER_WEIGHTS).write_bytes(b"\0" * 100)  # the part that fitted
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(engine_module, "save_adapter", adapter_write_fills_the_disk_at_step_4)
    with pytest.raises(ckpt.CheckpointError) as failure:
        train(job(output), Messages())

    assert str(failure.value) == (
        f"{ckpt.staging_path(checkpoints, 4)}: cannot write checkpoint file {ADAPTER_WEIGHTS}: no space left on "
        "device; the staged checkpoint was removed, step-00000002 is the newest checkpoint and intact"
    )
    assert [path.name for path in checkpoints.iterdir()] == ["step-00000002"]
    assert ckpt.damage(checkpoints / "step-00000002") is None


# --- which folder a retried or re-executed asset works in ---------------------------------------------------------


class ProbeConfig(dg.Config):
    artifacts_dir: str
    # While this file exists every attempt fails.
    failing_marker: str


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def folder_probe(context: dg.AssetExecutionContext, config: ProbeConfig) -> dg.MaterializeResult:
    """Records each attempt in the folder `resumable_run_folder` gives it, then fails while the marker exists."""
    qft = QftConfig.model_validate({"paths": {"artifacts_dir": config.artifacts_dir}})
    folder = resumable_run_folder(context, qft)
    with (folder / "attempts.txt").open("a", encoding="utf-8") as attempts:
        attempts.write(f"{context.run.run_id} {context.retry_number}\n")
    if Path(config.failing_marker).exists():
        raise RuntimeError("failing on purpose")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(folder))})


PROBE_DEFS = dg.Definitions(assets=[folder_probe], jobs=[dg.define_asset_job("probe_job")])


def probe_job() -> dg.JobDefinition:
    return PROBE_DEFS.resolve_job_def("probe_job")


def qft_main_job() -> dg.JobDefinition:
    return defs.resolve_job_def(MAIN_JOB)


def _attempts(folder: Path) -> list[tuple[str, int]]:
    lines = (folder / "attempts.txt").read_text(encoding="utf-8").splitlines()
    return [(run_id, int(retry)) for run_id, retry in (line.split() for line in lines)]


def test_retries_and_reexecutions_from_failure_share_the_failed_attempts_folder_and_a_rerun_of_success_does_not(
    tmp_path: Path, dagster_home: Path
) -> None:
    instance = project_instance()
    artifacts, marker = tmp_path / "artifacts", tmp_path / "failing"
    probe = {"artifacts_dir": str(artifacts), "failing_marker": str(marker)}
    run_config = {"execution": {"config": {"in_process": {}}}, "ops": {"folder_probe": {"config": probe}}}
    job = dg.reconstructable(probe_job)
    marker.touch()

    def from_failure(run_id: str) -> dg.ReexecutionOptions:
        return dg.ReexecutionOptions.from_failure(run_id, instance)

    with dg.execute_job(job, instance, run_config=run_config) as first:
        assert not first.success
    with dg.execute_job(job, instance, reexecution_options=from_failure(first.run_id)) as second:
        assert not second.success
    marker.unlink()
    with dg.execute_job(job, instance, reexecution_options=from_failure(second.run_id)) as third:
        assert third.success
        assert third.dagster_run.root_run_id == first.run_id and third.dagster_run.parent_run_id == second.run_id
    with dg.execute_job(job, instance, reexecution_options=dg.ReexecutionOptions(third.run_id)) as fourth:
        assert fourth.success

    runs = artifacts / "runs"
    shared = runs / first.run_id / "folder_probe"
    # Two attempts per failed run (the retry policy's one retry), all in the first run's folder.
    assert _attempts(shared) == [
        (first.run_id, 0), (first.run_id, 1), (second.run_id, 0), (second.run_id, 1), (third.run_id, 0)
    ]  # fmt: skip
    assert _materialized_path(instance, third.run_id, "folder_probe") == shared
    # A re-execution of the run where the asset succeeded starts afresh in its own folder.
    assert _attempts(runs / fourth.run_id / "folder_probe") == [(fourth.run_id, 0)]
    assert sorted(path.name for path in runs.iterdir()) == sorted([first.run_id, fourth.run_id])


def _materialized_path(instance: dg.DagsterInstance, run_id: str, asset: str) -> Path:
    (record,) = [
        record
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if record.asset_materialization.asset_key == dg.AssetKey(asset)
    ]
    return Path(record.asset_materialization.metadata["path"].value)


# --- lora_checkpoint under Dagster, killed after its first checkpoint ---------------------------------------------


@pytest.fixture
def training_project(tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """24 good pairs, qwen3-tiny (the default model) trained 4 steps with a checkpoint every 2 and no torchrun
    restarts, and the first attempt's rank 0 SIGKILLed as step 3 starts."""
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    write_pairs(corpus, "fault", pairs=24)
    config = {
        "paths": {"corpus_dir": str(corpus), "artifacts_dir": str(artifacts)},
        "split": {"min_split_size": 2},
        "model": {"max_length": 256},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": TRAINING,
    }
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    for name in (faults.OOM_AT_STEP, faults.NAN_AT_STEPS, faults.FAULT_RANK):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(faults.KILL_AT_STEP, str(KILL_AT_STEP))
    return {"config_file": str(config_file), "runs": artifacts / "runs"}


def _lora_checkpoint_log(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The step's event types and log messages (the engine's, through Pipes), in order."""
    return [
        record.dagster_event.event_type_value if record.dagster_event else record.user_message
        for record in instance.all_logs(run_id)
        if record.step_key == "lora_checkpoint"
    ]


def _assert_resumed_at_step_2(training_dir: Path, log: list[str]) -> None:
    """The first attempt wrote checkpoint 2 and died; the next one resumed there (not at step 0) and finished."""
    written = log.index("checkpoint step-00000002 written")
    resumed = [index for index, line in enumerate(log) if line.startswith("resumed from ")]
    assert resumed and resumed[0] > written
    assert log[resumed[0]] == f"resumed from {training_dir / CHECKPOINTS_DIR / 'step-00000002'} at step 2 (restart 1)"
    assert "training 4 steps" not in " ".join(log[written:resumed[0]])  # no fresh start between them
    records = MetricsLog(training_dir / METRICS_FILE).records()
    assert [(r["event"], r["step"]) for r in records if "event" in r and r["event"] != "warning"] == [("resume", 2)]
    assert [record["step"] for record in records if "event" not in record] == [1, 2, 3, 4]
    summary = TrainingSummary.read(training_dir / SUMMARY_FILE)
    assert (summary.steps, summary.restarts) == (4, 1)


def _assert_adapter_loads(adapter_dir: Path) -> None:
    base = load_model(resolve_model(ModelConfig(), PathsConfig()), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    saved = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    lora = {name: parameter for name, parameter in adapted.named_parameters() if "lora_" in name}
    assert len(lora) == len(saved) == 2 * 2 * 2  # A and B of q_proj and v_proj in each of 2 layers
    # LoRA B starts at zero: trained weights have moved it.
    assert all(parameter.abs().sum() > 0 for name, parameter in lora.items() if "lora_B" in name)


@pytest.mark.slow
def test_a_dagster_retry_of_lora_checkpoint_resumes_from_the_killed_attempts_checkpoint(training_project: dict) -> None:
    outcome = materialize_graph(config_file=training_project["config_file"], selection="+key:lora_checkpoint")

    assert outcome.success, outcome.failures
    instance = project_instance()
    log = _lora_checkpoint_log(instance, outcome.run_id)
    steps = [line for line in log if line in {"STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"}]
    assert steps == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"]
    training_dir = training_project["runs"] / outcome.run_id / "lora_checkpoint"
    assert log.index("STEP_UP_FOR_RETRY") < log.index("STEP_RESTARTED") < next(
        index for index, line in enumerate(log) if line.startswith("resumed from ")
    )
    _assert_resumed_at_step_2(training_dir, log)
    assert Path(outcome.artifacts["lora_checkpoint"]) == training_dir / "adapter"
    _assert_adapter_loads(training_dir / "adapter")


@pytest.mark.slow
def test_a_run_reexecuted_from_the_failure_of_lora_checkpoint_resumes_in_the_failed_runs_folder(
    training_project: dict,
) -> None:
    instance = project_instance()
    graph = defs.resolve_asset_graph()
    selection = list(dg.AssetSelection.assets("lora_checkpoint").upstream().resolve(graph))
    run_config = {**RETRIES_OFF, "resources": {"qft": {"config": {"config_file": training_project["config_file"]}}}}
    job = dg.reconstructable(qft_main_job)

    # Retries off: this run stands for one whose every attempt failed.
    with dg.execute_job(job, instance, run_config=run_config, asset_selection=selection) as failed:
        assert not failed.success
        assert [event.step_key for event in failed.all_events if event.is_step_failure] == ["lora_checkpoint"]
    failed_dir = training_project["runs"] / failed.run_id / "lora_checkpoint"
    assert [path.name for path in ckpt.list_checkpoints(failed_dir / CHECKPOINTS_DIR)] == ["step-00000002"]

    options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
    with dg.execute_job(job, instance, reexecution_options=options) as again:
        assert again.success
        assert (again.dagster_run.root_run_id, again.dagster_run.parent_run_id) == (failed.run_id, failed.run_id)
        assert {event.step_key for event in again.all_events if event.is_step_success} == {"lora_checkpoint"}

    log = _lora_checkpoint_log(instance, again.run_id)
    assert any(line.startswith("attempt 1: 1 checkpoint(s) of an earlier attempt in ") for line in log)
    first_attempt = _lora_checkpoint_log(instance, failed.run_id)
    _assert_resumed_at_step_2(failed_dir, first_attempt + log)
    assert _materialized_path(instance, again.run_id, "lora_checkpoint") == failed_dir / "adapter"
    assert not (training_project["runs"] / again.run_id / "lora_checkpoint").exists()
    _assert_adapter_loads(failed_dir / "adapter")
