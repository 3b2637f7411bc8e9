"""Tokenized splits: encoded before any process group starts, length-checked, labelled by segment (reasoning,
answer, cryptography term), stored without pickle, and served to each rank in a deterministic, resumable order."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from qft_core.publish import publishing_file
from qft_core.records import ThinkingExample

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary
    from qft_core.model.chat import EncodedExample
    from qft_core.train.token_pieces import TokenPieces

IGNORE_INDEX = -100
# Files written before segments existed have no "segments" array and load with every flag 0.
FORMAT = "qft-tokenized-v1"

# Segment flags of a token (bits of `TokenizedSplit.segments`), set on supervised tokens (label != -100) only:
# the final turn's reasoning, its answer, the answer tokens whose characters overlap a cryptography term the
# dictionary finds in the answer, and the answer tokens that begin a jieba word (the answer token whose first
# character lies in a word no earlier token started in). The `</think>` scaffold and `<|im_end|>` are supervised but
# in no segment.
REASONING = 1
ANSWER = 2
TERM = 4
WORD_START = 8


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
    """Sequences stored flat: sequence i is `input_ids[offsets[i]:offsets[i + 1]]` (labels and segment flags
    likewise)."""

    ids: list[str]
    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    report: LengthReport
    segments: np.ndarray

    @classmethod
    def from_sequences(
        cls,
        ids: list[str],
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]],
        report: LengthReport,
        segments: Sequence[Sequence[int]] | None = None,
    ) -> TokenizedSplit:
        """A split from per-sequence lists; without `segments` every token's segment flags are 0."""
        lengths = [len(sequence) for sequence in input_ids]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        flags = np.zeros(total, dtype=np.uint8)
        if segments is not None:
            flags = np.fromiter((flag for row in segments for flag in row), dtype=np.uint8, count=total)
        return cls(
            ids=list(ids),
            input_ids=_flatten(input_ids, total),
            labels=_flatten(labels, total),
            offsets=offsets,
            report=report,
            segments=flags,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.input_ids[start:end], self.labels[start:end]

    def sequence_segments(self, index: int) -> np.ndarray:
        return self.segments[int(self.offsets[index]) : int(self.offsets[index + 1])]

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
                    (self.segments, other.segments),
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
    dictionary: TermDictionary,
) -> TokenizedSplit:
    """Encode every example with its segment flags; those longer than `max_length` or with no trained token are
    excluded and reported, never truncated.

    Terms come from `dictionary` (the configured `paths.term_dictionary`). They are flagged only with
    a byte-level BPE tokenizer, whose tokens map exactly onto characters (`TokenPieces`); with any other tokenizer
    the TERM flag stays 0 and the term accuracy is not measured.
    """
    # Imported here: the chat format pulls in transformers and the tokenizer code, and the dictionary OpenCC,
    # which ranks that only load an already tokenized split never need.
    from qft_core.data.chinese import use_term_dictionary
    from qft_core.model.chat import encode_example
    from qft_core.train.token_pieces import TokenPieces

    # Words for the word-level accuracy come from jieba with the terms as words.
    use_term_dictionary(dictionary)
    pieces = TokenPieces.of(tokenizer)
    kept_ids: list[str] = []
    kept_inputs: list[list[int]] = []
    kept_labels: list[list[int]] = []
    kept_segments: list[list[int]] = []
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
            kept_segments.append(segment_flags(encoded, pieces, dictionary, what=f"example {example.id}"))
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
    return TokenizedSplit.from_sequences(kept_ids, kept_inputs, kept_labels, report, kept_segments)


def segment_flags(
    encoded: EncodedExample, pieces: TokenPieces | None, dictionary: TermDictionary, what: str = "example"
) -> list[int]:
    """Each token's segment flags (REASONING | ANSWER | TERM | WORD_START), 0 where the label is -100.

    Reasoning and answer are the chat encoding's token spans. A TERM token is an answer token whose characters
    overlap a term occurrence `dictionary.find` reports in the answer tokens' text: a term cut mid-token flags
    every token it touches, and a character split over several byte tokens flags all of them. A WORD_START token
    is the first answer token whose first character falls in a jieba word of the answer text (`tokenize_examples`
    loads the dictionary's terms into jieba as words); the tokens up to the next WORD_START are that word's, so a token spanning a word
    boundary belongs to the word it starts in, and the byte tokens of one character to one word.
    """
    flags = [0] * len(encoded.input_ids)
    for index in range(*encoded.reasoning_span):
        flags[index] |= REASONING
    answer_start, answer_end = encoded.answer_span
    for index in range(answer_start, answer_end):
        flags[index] |= ANSWER
    if pieces is not None and answer_start < answer_end:
        text, spans = pieces.char_spans(encoded.input_ids, what)
        text_start, text_end = spans[answer_start][0], spans[answer_end - 1][1]
        for match in dictionary.find(text[text_start:text_end]):
            term_start, term_end = text_start + match.start, text_start + match.end
            for index in range(answer_start, answer_end):
                token_start, token_end = spans[index]
                if token_start < term_end and term_start < token_end:
                    flags[index] |= TERM
        word_of = _word_index_of_chars(text[text_start:text_end])
        previous_word = None
        for index in range(answer_start, answer_end):
            word = word_of[spans[index][0] - text_start] if spans[index][0] < text_end else previous_word
            if word != previous_word:
                flags[index] |= WORD_START
            previous_word = word
    return [flag if label != IGNORE_INDEX else 0 for flag, label in zip(flags, encoded.labels, strict=True)]


def _word_index_of_chars(text: str) -> list[int]:
    """For each character of `text`, the index of the jieba word it is in; whitespace belongs to the word before."""
    from qft_core.data.chinese import segment

    word_of, cursor = [0] * len(text), 0
    for index, word in enumerate(segment(text)):
        start = text.find(word, cursor)
        end = start + len(word)
        word_of[cursor:end] = [index] * (end - cursor)
        cursor = end
    word_of[cursor:] = [word_of[cursor - 1] if cursor else 0] * (len(text) - cursor)
    return word_of


def save_tokenized(split: TokenizedSplit, path: str | Path) -> Path:
    """Write a split as one safetensors file (flat int32 tokens and labels, uint8 segment flags, int64 offsets; ids
    and report in its metadata), atomically."""
    path = Path(path)
    with publishing_file(path) as staging:
        save_file(
            {"input_ids": split.input_ids, "labels": split.labels, "offsets": split.offsets, "segments": split.segments},
            str(staging),
            metadata={
                "format": FORMAT,
                "ids": json.dumps(split.ids, ensure_ascii=False),
                "report": split.report.model_dump_json(),
            },
        )
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
        segments=arrays.get("segments", np.zeros(len(arrays["input_ids"]), dtype=np.uint8)),
    )
    offsets = split.offsets
    consistent = (
        len(offsets) == len(split.ids) + 1
        and offsets[0] == 0
        and offsets[-1] == len(split.input_ids) == len(split.labels) == len(split.segments)
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not consistent:
        raise TokenizedFormatError(
            f"{path}: offsets do not match {len(split.ids)} ids and {len(split.input_ids)} tokens "
            f"({len(split.labels)} labels, {len(split.segments)} segment flags)"
        )
    return split


class TokenizedDataset(torch.utils.data.Dataset):
    """Item i of a tokenized split as {'input_ids', 'labels', 'segments'}: 1-D int64 tensors (segment flags
    uint8)."""

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids, labels = self.split.sequence(index)
        return {
            "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "segments": torch.from_numpy(self.split.sequence_segments(index).copy()),
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
