"""What each rank trains on per optimizer step: the split of the global batch into micro-batches and
accumulation steps (and its OOM back-off), the rank's sequences in data order, and their collation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qft_core.train.attention import SDPA, packed_model_inputs
from qft_core.train.dataset import IGNORE_INDEX, DataPosition, ShardSampler, TokenizedDataset
from qft_core.train.packing import collate_packed, collate_padded, pack_sequences
from qft_core.train.plan import TrainingPlan

# Written into the output folder when an OOM shrinks the micro-batch, so a restarted or resumed run keeps it.
LAYOUT_FILE = "batch_layout.json"

Sequence = dict[str, torch.Tensor]


class BatchError(ValueError):
    """A batch split that cannot work (indivisible, larger than the data, out of memory at micro-batch 1)."""


@dataclass(frozen=True)
class BatchLayout:
    """Sequences per forward (micro-batch) and forwards per optimizer step (accumulation) on one rank."""

    micro_batch_size: int
    grad_accum_steps: int

    @property
    def per_rank(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps

    def halved(self) -> BatchLayout:
        """The OOM back-off: half the micro-batch, twice the accumulation, the same sequences per step."""
        if self.micro_batch_size == 1:
            raise BatchError(
                "out of memory with micro-batch 1: lower model.max_length, turn on "
                "training.gradient_checkpointing, lower training.loss_chunk_tokens, or use more GPUs (FSDP)"
            )
        if self.micro_batch_size % 2:
            raise BatchError(f"out of memory with odd micro-batch {self.micro_batch_size}; cannot halve it evenly")
        return BatchLayout(self.micro_batch_size // 2, self.grad_accum_steps * 2)


def initial_layout(plan: TrainingPlan, world_size: int, output_dir: Path) -> BatchLayout:
    """The plan's split of its global batch over the ranks actually running, or a smaller micro-batch an
    earlier OOM in this output folder settled on."""
    per_rank, remainder = divmod(plan.global_batch_size, world_size)
    if remainder or per_rank % plan.micro_batch_size:
        raise BatchError(
            f"the plan's global batch {plan.global_batch_size} does not split into micro-batches of "
            f"{plan.micro_batch_size} over {world_size} ranks (planned for {plan.world_size}); re-plan"
        )
    layout = BatchLayout(plan.micro_batch_size, per_rank // plan.micro_batch_size)
    saved = output_dir / LAYOUT_FILE
    if saved.is_file():
        backed_off = BatchLayout(**json.loads(saved.read_text(encoding="utf-8")))
        if backed_off.per_rank == layout.per_rank and backed_off.micro_batch_size < layout.micro_batch_size:
            return backed_off
    return layout


def save_layout(layout: BatchLayout, output_dir: Path) -> None:
    (output_dir / LAYOUT_FILE).write_text(json.dumps(asdict(layout)), encoding="utf-8")


class StepFeed:
    """One rank's sequences for each optimizer step, in the deterministic order of its data shard.

    A step never straddles an epoch: a shard's tail too short for a whole step is skipped, so every world
    size that splits the same global batch trains on the same sequences in the same steps.
    """

    def __init__(self, dataset: TokenizedDataset, seed: int, rank: int, world_size: int, per_rank: int) -> None:
        self.dataset = dataset
        self.per_rank = per_rank
        self.sampler = ShardSampler(len(dataset), seed=seed, rank=rank, world=world_size)
        if self.sampler.shard_size < per_rank:
            raise BatchError(
                f"the training split has {len(dataset)} sequences, fewer than one global batch "
                f"({per_rank * world_size}); lower training.global_batch_size"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.shard_size // self.per_rank

    @property
    def position(self) -> DataPosition:
        return self.sampler.position

    @property
    def epoch_progress(self) -> float:
        """Epochs done, counting the current one's consumed fraction."""
        return self.position.epoch + self.position.index / (self.steps_per_epoch * self.per_rank)

    def restore(self, position: dict[str, int]) -> None:
        self.sampler.load_state_dict(position)

    def next_step(self) -> list[Sequence]:
        if len(self.sampler) < self.per_rank:
            self.sampler.advance(len(self.sampler))
        indices = self.sampler.indices()[: self.per_rank]
        self.sampler.advance(self.per_rank)
        return [self.dataset[index] for index in indices]


def micro_batches(sequences: list[Sequence], layout: BatchLayout) -> list[list[Sequence]]:
    size = layout.micro_batch_size
    return [sequences[start : start + size] for start in range(0, len(sequences), size)]


@dataclass
class MicroBatch:
    """One forward's model keyword arguments, and the target tokens' segment flags shaped like its labels."""

    inputs: dict[str, torch.Tensor]
    segments: torch.Tensor

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch({name: value.to(device) for name, value in self.inputs.items()}, self.segments.to(device))


def collate(
    sequences: list[Sequence], *, packing: bool, row_tokens: int, pad_id: int, dtype: torch.dtype, attention: str = SDPA
) -> MicroBatch:
    """One micro-batch: sequences packed into rows of at most `row_tokens`, kept apart as `attention` needs (a
    block-diagonal mask in `dtype`, or restarting positions for flex attention), or one padded row each."""
    if packing:
        rows = pack_sequences(sequences, row_tokens)
        batch = collate_packed([[sequences[i] for i in row] for row in rows], pad_id=pad_id)
        inputs = packed_model_inputs(batch, attention, dtype)
    else:
        batch = collate_padded(sequences, pad_id)
        inputs = batch.model_inputs()
    # Flash attention flattens the rows; the flags follow the labels' layout, element for element.
    return MicroBatch(inputs, batch.segments.reshape(inputs["labels"].shape))


def count_tokens(sequences: list[Sequence]) -> tuple[int, int]:
    """(input tokens, scored targets) of some sequences; a sequence's first label is never scored."""
    tokens = sum(len(sequence["input_ids"]) for sequence in sequences)
    targets = sum(int((sequence["labels"][1:] != IGNORE_INDEX).sum()) for sequence in sequences)
    return tokens, targets
