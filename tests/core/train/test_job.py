"""The job file: written atomically, read back identically, and rejected with the key at fault."""

import json
from pathlib import Path

import pytest

from qft_core.train.job import JobError, TrainingJob
from tiny_run import cpu_plan, make_job


def test_job_round_trips_through_its_file(tmp_path: Path) -> None:
    job = make_job(tmp_path / "model", tmp_path / "train.safetensors", None, tmp_path / "out", cpu_plan(world_size=2))
    path = job.write(tmp_path / "run" / "job.json")
    assert TrainingJob.read(path) == job
    assert not (tmp_path / "run" / ".job.json.tmp").exists()


def test_invalid_job_names_file_and_key(tmp_path: Path) -> None:
    job = make_job(tmp_path / "model", tmp_path / "train.safetensors", None, tmp_path / "out", cpu_plan())
    values = json.loads(job.model_dump_json())
    values["plan"]["strategy"] = "zero3"
    (tmp_path / "job.json").write_text(json.dumps(values))
    with pytest.raises(JobError, match=r"job.json: invalid training job: key 'plan.strategy'"):
        TrainingJob.read(tmp_path / "job.json")
    with pytest.raises(JobError, match="missing.json: cannot read the training job"):
        TrainingJob.read(tmp_path / "missing.json")
