from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qft_core.records import ThinkingExample, ThinkingStructure
from qft_core.train.dataset import (
    DataPosition,
    DataShardError,
    EpochOrder,
    LengthReport,
    OverLength,
    ShardSampler,
    TokenizedDataset,
    TokenizedFormatError,
    TokenizedSplit,
    load_tokenized,
    nearest_rank_percentile,
    save_tokenized,
    tokenize_examples,
)


def example(example_id: str, answer: str, reasoning: str = "") -> ThinkingExample:
    return ThinkingExample(
        id=example_id,
        question="什么是AES？",
        answer=answer,
        source_file="corpus/a.md",
        source_line=1,
        thinking=[ThinkingStructure(text=reasoning)] if reasoning else [],
    )


def fake_encoder(lengths: dict[str, tuple[int, int]]):
    """An encode_example stand-in: id → (length, trained tokens at the end)."""

    def encode(example, tokenizer, *, loss_on_reasoning, mask_empty_thinking):
        length, trained = lengths[example.id]
        input_ids = [1000 + i for i in range(length)]
        labels = [-100] * (length - trained) + input_ids[length - trained :]
        return SimpleNamespace(input_ids=input_ids, labels=labels)

    return encode


def test_over_length_and_untrained_examples_are_excluded_and_reported(monkeypatch):
    lengths = {"a": (5, 2), "b": (12, 4), "c": (8, 3), "d": (7, 0), "e": (10, 10)}
    monkeypatch.setattr("qft_core.model.chat.encode_example", fake_encoder(lengths))
    examples = [example(name, "答") for name in lengths]

    split = tokenize_examples(examples, None, max_length=10, loss_on_reasoning=True, mask_empty_thinking=True)

    assert split.ids == ["a", "c", "e"]  # b is over, d trains nothing; e is exactly at the limit
    assert split.lengths() == [5, 8, 10]
    assert split.report == LengthReport(
        limit=10,
        examples=5,
        count=3,
        over_length=[OverLength(id="b", length=12)],
        without_targets=["d"],
        longest=12,
        mean_length=(5 + 12 + 8 + 7 + 10) / 5,
        p95_length=12,  # nearest rank: ceil(0.95 · 5) = 5th of [5, 7, 8, 10, 12]
        total_tokens=5 + 8 + 10,
        target_tokens=2 + 3 + 10,
    )
    input_ids, labels = split.sequence(1)
    assert input_ids.tolist() == [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007]
    assert labels.tolist() == [-100] * 5 + [1005, 1006, 1007]


def test_nearest_rank_percentile():
    assert nearest_rank_percentile([], 95) == 0
    assert nearest_rank_percentile(list(range(1, 21)), 95) == 19  # ceil(0.95 · 20) = 19th value
    assert nearest_rank_percentile([3], 95) == 3


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory):
    from qft_core.model.tokenizer import load_qwen3_tokenizer

    return load_qwen3_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_real_chat_encoding_keeps_labels_aligned_and_excludes_the_long_example(qwen3_tokenizer):
    from qft_core.model.chat import encode_example

    examples = [
        example("short", "AES是一种对称分组密码。", "先回忆定义。"),
        example("long", "AES" * 400, "很长的推理。" * 50),
    ]
    short = encode_example(examples[0], qwen3_tokenizer, loss_on_reasoning=True, mask_empty_thinking=True)
    long = encode_example(examples[1], qwen3_tokenizer, loss_on_reasoning=True, mask_empty_thinking=True)
    limit = len(short.input_ids) + 1
    assert len(long.input_ids) > limit

    split = tokenize_examples(
        examples, qwen3_tokenizer, max_length=limit, loss_on_reasoning=True, mask_empty_thinking=True
    )

    assert split.ids == ["short"]
    assert split.report.over_length == [OverLength(id="long", length=len(long.input_ids))]
    assert split.sequence(0)[0].tolist() == short.input_ids
    assert split.sequence(0)[1].tolist() == short.labels
    assert split.report.target_tokens == short.trained_tokens


def synthetic_split(lengths: list[int]) -> TokenizedSplit:
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 151_936, size=n).tolist() for n in lengths]
    labels = [[-100] * (n // 2) + ids[n // 2 :] for ids, n in zip(inputs, lengths)]
    report = LengthReport(limit=64, examples=len(lengths), count=len(lengths), total_tokens=sum(lengths))
    return TokenizedSplit.from_sequences([f"ex-{i}" for i in range(len(lengths))], inputs, labels, report)


def test_saved_split_reloads_identically(tmp_path):
    split = synthetic_split([3, 17, 1, 64, 9])
    split.ids[1] = "中文-id"

    path = save_tokenized(split, tmp_path / "train.safetensors")
    loaded = load_tokenized(path)

    assert loaded == split
    assert loaded.input_ids.dtype == np.int32 and loaded.offsets.tolist() == [0, 3, 20, 21, 85, 94]
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    assert not list(tmp_path.glob(".*.tmp"))


def test_empty_split_round_trips(tmp_path):
    split = synthetic_split([])

    assert load_tokenized(save_tokenized(split, tmp_path / "empty.safetensors")) == split


def test_file_with_inconsistent_offsets_is_rejected_naming_it(tmp_path):
    split = synthetic_split([4, 4])
    split.offsets = np.array([0, 4, 9], dtype=np.int64)
    path = save_tokenized(split, tmp_path / "bad.safetensors")

    with pytest.raises(TokenizedFormatError, match="bad.safetensors"):
        load_tokenized(path)


def test_non_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")

    with pytest.raises(TokenizedFormatError, match="junk.safetensors"):
        load_tokenized(path)


def test_dataset_yields_int64_tensors_of_each_sequence():
    split = synthetic_split([3, 5])
    dataset = TokenizedDataset(split)

    item = dataset[1]

    assert len(dataset) == 2 and dataset.lengths() == [3, 5]
    assert item["input_ids"].dtype == torch.int64
    assert item["input_ids"].tolist() == split.input_ids[3:8].tolist()
    assert item["labels"].tolist() == [-100, -100] + split.input_ids[5:8].tolist()


def test_epoch_order_depends_only_on_seed_and_epoch():
    order = EpochOrder(10, seed=7)

    assert order.order(0) == EpochOrder(10, seed=7).order(0)
    assert sorted(order.order(0)) == list(range(10))
    assert order.order(0) != order.order(1)
    assert order.order(0) != EpochOrder(10, seed=8).order(0)
    assert EpochOrder(4, seed=7, shuffle=False).order(3) == [0, 1, 2, 3]


def test_shards_are_disjoint_and_equal_sized():
    order = EpochOrder(11, seed=3)

    shards = [order.shard(rank, 3, epoch=2) for rank in range(3)]

    assert [len(shard) for shard in shards] == [3, 3, 3]  # 11 // 3; two items sit this epoch out
    assert len(set().union(*shards)) == 9
    assert sorted(sum(shards, [])) == sorted(order.order(2)[:9])


def test_sampler_resumes_exactly_where_the_position_says():
    sampler = ShardSampler(20, seed=5, rank=1, world=2)
    epoch0 = list(sampler)
    epoch1 = EpochOrder(20, seed=5).shard(1, 2, epoch=1)

    position = sampler.advance(7)
    assert position == DataPosition(epoch=0, index=7)
    resumed = ShardSampler(20, seed=5, rank=1, world=2, position=DataPosition.model_validate(sampler.state_dict()))
    assert list(resumed) == epoch0[7:]
    assert len(resumed) == 3

    assert resumed.advance(3 + 4) == DataPosition(epoch=1, index=4)
    assert list(resumed) == epoch1[4:]


def test_sampler_refuses_more_ranks_than_items():
    with pytest.raises(DataShardError, match="2 item"):
        ShardSampler(2, seed=0, rank=0, world=4)


def test_dataloader_with_sampler_serves_the_rank_shard():
    split = synthetic_split([2, 3, 4, 5])
    sampler = ShardSampler(4, seed=1, rank=0, world=2)

    loader = torch.utils.data.DataLoader(TokenizedDataset(split), sampler=sampler, batch_size=None)

    assert [len(item["input_ids"]) for item in loader] == [[2, 3, 4, 5][i] for i in sampler.indices()]
