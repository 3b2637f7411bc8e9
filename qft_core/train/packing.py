"""Sequence packing without cross-contamination: first-fit-decreasing rows, and batches whose attention mask,
positions and labels keep every packed sequence to itself.

Labels follow the transformers convention: they align with `input_ids` and the loss scores position t against
labels[t + 1]. So the label at each sequence's first position is set to -100: the last token of the sequence
before it must not learn to predict it.

Items may carry `segments` (the dataset's per-token segment flags: reasoning, answer, term); batches carry them
aligned with the labels, 0 wherever the label is -100 (padding, each sequence's first position), so validation
can score the same packed rows training runs on instead of a second, unpacked layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch

IGNORE_INDEX = -100

Item = Mapping[str, torch.Tensor | Sequence[int]]


class PackingError(ValueError):
    """Sequences that cannot be packed as asked; the message names the sequence."""


def _length(item: int | Item | Sequence[int] | torch.Tensor) -> int:
    if isinstance(item, int):
        return item
    if isinstance(item, Mapping):
        return len(item["input_ids"])
    return len(item)


def pack_sequences(items: Sequence[int | Item | Sequence[int] | torch.Tensor], max_tokens: int) -> list[list[int]]:
    """Group sequences (given as lengths, token sequences or {'input_ids': …} items) into rows of at most
    `max_tokens` tokens by first-fit decreasing; returns each row's item indices. Ties keep input order, so the
    result depends only on the lengths."""
    if max_tokens < 1:
        raise PackingError(f"max_tokens must be at least 1, got {max_tokens}")
    lengths = [_length(item) for item in items]
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > max_tokens:
            raise PackingError(f"sequence {index} has {length} tokens, more than a row's {max_tokens}")
        if length == 0:
            raise PackingError(f"sequence {index} is empty")
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(max_tokens)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


@dataclass
class PackedBatch:
    """B rows of T tokens, each row several whole sequences followed by padding; `segments` are the tokens'
    segment flags (uint8, 0 for items without them).

    `block_mask` (B, 1, T, T) is True where a query may attend a key: causal and inside the same sequence
    (a row's padding is one more sequence, so no query row is empty). `position_ids` restart at 0 for every
    sequence. `cu_seqlens` are the cumulative segment lengths over the flattened B·T tokens (padding segments
    included), what flash-attention's varlen kernels take; `seq_lengths` lists each row's real sequences.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    sequence_ids: torch.Tensor
    block_mask: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    seq_lengths: list[list[int]]
    segments: torch.Tensor

    @property
    def num_target_tokens(self) -> int:
        """Positions whose next-token label is trained (what the summed loss counts)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The block mask as transformers' eager attention adds it to the scores: 0 or the dtype's minimum."""
        zero = torch.zeros((), dtype=dtype, device=self.block_mask.device)
        blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=self.block_mask.device)
        return torch.where(self.block_mask, zero, blocked)

    def flash_kwargs(self) -> dict[str, torch.Tensor | int]:
        """transformers' varlen flash-attention arguments for the flattened (1, B·T) batch."""
        return {
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
        }

    def model_inputs(
        self, attention: Literal["eager", "sdpa", "flash"] = "sdpa", dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments for a causal LM. A 4D mask reaches eager and sdpa attention unchanged (transformers
        5 returns a prepared 4D mask as is); flash attention gets the batch flattened to one row, no mask,
        and finds the sequences from the restarting position ids."""
        if attention == "flash":
            return {
                "input_ids": self.input_ids.reshape(1, -1),
                "labels": self.labels.reshape(1, -1),
                "position_ids": self.position_ids.reshape(1, -1),
            }
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
            "attention_mask": self.additive_mask(dtype),
        }

    def to(self, device: torch.device | str) -> PackedBatch:
        tensors = {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **{name: tensor.to(device) for name, tensor in tensors.items()})


def _as_tensor(values: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long)


def _item_segments(item: Item, length: int, where: str) -> torch.Tensor | None:
    """The item's segment flags, checked against its length; None when it has none."""
    if "segments" not in item:
        return None
    flags = torch.as_tensor(item["segments"], dtype=torch.uint8)
    if flags.shape != (length,):
        raise PackingError(f"{where}: {length} input ids but {len(flags)} segment flags")
    return flags


def collate_packed(
    rows: Sequence[Item] | Sequence[Sequence[Item]], *, pad_id: int = 0, row_length: int | None = None
) -> PackedBatch:
    """Pack rows of {'input_ids', 'labels'} items (or one row, given as a plain list of items) into a batch;
    rows are right-padded to `row_length` (default: the longest row)."""
    if rows and isinstance(rows[0], Mapping):
        rows = [rows]
    if not rows or any(len(row) == 0 for row in rows):
        raise PackingError("every packed row needs at least one sequence")
    totals = [sum(len(item["input_ids"]) for item in row) for row in rows]
    width = row_length or max(totals)
    if max(totals) > width:
        raise PackingError(f"row {totals.index(max(totals))} has {max(totals)} tokens, more than row_length {width}")
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    sequence_ids = torch.zeros((batch, width), dtype=torch.long)
    segment_flags = torch.zeros((batch, width), dtype=torch.uint8)
    attention_segments: list[int] = []
    seq_lengths: list[list[int]] = []
    for b, row in enumerate(rows):
        start = 0
        lengths = []
        for number, item in enumerate(row):
            ids, item_labels = _as_tensor(item["input_ids"]), _as_tensor(item["labels"])
            if ids.shape != item_labels.shape:
                raise PackingError(f"row {b} sequence {number}: {len(ids)} input ids but {len(item_labels)} labels")
            end = start + len(ids)
            input_ids[b, start:end] = ids
            labels[b, start:end] = item_labels
            labels[b, start] = IGNORE_INDEX
            flags = _item_segments(item, len(ids), f"row {b} sequence {number}")
            if flags is not None:
                segment_flags[b, start:end] = flags
                segment_flags[b, start] = 0
            position_ids[b, start:end] = torch.arange(len(ids))
            sequence_ids[b, start:end] = number
            lengths.append(len(ids))
            start = end
        if start < width:
            position_ids[b, start:] = torch.arange(width - start)
            sequence_ids[b, start:] = len(row)
        seq_lengths.append(lengths)
        attention_segments += lengths + ([width - start] if start < width else [])
    same_sequence = sequence_ids[:, :, None] == sequence_ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    cu_seqlens = torch.zeros(len(attention_segments) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(attention_segments), dim=0)
    return PackedBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        sequence_ids=sequence_ids,
        block_mask=(same_sequence & causal)[:, None],
        cu_seqlens=cu_seqlens,
        max_seqlen=max(attention_segments),
        seq_lengths=seq_lengths,
        segments=segment_flags,
    )


@dataclass
class PaddedBatch:
    """One sequence per row, right-padded; `attention_mask` is 1 on real tokens, 0 on padding; `segments` are the
    tokens' segment flags (uint8, 0 on padding and for items without them)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    segments: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}

    def to(self, device: torch.device | str) -> PaddedBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            attention_mask=self.attention_mask.to(device),
            segments=self.segments.to(device),
        )


def collate_padded(seqs: Sequence[Item], pad_id: int) -> PaddedBatch:
    """The unpacked path: each sequence its own row, right-padded with `pad_id`, labels -100 on the padding."""
    if not seqs:
        raise PackingError("cannot collate an empty batch")
    lengths = [len(item["input_ids"]) for item in seqs]
    width = max(lengths)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    segment_flags = torch.zeros((len(seqs), width), dtype=torch.uint8)
    for row, (item, length) in enumerate(zip(seqs, lengths, strict=True)):
        input_ids[row, :length] = _as_tensor(item["input_ids"])
        labels[row, :length] = _as_tensor(item["labels"])
        attention_mask[row, :length] = 1
        flags = _item_segments(item, length, f"sequence {row}")
        if flags is not None:
            segment_flags[row, :length] = flags
    return PaddedBatch(
        input_ids=input_ids, labels=labels, attention_mask=attention_mask, lengths=lengths, segments=segment_flags
    )
