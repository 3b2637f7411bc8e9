"""The engine in one process on CPU: it learns, logs every step, writes a loadable adapter, resumes exactly,
backs off on OOM and skips or stops on anomalies."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from qft_core.model.peft_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from qft_core.train import checkpoint as ckpt
from qft_core.train import faults
from qft_core.train.adapter import adapter_state, build_lora_model, load_adapter_weights, save_adapter
from qft_core.train.batches import BatchError, BatchLayout
from qft_core.config import ModelConfig, QftConfig
from qft_core.records import ThinkingExample, ThinkingStructure
from qft_core.diagnose.curves import CHINESE_METRICS
from qft_core.train.dataset import ANSWER, REASONING, TERM, WORD_START
from qft_core.train.engine import (
    WARMUP_STEPS,
    AnomalyStop,
    Trainer,
    TrainingError,
    anomaly_reason,
    main,
    rescale_position,
    train,
)
from qft_core.train.job import TrainingJob, TrainingSummary
from qft_core.train.launch import prepare_run
from qft_core.train.metrics_log import MetricsLog
from qft_core.diagnose.findings import monitor_run
from qft_core.diagnose.report import write_monitor_report
from qft_core.train.parallel import Runtime
from tiny_run import ALPHABET_START, TARGETS, cpu_plan, make_job, write_synthetic_split, write_tiny_qwen3

STEP_FIELDS = {
    "step", "epoch", "loss", "lr", "grad_norm", "tokens", "target_tokens", "tokens_per_s", "step_time_s", "comm_s",
    "memory_gib", "micro_batch_size", "grad_accum_steps", "skipped",
}


class RecordingReporter:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.records: list[dict] = []
        self.summaries: list[dict] = []

    def log(self, message: str) -> None:
        self.messages.append(message)

    def metrics(self, step_record: dict) -> None:
        self.records.append(step_record)

    def summary(self, summary: dict) -> None:
        self.summaries.append(summary)


class SimulatedKill(BaseException):
    """Stands in for SIGKILL inside the test process: nothing after it runs."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-inputs")
    return {
        "model": write_tiny_qwen3(root / "model"),
        "train": write_synthetic_split(root / "train.safetensors", count=32, seed=1),
        "validation": write_synthetic_split(root / "validation.safetensors", count=6, seed=2),
    }


@pytest.fixture(autouse=True)
def no_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (faults.OOM_AT_STEP, faults.NAN_AT_STEPS, faults.KILL_AT_STEP, faults.FAULT_RANK, "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)


def _job(inputs: dict[str, Path], output: Path, **training):
    return make_job(inputs["model"], inputs["train"], inputs["validation"], output, cpu_plan(), **training)


def _step_records(output: Path) -> list[dict]:
    return [record for record in MetricsLog(output / "metrics.jsonl").records() if "event" not in record]


def _adapter(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "adapter" / ADAPTER_WEIGHTS))


def _assert_same_adapter(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor], atol: float) -> None:
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def baseline(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 8-step run, kept as the reference the other runs must reproduce."""
    output = tmp_path_factory.mktemp("baseline") / "out"
    job = _job(inputs, output)
    reporter = RecordingReporter()
    with pytest.MonkeyPatch.context() as patch:
        for name in (faults.OOM_AT_STEP, faults.NAN_AT_STEPS, faults.KILL_AT_STEP, "WORLD_SIZE", "RANK"):
            patch.delenv(name, raising=False)
        trainer = Trainer(job, Runtime.single(), reporter)
        summary = trainer.run()
    return {"output": output, "summary": summary, "reporter": reporter, "trainer": trainer, "job": job}


def test_training_lowers_loss_and_logs_every_step(baseline: dict) -> None:
    output, summary = baseline["output"], baseline["summary"]
    records = _step_records(output)

    assert [record["step"] for record in records] == list(range(1, 9))
    assert all(STEP_FIELDS <= record.keys() for record in records)
    assert [record["step"] for record in records if "val_loss" in record] == [4, 8]
    assert not any(record["skipped"] for record in records)
    assert records[-1]["epoch"] == 1.0  # 32 sequences / global batch 4 = 8 steps per epoch
    assert records[0]["lr"] == pytest.approx(1e-1)  # warmup ceil(0.1 * 8) = 1 step reaches the peak at once
    assert sum(r["loss"] for r in records[-3:]) / 3 < sum(r["loss"] for r in records[:3]) / 3 - 0.3
    assert records[7]["val_loss"] < records[3]["val_loss"]
    assert summary.steps == 8
    assert summary.tokens == sum(record["tokens"] for record in records)
    assert summary.final_val_loss == records[-1]["val_loss"]
    assert summary.best_val_loss == min(records[3]["val_loss"], records[7]["val_loss"])
    # Synthetic splits have no segment flags and the job no tokenizer: no Chinese metrics, rather than zeros.
    assert not any(set(CHINESE_METRICS) & record.keys() for record in records)
    # Steady-state throughput leaves out the process's first (warm-up) step; the wall time keeps everything.
    steady = records[WARMUP_STEPS:]
    assert summary.tokens_per_s == pytest.approx(
        sum(r["tokens"] for r in steady) / sum(r["step_time_s"] for r in steady), rel=1e-9
    )
    assert summary.wall_time_s >= sum(r["step_time_s"] for r in records)
    assert TrainingSummary.read(output / "training_summary.json") == summary
    assert baseline["reporter"].records == records
    assert baseline["reporter"].summaries == [summary.model_dump(mode="json")]


def test_adapter_loads_with_peft_and_equals_the_trained_weights(baseline: dict) -> None:
    output, trainer = baseline["output"], baseline["trainer"]
    base = AutoModelForCausalLM.from_pretrained(baseline["job"].model_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, output / "adapter")

    loaded_lora = {name: p for name, p in loaded.named_parameters() if "lora_" in name}
    trained_lora = {name: p for name, p in trainer.peft_model.named_parameters() if "lora_" in name}
    assert len(loaded_lora) == 2 * 3 * 2  # A and B for q_proj, v_proj, down_proj in each of 2 layers
    assert loaded_lora.keys() == trained_lora.keys()
    for name, parameter in loaded_lora.items():
        assert torch.equal(parameter, trained_lora[name]), name
    assert adapter_state(trainer.peft_model).keys() == _adapter(output).keys()


def test_adapter_copied_elsewhere_loads_with_peft_from_its_recorded_base_with_qft_logits(
    baseline: dict, tmp_path: Path
) -> None:
    job, trained = baseline["job"], baseline["output"] / "adapter"
    moved = shutil.copytree(trained, tmp_path / "another-machine" / "adapter")
    recorded = json.loads((moved / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    assert recorded == job.model.name  # the local model's path as the job was given it

    # What any PEFT user writes, knowing nothing of qft; qft's own loader is the one resuming training uses.
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded, dtype=torch.float32), moved)
    own = build_lora_model(job, torch.float32, torch.device("cpu"))
    load_adapter_weights(own, trained)
    input_ids = torch.tensor([[ALPHABET_START + (3 * k) % 16 for k in range(20)]])
    with torch.no_grad():
        peft_logits, own_logits = (model.eval()(input_ids=input_ids).logits for model in (peft, own))
    assert torch.equal(peft_logits, own_logits)
    base = AutoModelForCausalLM.from_pretrained(recorded, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.equal(base(input_ids=input_ids).logits, own_logits)  # the adapter does change them


def test_adapter_of_a_registered_hub_model_names_its_hub_id_not_the_local_copy(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    job = _job(inputs, tmp_path / "out").model_copy(
        update={"model": ModelConfig(name="qwen3-4b-thinking-2507", path=str(inputs["model"]))}
    )
    peft_model = build_lora_model(job, torch.float32, torch.device("cpu"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT warns when it looks the base model up on the Hub and cannot
        save_adapter(peft_model, adapter_state(peft_model), tmp_path / "adapter")

    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == "Qwen/Qwen3-4B-Thinking-2507"


def test_checkpoints_keep_the_last_two_and_carry_the_resume_state(baseline: dict) -> None:
    checkpoints = ckpt.list_checkpoints(baseline["output"] / "checkpoints")
    assert [path.name for path in checkpoints] == ["step-00000006", "step-00000004"]
    state = ckpt.read_trainer_state(checkpoints[0])
    assert state["step"] == 6
    assert state["data_position"] == {"epoch": 0, "index": 24}
    assert all(ckpt.damage(path) is None for path in checkpoints)
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json",
            "rng/rank-00000.pt", "manifest.json"} == {
        path.relative_to(checkpoints[0]).as_posix() for path in checkpoints[0].rglob("*") if path.is_file()
    }


def test_killed_run_resumes_past_a_damaged_checkpoint_to_the_same_result(
    baseline: dict, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    job = _job(inputs, output)

    def kill(pid: int, signal: int) -> None:
        raise SimulatedKill

    monkeypatch.setattr(faults.os, "kill", kill)
    monkeypatch.setenv(faults.KILL_AT_STEP, "8")
    with pytest.raises(SimulatedKill):
        train(job, RecordingReporter())
    assert [r["step"] for r in _step_records(output)] == list(range(1, 8))
    # The newest checkpoint (step 6) is truncated on disk: the run must fall back to step 4.
    newest = output / "checkpoints" / "step-00000006" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:100])

    reporter = RecordingReporter()
    summary = train(job, reporter)

    assert any("step-00000006 is damaged" in message for message in reporter.messages)
    assert any("resumed from" in message and "step 4" in message for message in reporter.messages)
    assert [record["step"] for record in reporter.records] == [5, 6, 7, 8]
    reference = _step_records(baseline["output"])
    resumed = _step_records(output)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for ours, theirs in zip(resumed, reference, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert ours["lr"] == theirs["lr"]
    assert summary.restarts == 1
    assert summary.final_train_loss == pytest.approx(baseline["summary"].final_train_loss, abs=1e-6)
    _assert_same_adapter(_adapter(output), _adapter(baseline["output"]), atol=1e-6)


def test_oom_halves_micro_batch_doubles_accumulation_and_keeps_the_result(
    baseline: dict, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv(faults.OOM_AT_STEP, "3")
    reporter = RecordingReporter()
    summary = train(_job(inputs, output), reporter)

    records = _step_records(output)
    assert [(r["micro_batch_size"], r["grad_accum_steps"]) for r in records] == [(2, 2)] * 2 + [(1, 4)] * 6
    events = [r for r in MetricsLog(output / "metrics.jsonl").records() if r.get("event") == "oom"]
    assert events == [{"event": "oom", "step": 3, "rank": 0, "micro_batch_size": 1, "grad_accum_steps": 4}]
    assert any("out of memory at step 3" in message for message in reporter.messages)
    assert json.loads((output / "batch_layout.json").read_text()) == {"micro_batch_size": 1, "grad_accum_steps": 4}
    assert summary.oom_events == 1
    assert (summary.micro_batch_size, summary.grad_accum_steps, summary.global_batch_size) == (1, 4, 4)
    for ours, theirs in zip(records, _step_records(baseline["output"]), strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    _assert_same_adapter(_adapter(output), _adapter(baseline["output"]), atol=1e-5)


def test_oom_at_micro_batch_one_is_a_clear_error() -> None:
    with pytest.raises(BatchError, match="out of memory with micro-batch 1"):
        BatchLayout(1, 8).halved()
    assert BatchLayout(4, 2).halved() == BatchLayout(2, 4)


def test_nan_loss_step_is_skipped_and_logged(inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv(faults.NAN_AT_STEPS, "3")
    summary = train(_job(inputs, output, max_steps=4, eval_every=10, checkpoint_every=10), RecordingReporter())

    records = _step_records(output)
    assert [r["skipped"] for r in records] == [False, False, True, False]
    assert records[2]["loss"] is None
    assert records[2]["anomaly"].startswith("non-finite loss")
    assert summary.skipped_steps == 1
    assert summary.steps == 4
    assert math.isfinite(summary.final_train_loss)


def test_consecutive_anomalies_stop_training_with_a_clear_message(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv(faults.NAN_AT_STEPS, "2,3,4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    job = _job(inputs, output, max_consecutive_anomalies=3, checkpoint_every=10)
    job.write(tmp_path / "job.json")
    reporter = RecordingReporter()

    assert main(["--job", str(tmp_path / "job.json")], reporter=reporter) == 1

    error = reporter.messages[-1]
    assert error.startswith("ERROR: training stopped at step 4: 3 consecutive anomalous steps")
    assert "training.max_consecutive_anomalies=3" in error
    assert [r["step"] for r in _step_records(output)] == [1, 2, 3, 4]
    # torchrun restarting the same run (same run id) gets the stop again at once, not a retry.
    monkeypatch.delenv(faults.NAN_AT_STEPS)
    with pytest.raises(AnomalyStop, match="3 consecutive anomalous steps"):
        train(job, RecordingReporter())
    assert [r["step"] for r in _step_records(output)] == [1, 2, 3, 4]


def test_grad_norm_spike_over_the_running_median_is_an_anomaly() -> None:
    history = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3
    assert anomaly_reason(2.0, 29.9, history, spike_factor=10) is None
    assert anomaly_reason(2.0, 30.1, history, spike_factor=10) == "gradient norm 30.1 > 10 x running median 3"
    assert anomaly_reason(2.0, 1e6, history[:4], spike_factor=10) is None  # too little history to judge
    assert anomaly_reason(float("inf"), 1.0, history, spike_factor=10) == "non-finite loss inf"
    assert anomaly_reason(2.0, float("nan"), history, spike_factor=10) == "non-finite gradient norm nan"


def test_data_position_carries_over_to_another_world_size() -> None:
    # Two ranks had each consumed 6 sequences (3 steps of a global batch of 4): one rank resumes after 12.
    assert rescale_position({"epoch": 1, "index": 6}, saved_world=2, world=1) == {"epoch": 1, "index": 12}
    assert rescale_position({"epoch": 0, "index": 12}, saved_world=1, world=4) == {"epoch": 0, "index": 3}
    with pytest.raises(TrainingError, match="resume with 1 ranks"):
        rescale_position({"epoch": 0, "index": 3}, saved_world=1, world=2)


def _crypto_example(number: int, split: str) -> ThinkingExample:
    return ThinkingExample(
        id=f"{split}-{number}",
        question=f"第{number}题：SM4 和 AES 的密钥长度各是多少？",
        answer=f"SM4 是分组密码，密钥长度为 128 位；AES 的密钥长度可以是 {128 + 64 * (number % 3)} 位。",
        source_file="tests.md",
        source_line=number + 1,
        thinking=[ThinkingStructure(text=f"先回忆两个分组密码标准。第{number}步：比较密钥长度。")],
        split=split,
    )


def test_validation_records_carry_the_chinese_metrics_on_qwen3_tiny(tmp_path: Path) -> None:
    """qwen3-tiny (the default model: full Qwen3 vocabulary, the offline tokenizer), tokenized by prepare_run with
    the project's term dictionary, two steps and a validation."""
    config = QftConfig.model_validate({
        "model": {"name": "qwen3-tiny", "max_length": 256},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS},
        "training": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 10, "learning_rate": 0.05, "seed": 3},
    })
    splits = {
        "train": [_crypto_example(number, "train") for number in range(4)],
        "validation": [_crypto_example(number, "validation") for number in range(4, 7)],
    }
    job = TrainingJob.read(prepare_run(config, splits, tmp_path / "run", plan=cpu_plan(seq_len=256)))

    trainer = Trainer(job, Runtime.single(), RecordingReporter())
    summary = trainer.run()

    # Every flagged target of the split reaches the tally through packing and the scores, once.
    flags = torch.cat([trainer.validation_data[i]["segments"] for i in range(len(trainer.validation_data))]).long()
    tally = trainer.evaluate()
    assert tally.reasoning_tokens == int((flags & REASONING).bool().sum()) > 0
    assert tally.answer_tokens == int((flags & ANSWER).bool().sum()) > tally.term_tokens
    assert tally.term_tokens == int((flags & TERM).bool().sum()) > 0
    assert tally.words == int((flags & WORD_START).bool().sum()) > 0
    validation = [record for record in _step_records(tmp_path / "run") if "val_loss" in record]
    assert [record["step"] for record in validation] == [2]
    record = validation[0]
    assert set(CHINESE_METRICS) <= record.keys()
    for key in ("val_char_accuracy", "val_word_accuracy", "val_term_accuracy"):
        assert 0.0 <= record[key] <= 1.0, key
    for key in ("val_reasoning_loss", "val_answer_loss"):
        assert 0.0 < record[key] < 2 * math.log(151_936), key
    assert summary.final_val_loss == record["val_loss"] == pytest.approx(tally.val_loss)
    assert record["val_term_accuracy"] == pytest.approx(tally.metrics()["val_term_accuracy"])
    # The monitor reads them back and draws their curves.
    report = monitor_run(tmp_path / "run" / "metrics.jsonl")
    assert set(report.stats.chinese) == set(CHINESE_METRICS)
    _, pngs = write_monitor_report(report, tmp_path / "monitor")
    assert [png.name for png in pngs] == ["training_curves.png", "chinese_metrics.png"]
