"""Builders for engine and launch tests: a tiny Qwen3 on disk, synthetic tokenized splits, a CPU plan, a job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.config import ModelConfig, TrainingConfig
from qft_core.train.dataset import LengthReport, TokenizedSplit, save_tokenized
from qft_core.train.job import TrainingJob
from qft_core.train.plan import LoraSettings, TrainingPlan

SMALL_VOCAB = 512
PAD_ID = 0
ALPHABET_START = 100
TARGETS = ["q_proj", "v_proj", "down_proj"]
# What rank_dump_entry prints as each worker starts.
WORKER_STARTS = "qft test worker starts"


def write_tiny_qwen3(directory: Path, vocab_size: int = SMALL_VOCAB, hidden: int = 32, seed: int = 0) -> Path:
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def write_synthetic_split(path: Path, count: int, seed: int) -> Path:
    """Sequences of 8 to 24 tokens that count up by a per-sequence stride through a 16-token alphabet (quickly
    learnable: even the alphabet alone cuts the loss from ln(vocab) towards ln(16)); the first 3 are prompt."""
    rng = np.random.default_rng(seed)
    inputs, labels, ids = [], [], []
    for number in range(count):
        length = int(rng.integers(8, 25))
        start, stride = int(rng.integers(0, 16)), int(rng.integers(1, 4))
        sequence = [ALPHABET_START + (start + stride * k) % 16 for k in range(length)]
        inputs.append(sequence)
        labels.append([-100] * 3 + sequence[3:])
        ids.append(f"synthetic-{seed}-{number}")
    report = LengthReport(
        limit=64,
        examples=count,
        count=count,
        longest=max(map(len, inputs)),
        total_tokens=sum(map(len, inputs)),
        target_tokens=sum(len(s) - 3 for s in inputs),
    )
    return save_tokenized(TokenizedSplit.from_sequences(ids, inputs, labels, report), path)


def cpu_plan(
    world_size: int = 1, micro: int = 2, accum: int = 2, strategy: str = "ddp", seq_len: int = 64
) -> TrainingPlan:
    return TrainingPlan(
        world_size=world_size,
        nproc_per_node=world_size,
        nnodes=1,
        backend="gloo",
        device="cpu",
        strategy=strategy,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        global_batch_size=micro * accum * world_size,
        requested_global_batch_size=micro * accum * world_size,
        seq_len=seq_len,
        dtype="float32",
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=TARGETS),
        lora_params=1,
        memory_gib={},
        fits=True,
        tokens_per_step=seq_len * micro * accum * world_size,
        torchrun_args=[],
        explanations=["test plan"],
    )


def make_job(
    model_dir: Path, train: Path, validation: Path | None, output: Path, plan: TrainingPlan, **training: object
) -> TrainingJob:
    settings = {
        "learning_rate": 1e-1,
        "warmup_ratio": 0.1,
        "schedule": "cosine",
        "max_steps": 8,
        "checkpoint_every": 2,
        "keep_last": 2,
        "eval_every": 4,
        "seed": 7,
        **training,
    }
    return TrainingJob(
        model_dir=str(model_dir),
        train_data=str(train),
        validation_data=str(validation) if validation else None,
        output_dir=str(output),
        pad_token_id=PAD_ID,
        model=ModelConfig(name=str(model_dir)),
        training=TrainingConfig(**settings),
        plan=plan,
    )
