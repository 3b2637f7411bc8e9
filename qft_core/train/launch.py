"""Starting a training run: tokenize the splits into the run folder and write the job (before any process group
exists, so large data never meets a collective timeout), then run the engine under torchrun and follow it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from qft_core.config import QftConfig
from qft_core.records import ThinkingExample, read_parquet
from qft_core.train.job import JOB_FILE, SUMMARY_FILE, TrainingJob, TrainingSummary
from qft_core.train.lifeline import LAUNCHER_PID
from qft_core.train.plan import TrainingPlan, plan_for

ENGINE_MODULE = "qft_core.train.engine"
TRAIN_FILE = "data/train.safetensors"
VALIDATION_FILE = "data/validation.safetensors"
TOKENIZER_DIR = "tokenizer"
LOG_TAIL_LINES = 80
RESUME_KEY_FILE = "resume_key.txt"

Splits = Path | str | Mapping[str, Sequence[ThinkingExample]]


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the message ends with the tail of its output."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the training output ---\n{log_tail}")
        self.log_tail = log_tail


class SplitsNotFound(FileNotFoundError):
    """The splits folder lacks a split file the run needs."""


def read_splits(splits: Splits) -> dict[str, list[ThinkingExample]]:
    """Train and validation examples from a folder (train.parquet, validation.parquet) or a mapping of them."""
    if isinstance(splits, Mapping):
        return {name: list(splits.get(name, [])) for name in ("train", "validation")}
    folder = Path(splits)
    train_file = folder / "train.parquet"
    if not train_file.is_file():
        raise SplitsNotFound(f"{train_file}: no training split (write the splits first: qft split)")
    validation_file = folder / "validation.parquet"
    return {
        "train": read_parquet(train_file, ThinkingExample),
        "validation": read_parquet(validation_file, ThinkingExample) if validation_file.is_file() else [],
    }


def training_key(config: QftConfig, splits: Splits, plan: TrainingPlan) -> str:
    """What makes two trainings the same one, so that one may resume the other's checkpoints: the model, the
    training and LoRA settings, the plan's decisions (`decisions_json`: not the RAM free when it was planned) and
    every training and validation example (sha256)."""
    digest = hashlib.sha256()
    for section in (config.model, config.training, config.lora):
        digest.update(section.model_dump_json().encode("utf-8"))
    digest.update(plan.decisions_json().encode("utf-8"))
    for name, examples in read_splits(splits).items():
        digest.update(f"\0{name}:{len(examples)}\0".encode())
        for example in examples:
            digest.update(example.model_dump_json().encode("utf-8"))
    return digest.hexdigest()


def resumable_by(run_dir: Path, key: str) -> bool:
    """Whether `run_dir` holds an unfinished training of `key` with a complete checkpoint to resume from."""
    from qft_core.train.checkpoint import damage, list_checkpoints
    from qft_core.train.engine import CHECKPOINTS_DIR

    key_file = run_dir / RESUME_KEY_FILE
    return (
        key_file.is_file()
        and key_file.read_text(encoding="utf-8") == key
        and not (run_dir / SUMMARY_FILE).exists()
        and any(damage(checkpoint) is None for checkpoint in list_checkpoints(run_dir / CHECKPOINTS_DIR))
    )


def prepare_run(
    config: QftConfig, splits: Splits, run_dir: str | Path, plan: TrainingPlan | None = None
) -> Path:
    """Tokenize the splits into `run_dir`, copy the tokenizer there and write the job; returns job.json's path.

    Rerunning it on the same inputs rewrites identical files, so a run folder with checkpoints resumes.
    """
    from qft_core.data.terms import TermDictionary
    from qft_core.model.registry import ensure_model_dir, load_tokenizer, resolve_model
    from qft_core.train.dataset import save_tokenized, tokenize_examples

    run_dir = Path(run_dir).resolve()
    spec = resolve_model(config.model, config.paths)
    model_dir = ensure_model_dir(spec)
    tokenizer = load_tokenizer(spec)
    examples = read_splits(splits)
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    paths: dict[str, Path | None] = {}
    for name, relative in (("train", TRAIN_FILE), ("validation", VALIDATION_FILE)):
        if not examples[name]:
            paths[name] = None
            continue
        split = tokenize_examples(
            examples[name],
            tokenizer,
            max_length=spec.max_length,
            loss_on_reasoning=config.training.loss_on_reasoning,
            mask_empty_thinking=config.training.mask_empty_thinking,
            dictionary=dictionary,
        )
        paths[name] = save_tokenized(split, run_dir / relative)
    if paths["train"] is None:
        raise SplitsNotFound(f"{splits}: the training split is empty")
    tokenizer.save_pretrained(str(run_dir / TOKENIZER_DIR))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    job = TrainingJob(
        model_dir=str(model_dir),
        tokenizer_dir=str(run_dir / TOKENIZER_DIR),
        train_data=str(paths["train"]),
        validation_data=str(paths["validation"]) if paths["validation"] else None,
        output_dir=str(run_dir),
        pad_token_id=pad_id,
        model=config.model,
        training=config.training,
        plan=plan or plan_for(config, model_dir),
    )
    return job.write(run_dir / JOB_FILE)


def torchrun_command(
    job_path: str | Path,
    plan: TrainingPlan,
    entry_module: str = ENGINE_MODULE,
    max_restarts: int | None = None,
    rendezvous: Sequence[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """The torchrun invocation for one node, tied to the launching process (lifeline.py). One node: a standalone
    rendezvous on a free local port. Several nodes: the `rendezvous` arguments, by default the plan's (the same
    command runs on every node); `python` is the interpreter on the node (default: this one)."""
    if max_restarts is None:
        max_restarts = TrainingJob.read(job_path).training.max_restarts
    if rendezvous is not None:
        nodes = list(rendezvous)
    elif plan.nnodes == 1:
        nodes = ["--standalone", "--nnodes=1", f"--nproc-per-node={plan.nproc_per_node}"]
    else:
        nodes = list(plan.torchrun_args)
    return [
        python or sys.executable, "-m", "qft_core.train.lifeline", *nodes, f"--max-restarts={max_restarts}",
        "-m", entry_module, "--job", str(job_path),
    ]


# What torchrun needs on every node: unbuffered output (progress streams as it happens), and a fresh rendezvous
# store for every restart: with the agent's store shared, restarted workers can read the dead attempt's addresses
# and hang in init_process_group (pytorch/pytorch#135712; seen here with gloo after a kill -9 and --max-restarts).
NODE_ENVIRONMENT = {"PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def worker_environment(plan: TrainingPlan, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for torchrun on this machine: NODE_ENVIRONMENT (what `base` sets stays), unless set the CPU
    cores divided among this node's processes (torchrun would pin every worker to one thread), and this process's
    pid, for the trainer to die with it."""
    env = {**NODE_ENVIRONMENT, **(os.environ if base is None else base)}
    env[LAUNCHER_PID] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    return env


def run_training(
    config: QftConfig,
    splits: Splits,
    run_dir: str | Path,
    nproc: int | None = None,
    entry_module: str = ENGINE_MODULE,
    stream: Callable[[str], None] | None = None,
    plan: TrainingPlan | None = None,
) -> TrainingSummary:
    """Prepare the run, train under torchrun (streaming each output line to `stream`) and return the summary.

    `nproc` overrides training.nproc; `plan` skips planning (the caller made one already).
    """
    if nproc is not None:
        config = config.model_copy(deep=True)
        config.training.nproc = nproc
    job_path = prepare_run(config, splits, run_dir, plan)
    return run_job(job_path, entry_module=entry_module, stream=stream)


def run_job(
    job_path: str | Path,
    entry_module: str = ENGINE_MODULE,
    stream: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> TrainingSummary:
    """Train a prepared job under torchrun on this node; `env` adds variables to the workers' environment.

    Raises TrainingFailed with the tail of the output when torchrun fails (after its restarts).
    """
    job = TrainingJob.read(job_path)
    command = torchrun_command(job_path, job.plan, entry_module, job.training.max_restarts)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**worker_environment(job.plan), **(env or {})},
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if stream is not None:
                stream(line)
        code = process.wait()
    finally:
        if process.poll() is None:
            # torchrun forwards SIGTERM to its workers and stops them.
            process.terminate()
            process.wait()
    summary_file = Path(job.output_dir) / SUMMARY_FILE
    if code != 0:
        raise TrainingFailed(f"training exited with code {code}: {' '.join(command)}", "\n".join(tail))
    if not summary_file.is_file():
        raise TrainingFailed(f"training finished without writing {summary_file}", "\n".join(tail))
    return TrainingSummary.read(summary_file)
