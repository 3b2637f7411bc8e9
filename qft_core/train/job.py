"""The engine's contract with its launcher: the job (model, tokenized data, output folder, config sections,
plan with the effective LoRA settings) that launch.py writes and every rank reads, and the summary a finished run writes back."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from qft_core.config import ModelConfig, TrainingConfig
from qft_core.publish import publish_text
from qft_core.train.plan import TrainingPlan

JOB_FILE = "job.json"
SUMMARY_FILE = "training_summary.json"


class JobError(ValueError):
    """A job file that is missing or does not validate; the message names the file and key."""


class TrainingJob(BaseModel):
    """Everything one torchrun worker needs, in one JSON file."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    # Tokenizer files copied next to the adapter, so the output folder is self-contained.
    tokenizer_dir: str | None = None
    train_data: str
    validation_data: str | None = None
    output_dir: str
    pad_token_id: int
    model: ModelConfig
    training: TrainingConfig
    # The LoRA settings are the plan's (`plan.lora`): the planner may shrink the configured adapter.
    plan: TrainingPlan

    def write(self, path: str | Path) -> Path:
        return publish_text(path, self.model_dump_json(indent=1))

    @classmethod
    def read(cls, path: str | Path) -> TrainingJob:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise JobError(f"{path}: cannot read the training job: {error.strerror}") from None
        except ValidationError as error:
            keys = "; ".join(f"key '{'.'.join(map(str, item['loc']))}': {item['msg']}" for item in error.errors())
            raise JobError(f"{path}: invalid training job: {keys}") from None


class TrainingSummary(BaseModel):
    """What a finished run reports (training_summary.json next to the adapter)."""

    model_config = ConfigDict(extra="forbid")

    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    steps: int
    tokens: int
    target_tokens: int
    tokens_per_s: float
    wall_time_s: float
    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    restarts: int
    oom_events: int
    skipped_steps: int
    adapter_dir: str
    metrics_file: str
    plan: dict

    def write(self, path: str | Path) -> Path:
        return publish_text(path, self.model_dump_json(indent=1))

    @classmethod
    def read(cls, path: str | Path) -> TrainingSummary:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
