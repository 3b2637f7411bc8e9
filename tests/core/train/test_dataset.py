import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from qft_core.data.terms import TermDictionary
from qft_core.model.chat import EncodedExample
from qft_core.records import CryptoTerm, ThinkingExample, ThinkingStructure
from qft_core.train.dataset import (
    ANSWER,
    REASONING,
    TERM,
    WORD_START,
    DataPosition,
    FORMAT,
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
    """An encode_example stand-in: id → (length, trained tokens at the end, all of them answer)."""

    def encode(example, tokenizer, *, loss_on_reasoning, mask_empty_thinking):
        length, trained = lengths[example.id]
        input_ids = [1000 + i for i in range(length)]
        labels = [-100] * (length - trained) + input_ids[length - trained :]
        return EncodedExample(input_ids, labels, (length - trained, length - trained), (length - trained, length))

    return encode


# A dictionary of four terms; 鬱 (in the made-up term 鬱金香算法) is rare enough that Qwen3 splits it into two byte
# tokens.
TERMS = TermDictionary(
    [
        CryptoTerm(id="sm4", zh="SM4分组密码", en="SM4", abbreviation="SM4", category="chinese_standard", complexity=2),
        CryptoTerm(id="block_cipher", zh="分组密码", en="block cipher", category="symmetric", complexity=2),
        CryptoTerm(id="key", zh="密钥", en="key", category="fundamentals", complexity=1),
        CryptoTerm(id="tulip", zh="鬱金香算法", en="tulip algorithm", category="classical", complexity=1),
    ]
)


def test_over_length_and_untrained_examples_are_excluded_and_reported(monkeypatch):
    lengths = {"a": (5, 2), "b": (12, 4), "c": (8, 3), "d": (7, 0), "e": (10, 10)}
    monkeypatch.setattr("qft_core.model.chat.encode_example", fake_encoder(lengths))
    examples = [example(name, "答") for name in lengths]

    tokenizer = SimpleNamespace()  # not byte-level BPE: no term flags
    split = tokenize_examples(
        examples, tokenizer, max_length=10, loss_on_reasoning=True, mask_empty_thinking=True, dictionary=TERMS
    )

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
    assert split.sequence_segments(1).tolist() == [0] * 5 + [ANSWER] * 3


def test_nearest_rank_percentile():
    assert nearest_rank_percentile([], 95) == 0
    assert nearest_rank_percentile(list(range(1, 21)), 95) == 19  # ceil(0.95 · 20) = 19th value
    assert nearest_rank_percentile([3], 95) == 3


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory):
    from qft_core.model.tokenizer import load_qwen3_tokenizer

    return load_qwen3_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def supervised_tokens(split: TokenizedSplit, index: int, tokenizer) -> list[tuple[str, int]]:
    """(decoded token, segment flags) of every supervised token of sequence `index`; a token holding part of a
    character decodes as '�'."""
    input_ids, labels = split.sequence(index)
    flags = split.sequence_segments(index)
    return [
        (tokenizer.decode([token]), int(flag))
        for token, label, flag in zip(input_ids.tolist(), labels.tolist(), flags.tolist(), strict=True)
        if label != -100
    ]


R, A, T = REASONING, ANSWER, ANSWER | TERM
# The same with the flag of a token that begins a jieba word of the answer.
AW, TW = A | WORD_START, T | WORD_START


def tokenize(tokenizer, answer: str, reasoning: str = "", *, loss_on_reasoning: bool = True) -> TokenizedSplit:
    return tokenize_examples(
        [example("hand", answer, reasoning)],
        tokenizer,
        max_length=100,
        loss_on_reasoning=loss_on_reasoning,
        mask_empty_thinking=True,
        dictionary=TERMS,
    )


def test_segment_flags_mark_reasoning_answer_and_term_tokens_by_hand(qwen3_tokenizer):
    split = tokenize(qwen3_tokenizer, "SM4是分组密码，密钥长128位。", "先回忆国密算法。")

    # Qwen3's tokens of the trained part, counted by hand: the reasoning (6 tokens, its last one fusing 。 with
    # the scaffold's \n), </think> and \n\n (no segment), the answer (15 tokens) and <|im_end|> (no segment).
    # The terms are SM4 (2 tokens), 分组密码 (分, 组, 密码) and 密钥 (密, 钥); SM4分组密码 is not in the text.
    # The answer's jieba words: SM4 | 是 | 分组密码 | ， | 密钥 | 长 | 128 | 位 | 。, each flagged on its first token.
    assert supervised_tokens(split, 0, qwen3_tokenizer) == [
        ("先", R), ("回忆", R), ("国", R), ("密", R), ("算法", R), ("。\n", R),
        ("</think>", 0), ("\n\n", 0),
        ("SM", TW), ("4", T), ("是", AW), ("分", TW), ("组", T), ("密码", T), ("，", AW), ("密", TW), ("钥", T),
        ("长", AW), ("1", AW), ("2", A), ("8", A), ("位", AW), ("。", AW),
        ("<|im_end|>", 0),
    ]  # fmt: skip
    flags = split.sequence_segments(0)
    assert [int(((flags & bit) != 0).sum()) for bit in (REASONING, ANSWER, TERM, WORD_START)] == [6, 15, 7, 9]
    assert not flags[split.sequence(0)[1] == -100].any()  # the prompt is in no segment


def test_a_character_split_over_byte_tokens_flags_every_byte_token_of_a_term(qwen3_tokenizer):
    split = tokenize(qwen3_tokenizer, "鬱金香算法很老。")

    answer = [(text, flag) for text, flag in supervised_tokens(split, 0, qwen3_tokenizer) if flag & ANSWER]
    # 鬱 is two byte tokens; both overlap the term, and the first begins the word 鬱金香算法.
    assert answer == [("�", TW), ("�", T), ("金", T), ("香", T), ("算法", T), ("很", AW), ("老", AW), ("。", AW)]


def test_reasoning_tokens_have_no_flags_when_the_reasoning_is_not_trained(qwen3_tokenizer):
    split = tokenize(qwen3_tokenizer, "密钥很长。", "先想一想。", loss_on_reasoning=False)

    assert [flag for _, flag in supervised_tokens(split, 0, qwen3_tokenizer)] == [0, 0, TW, T, AW, AW, 0]
    assert not (split.sequence_segments(0) & REASONING).any()


def synthetic_split(lengths: list[int]) -> TokenizedSplit:
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 151_936, size=n).tolist() for n in lengths]
    labels = [[-100] * (n // 2) + ids[n // 2 :] for ids, n in zip(inputs, lengths)]
    segments = [[0] * (n // 2) + rng.integers(1, 8, size=n - n // 2).tolist() for n in lengths]
    report = LengthReport(limit=64, examples=len(lengths), count=len(lengths), total_tokens=sum(lengths))
    return TokenizedSplit.from_sequences([f"ex-{i}" for i in range(len(lengths))], inputs, labels, report, segments)


def test_saved_split_reloads_identically(tmp_path):
    split = synthetic_split([3, 17, 1, 64, 9])
    split.ids[1] = "中文-id"

    path = save_tokenized(split, tmp_path / "train.safetensors")
    loaded = load_tokenized(path)

    assert loaded == split
    assert loaded.input_ids.dtype == np.int32 and loaded.offsets.tolist() == [0, 3, 20, 21, 85, 94]
    assert loaded.segments.dtype == np.uint8 and loaded.segments.any()
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    assert not list(tmp_path.glob(".*.tmp"))


def test_empty_split_round_trips(tmp_path):
    split = synthetic_split([])

    assert load_tokenized(save_tokenized(split, tmp_path / "empty.safetensors")) == split


def test_split_saved_before_segment_flags_loads_with_every_flag_zero(tmp_path):
    split = synthetic_split([4, 6])
    path = tmp_path / "old.safetensors"
    save_file(
        {"input_ids": split.input_ids, "labels": split.labels, "offsets": split.offsets},
        str(path),
        metadata={"format": FORMAT, "ids": json.dumps(split.ids), "report": split.report.model_dump_json()},
    )

    loaded = load_tokenized(path)

    assert loaded.segments.tolist() == [0] * 10
    assert np.array_equal(loaded.labels, split.labels)


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
    assert item["segments"].tolist() == split.segments[3:8].tolist()


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
