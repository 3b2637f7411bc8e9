"""Tokenized splits: encoded before any process group starts, length-checked, stored without pickle, and served
to each rank in a deterministic, resumable order."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from qft_core.records import ThinkingExample

IGNORE_INDEX = -100
FORMAT = "qft-tokenized-v1"


class TokenizedFormatError(ValueError):
    """A tokenized-split file that is unreadable or inconsistent; the message names the file."""


class DataShardError(ValueError):
    """A split that cannot be divided among the ranks."""


class OverLength(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    length: int


class LengthReport(BaseModel):
    """Token lengths of a split. Length statistics cover every encoded example (so the excluded ones show how
    far over they are); token totals cover the kept ones. p95 is the nearest-rank 95th percentile."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1)
    examples: int = Field(ge=0)
    count: int = Field(ge=0)
    over_length: list[OverLength] = Field(default_factory=list)
    without_targets: list[str] = Field(default_factory=list)
    longest: int = Field(0, ge=0)
    mean_length: float = Field(0.0, ge=0)
    p95_length: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)
    target_tokens: int = Field(0, ge=0)


def nearest_rank_percentile(values: Sequence[int], percent: float) -> int:
    """The smallest value with at least `percent`% of the values at or below it; 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


@dataclass(eq=False)
class TokenizedSplit:
    """Sequences stored flat: sequence i is `input_ids[offsets[i]:offsets[i + 1]]` (labels likewise)."""

    ids: list[str]
    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    report: LengthReport

    @classmethod
    def from_sequences(
        cls, ids: list[str], input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], report: LengthReport
    ) -> TokenizedSplit:
        lengths = [len(sequence) for sequence in input_ids]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        return cls(
            ids=list(ids),
            input_ids=_flatten(input_ids, total),
            labels=_flatten(labels, total),
            offsets=offsets,
            report=report,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.input_ids[start:end], self.labels[start:end]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenizedSplit):
            return NotImplemented
        return (
            self.ids == other.ids
            and self.report == other.report
            and all(
                a.dtype == b.dtype and np.array_equal(a, b)
                for a, b in (
                    (self.input_ids, other.input_ids),
                    (self.labels, other.labels),
                    (self.offsets, other.offsets),
                )
            )
        )


def _flatten(rows: Sequence[Sequence[int]], total: int) -> np.ndarray:
    return np.fromiter((token for row in rows for token in row), dtype=np.int32, count=total)


def tokenize_examples(
    examples: Sequence[ThinkingExample],
    tokenizer: Any,
    *,
    max_length: int,
    loss_on_reasoning: bool,
    mask_empty_thinking: bool,
) -> TokenizedSplit:
    """Encode every example; those longer than `max_length` or with no trained token are excluded and reported,
    never truncated."""
    # Imported here: the chat format pulls in transformers and the tokenizer code, which ranks that only load
    # an already tokenized split never need.
    from qft_core.model.chat import encode_example

    kept_ids: list[str] = []
    kept_inputs: list[list[int]] = []
    kept_labels: list[list[int]] = []
    over_length: list[OverLength] = []
    without_targets: list[str] = []
    all_lengths: list[int] = []
    for example in examples:
        encoded = encode_example(
            example, tokenizer, loss_on_reasoning=loss_on_reasoning, mask_empty_thinking=mask_empty_thinking
        )
        length = len(encoded.input_ids)
        all_lengths.append(length)
        if length > max_length:
            over_length.append(OverLength(id=example.id, length=length))
        elif all(label == IGNORE_INDEX for label in encoded.labels):
            without_targets.append(example.id)
        else:
            kept_ids.append(example.id)
            kept_inputs.append(list(encoded.input_ids))
            kept_labels.append(list(encoded.labels))
    report = LengthReport(
        limit=max_length,
        examples=len(all_lengths),
        count=len(kept_ids),
        over_length=over_length,
        without_targets=without_targets,
        longest=max(all_lengths, default=0),
        mean_length=sum(all_lengths) / len(all_lengths) if all_lengths else 0.0,
        p95_length=nearest_rank_percentile(all_lengths, 95),
        total_tokens=sum(len(ids) for ids in kept_inputs),
        target_tokens=sum(label != IGNORE_INDEX for labels in kept_labels for label in labels),
    )
    return TokenizedSplit.from_sequences(kept_ids, kept_inputs, kept_labels, report)


def save_tokenized(split: TokenizedSplit, path: str | Path) -> Path:
    """Write a split as one safetensors file (flat int32 tokens and labels, int64 offsets; ids and report in its
    metadata), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(
        {"input_ids": split.input_ids, "labels": split.labels, "offsets": split.offsets},
        str(temporary),
        metadata={
            "format": FORMAT,
            "ids": json.dumps(split.ids, ensure_ascii=False),
            "report": split.report.model_dump_json(),
        },
    )
    os.replace(temporary, path)
    return path


def load_tokenized(path: str | Path) -> TokenizedSplit:
    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise TokenizedFormatError(f"{path}: cannot read tokenized split: {error}") from None
    if metadata.get("format") != FORMAT:
        raise TokenizedFormatError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    missing = {"input_ids", "labels", "offsets"} - arrays.keys()
    if missing:
        raise TokenizedFormatError(f"{path}: missing array(s) {sorted(missing)}")
    split = TokenizedSplit(
        ids=json.loads(metadata["ids"]),
        input_ids=arrays["input_ids"],
        labels=arrays["labels"],
        offsets=arrays["offsets"],
        report=LengthReport.model_validate_json(metadata["report"]),
    )
    offsets = split.offsets
    consistent = (
        len(offsets) == len(split.ids) + 1
        and offsets[0] == 0
        and offsets[-1] == len(split.input_ids) == len(split.labels)
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not consistent:
        raise TokenizedFormatError(
            f"{path}: offsets do not match {len(split.ids)} ids and {len(split.input_ids)} tokens"
        )
    return split


class TokenizedDataset(torch.utils.data.Dataset):
    """Item i of a tokenized split as {'input_ids', 'labels'}: 1-D int64 tensors."""

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids, labels = self.split.sequence(index)
        return {
            "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
        }

    def lengths(self) -> list[int]:
        return self.split.lengths()


class DataPosition(BaseModel):
    """Where a rank is in the data: `index` items of its shard of epoch `epoch` are consumed."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(0, ge=0)
    index: int = Field(0, ge=0)


class EpochOrder:
    """The order of `num_items` items in each epoch: a permutation fixed by (seed, epoch), or identity."""

    def __init__(self, num_items: int, seed: int, *, shuffle: bool = True) -> None:
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        return generator.permutation(self.num_items).tolist()

    def shard_size(self, world: int) -> int:
        return self.num_items // world

    def shard(self, rank: int, world: int, epoch: int = 0) -> list[int]:
        """Every `world`-th item of the epoch's order from `rank` on; the last num_items % world items of the
        order are left out so all shards have the same size and none overlap."""
        if not 0 <= rank < world:
            raise DataShardError(f"rank {rank} is outside a world of {world}")
        return self.order(epoch)[: self.shard_size(world) * world][rank::world]


class ShardSampler(torch.utils.data.Sampler[int]):
    """One rank's items for the current epoch, from its data position on. Iterating does not move the
    position: the training loop records what it consumed (`advance`) and saves that with the checkpoint."""

    def __init__(
        self,
        num_items: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        position: DataPosition | None = None,
    ) -> None:
        if num_items < world:
            raise DataShardError(f"{num_items} item(s) cannot give each of {world} ranks at least one")
        self.order = EpochOrder(num_items, seed, shuffle=shuffle)
        self.rank = rank
        self.world = world
        self.position = position or DataPosition()
        if self.position.index > self.shard_size:
            raise DataShardError(f"data position index {self.position.index} is past the shard size {self.shard_size}")

    @property
    def shard_size(self) -> int:
        return self.order.shard_size(self.world)

    def indices(self) -> list[int]:
        return self.order.shard(self.rank, self.world, self.position.epoch)[self.position.index :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.shard_size - self.position.index

    def advance(self, consumed: int) -> DataPosition:
        """Move the position on by `consumed` items, into later epochs as needed, and return it."""
        total = self.position.epoch * self.shard_size + self.position.index + consumed
        self.position = DataPosition(epoch=total // self.shard_size, index=total % self.shard_size)
        return self.position

    def state_dict(self) -> dict[str, int]:
        return self.position.model_dump()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = DataPosition.model_validate(state)
