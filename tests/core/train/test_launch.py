"""Launching: the torchrun command, tokenization into the run folder before any process group, and real
multi-process gloo runs (DDP matching a single process, FSDP surviving a kill -9 of a rank)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qft_core.config import QftConfig
from qft_core.model.chat import encode_example
from qft_core.model.tokenizer import qwen3_tokenizer_dir
from qft_core.records import ThinkingExample, ThinkingStructure, write_parquet
from qft_core.train import faults
from qft_core.diagnose.curves import CHINESE_METRICS
from qft_core.train.dataset import TERM, load_tokenized
from qft_core.train.engine import train
from qft_core.train.job import TrainingJob
from qft_core.train.launch import (
    SplitsNotFound,
    TrainingFailed,
    prepare_run,
    read_splits,
    run_job,
    run_training,
    torchrun_command,
    training_key,
    worker_environment,
)
from qft_core.train.metrics_log import METRICS_PREFIX, MetricsLog
from tiny_run import cpu_plan, write_tiny_qwen3

HERE = Path(__file__).resolve().parent
QWEN3_VOCAB = 151_936


def _example(number: int, split: str) -> ThinkingExample:
    return ThinkingExample(
        id=f"{split}-{number}",
        question=f"第{number}题：AES-{128 + 64 * (number % 3)} 的分组长度是多少？",
        answer=f"AES 的分组长度固定为 128 位，密钥长度为 {128 + 64 * (number % 3)} 位。",
        source_file="tests.md",
        source_line=number + 1,
        thinking=[ThinkingStructure(text=f"先回忆 AES 标准。第{number}步：分组长度与密钥长度无关。")],
        split=split,
    )


SPLITS = {
    "train": [_example(number, "train") for number in range(16)],
    "validation": [_example(number, "validation") for number in range(16, 20)],
}


@pytest.fixture(scope="module")
def qwen3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow Qwen3 with the full Qwen3 vocabulary and the offline tokenizer beside it."""
    root = tmp_path_factory.mktemp("launch-model")
    model_dir = write_tiny_qwen3(root / "model", vocab_size=QWEN3_VOCAB, hidden=16)
    shutil.copytree(qwen3_tokenizer_dir(root / "cache"), model_dir, dirs_exist_ok=True)
    return model_dir


def _config(model_dir: Path, **training: object) -> QftConfig:
    settings = {"max_steps": 6, "checkpoint_every": 2, "eval_every": 3, "learning_rate": 0.05, "max_restarts": 1,
                "seed": 11, **training}
    return QftConfig.model_validate({
        "model": {"name": str(model_dir), "max_length": 256},
        "paths": {"model_cache_dir": str(model_dir.parent / "cache")},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "training": settings,
    })


def test_single_node_command_uses_a_standalone_rendezvous_and_the_restart_budget(tmp_path: Path) -> None:
    command = torchrun_command(tmp_path / "job.json", cpu_plan(world_size=2), max_restarts=3)
    assert command == [
        sys.executable, "-m", "qft_core.train.lifeline", "--standalone", "--nnodes=1", "--nproc-per-node=2",
        "--max-restarts=3", "-m", "qft_core.train.engine", "--job", str(tmp_path / "job.json"),
    ]


def test_multi_node_command_uses_the_plans_rendezvous(tmp_path: Path) -> None:
    rendezvous = ["--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29511",
                  "--rdzv-id=qft"]
    plan = cpu_plan(world_size=16).model_copy(update={"nnodes": 2, "nproc_per_node": 8, "torchrun_args": rendezvous})
    command = torchrun_command("job.json", plan, entry_module="qft_pipeline.train_entry", max_restarts=1)
    assert command[3:] == [*rendezvous, "--max-restarts=1", "-m", "qft_pipeline.train_entry", "--job", "job.json"]


def test_worker_environment_shares_the_cores_and_gives_restarts_a_fresh_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert worker_environment(cpu_plan(world_size=2), base={})["OMP_NUM_THREADS"] == "4"
    assert worker_environment(cpu_plan(world_size=2), base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_environment(cpu_plan(world_size=4), base={})["OMP_NUM_THREADS"] == "1"
    assert worker_environment(cpu_plan(), base={})["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_splits_are_read_from_parquet_and_a_missing_train_split_is_named(tmp_path: Path) -> None:
    write_parquet(SPLITS["train"], ThinkingExample, tmp_path / "train.parquet")
    assert read_splits(tmp_path) == {"train": SPLITS["train"], "validation": []}
    with pytest.raises(SplitsNotFound, match=r"empty/train.parquet: no training split"):
        read_splits(tmp_path / "empty")


def test_the_training_key_follows_the_plans_decisions_not_its_explanations(tmp_path: Path) -> None:
    write_parquet(SPLITS["train"], ThinkingExample, tmp_path / "train.parquet")
    config = _config(tmp_path / "model")
    plan = cpu_plan()
    key = training_key(config, tmp_path, plan)
    # Planned again on a machine with less RAM free: the same decisions, other words.
    reworded = plan.model_copy(update={
        "explanations": ["Memory budget 2.55 GiB per process: 85% of 6.0 GiB RAM"],
        "memory_gib": {**plan.memory_gib, "budget": 2.55, "capacity": 3.0},
    })
    assert training_key(config, tmp_path, reworded) == key
    assert training_key(config, tmp_path, cpu_plan(micro=1, accum=4)) != key


def test_prepare_run_tokenizes_the_splits_and_writes_a_complete_job(qwen3_model_dir: Path, tmp_path: Path) -> None:
    job_path = prepare_run(_config(qwen3_model_dir, nproc=2, global_batch_size=4), SPLITS, tmp_path / "run")

    job = TrainingJob.read(job_path)
    assert job_path == tmp_path / "run" / "job.json"
    # No GPU here: the planner picks two gloo processes on the CPU in fp32, splitting the global batch of 4.
    assert (job.plan.device, job.plan.backend, job.plan.dtype, job.plan.world_size) == ("cpu", "gloo", "float32", 2)
    assert job.plan.micro_batch_size * job.plan.grad_accum_steps * 2 == job.plan.global_batch_size == 4
    assert job.output_dir == str(tmp_path / "run")
    assert job.model_dir == str(qwen3_model_dir)
    assert job.pad_token_id == 151_643  # <|endoftext|>
    train_split = load_tokenized(job.train_data)
    assert train_split.ids == [example.id for example in SPLITS["train"]]
    assert len(load_tokenized(job.validation_data)) == 4
    tokenizer_dir = Path(job.tokenizer_dir)
    assert (tokenizer_dir / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    encoded = encode_example(SPLITS["train"][0], AutoTokenizer.from_pretrained(tokenizer_dir))
    input_ids, labels = train_split.sequence(0)
    assert input_ids.tolist() == encoded.input_ids
    assert labels.tolist() == encoded.labels


def test_failed_training_raises_with_the_tail_of_the_output(qwen3_model_dir: Path, tmp_path: Path) -> None:
    job_path = prepare_run(_config(qwen3_model_dir, max_restarts=0), SPLITS, tmp_path / "run", plan=cpu_plan(seq_len=256))
    with pytest.raises(TrainingFailed, match="training exited with code 1") as failure:
        run_job(job_path, entry_module="qft_core.train.no_such_entry")
    assert "No module named qft_core.train.no_such_entry" in failure.value.log_tail


@pytest.fixture(scope="module")
def two_rank_ddp_run(qwen3_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(HERE))
        summary = run_training(
            _config(qwen3_model_dir), SPLITS, run_dir, nproc=2, entry_module="rank_dump_entry", stream=lines.append,
            plan=cpu_plan(world_size=2, micro=2, accum=2, seq_len=256),
        )
    return {"run_dir": run_dir, "summary": summary, "lines": lines}


@pytest.mark.slow
def test_two_rank_ddp_run_keeps_replicas_equal_and_matches_one_process(
    two_rank_ddp_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, summary = two_rank_ddp_run["run_dir"], two_rank_ddp_run["summary"]
    rank0 = torch.load(run_dir / "rank-0-lora.pt", weights_only=True)
    rank1 = torch.load(run_dir / "rank-1-lora.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) == 12
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert summary.world_size == 2 and summary.steps == 6 and summary.restarts == 0
    streamed = [line for line in two_rank_ddp_run["lines"] if line.startswith(METRICS_PREFIX)]
    assert len(streamed) == 6  # rank 0 alone reports

    # The same global batch of 8 in one process: micro-batch 2 x accumulation 4 instead of 2 ranks x 2 x 2.
    for name in (faults.KILL_AT_STEP, faults.NAN_AT_STEPS, faults.OOM_AT_STEP, "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    job = TrainingJob.read(run_dir / "job.json")
    single = job.model_copy(update={"output_dir": str(tmp_path / "single"), "plan": cpu_plan(micro=2, accum=4, seq_len=256)})
    single_summary = train(single)
    assert single_summary.final_train_loss == pytest.approx(summary.final_train_loss, abs=1e-5)
    assert single_summary.final_val_loss == pytest.approx(summary.final_val_loss, abs=1e-5)
    # The Chinese validation metrics are sums over both ranks' shares of the split, not a mean of rank means.
    last_validation = [
        [r for r in MetricsLog(folder / "metrics.jsonl").records() if "val_loss" in r][-1]
        for folder in (run_dir, tmp_path / "single")
    ]
    assert set(CHINESE_METRICS) <= last_validation[0].keys()
    for key in CHINESE_METRICS:
        assert last_validation[0][key] == pytest.approx(last_validation[1][key], abs=1e-5), key
    distributed = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    alone = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    for name in distributed:
        torch.testing.assert_close(alone[name], distributed[name], rtol=0, atol=1e-5, msg=name)
    assert (run_dir / "adapter" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_fsdp_run_with_a_rank_killed_restarts_and_reaches_the_same_result(two_rank_ddp_run: dict, tmp_path: Path) -> None:
    reference = two_rank_ddp_run["run_dir"]
    job = TrainingJob.read(reference / "job.json")
    fsdp = job.model_copy(update={
        "output_dir": str(tmp_path / "fsdp"),
        "plan": cpu_plan(world_size=2, micro=2, accum=2, seq_len=256, strategy="fsdp"),
    })
    job_path = fsdp.write(tmp_path / "job.json")
    env = {"PYTHONPATH": str(HERE), faults.KILL_AT_STEP: "5", faults.FAULT_RANK: "1"}
    lines: list[str] = []
    summary = run_job(job_path, entry_module="rank_dump_entry", stream=lines.append, env=env)

    assert summary.restarts == 1
    assert any("resumed from" in line and "step 4" in line for line in lines)
    records = MetricsLog(tmp_path / "fsdp" / "metrics.jsonl").records()
    assert [r["event"] for r in records if "event" in r] == ["resume"]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    expected = [r for r in MetricsLog(reference / "metrics.jsonl").records() if "event" not in r]
    for ours, theirs in zip([r for r in records if "event" not in r], expected, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert summary.final_val_loss == pytest.approx(two_rank_ddp_run["summary"].final_val_loss, abs=1e-5)
    ours = load_file(str(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)


def test_prepare_run_flags_the_terms_of_the_configured_dictionary(qwen3_model_dir: Path, tmp_path: Path) -> None:
    dictionary = tmp_path / "terms.yaml"
    dictionary.write_text(
        "terms:\n  - id: block_length\n    zh: 分组长度\n    en: block length\n    abbreviation: null\n"
        "    synonyms: []\n    category: fundamentals\n    complexity: 1\n",
        encoding="utf-8",
    )
    config = _config(qwen3_model_dir)
    config.paths.term_dictionary = str(dictionary)
    job = TrainingJob.read(prepare_run(config, SPLITS, tmp_path / "run"))

    split = load_tokenized(job.train_data)
    start, end = split.offsets[0], split.offsets[1]
    term_tokens = split.input_ids[start:end][(split.segments[start:end] & TERM) != 0]
    from transformers import AutoTokenizer

    # The answer's only term under this dictionary is 分组长度; the default dictionary would flag AES too.
    assert AutoTokenizer.from_pretrained(job.tokenizer_dir).decode(term_tokens.tolist()) == "分组长度"
