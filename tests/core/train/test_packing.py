import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.train.packing import (
    IGNORE_INDEX,
    PackingError,
    collate_packed,
    collate_padded,
    pack_sequences,
)

VOCAB = 512


def test_first_fit_decreasing_packs_by_hand():
    # sorted: 8(#2) 7(#4) 5(#0) 3(#1) 2(#3) 1(#5); 8→row0 (2 left), 7→row1 (3 left), 5→row2 (5 left),
    # 3→row1 (first with room ≥ 3), 2→row0, 1→row2
    assert pack_sequences([5, 3, 8, 2, 7, 1], max_tokens=10) == [[2, 3], [4, 1], [0, 5]]


def test_packing_accepts_sequences_and_items_and_is_deterministic():
    lengths = [4, 4, 4, 2, 6]
    seqs = [list(range(n)) for n in lengths]
    items = [{"input_ids": torch.zeros(n)} for n in lengths]

    rows = pack_sequences(lengths, max_tokens=8)

    assert rows == [[4, 3], [0, 1], [2]]  # equal lengths keep input order
    assert pack_sequences(seqs, 8) == rows == pack_sequences(items, 8)
    assert sorted(i for row in rows for i in row) == list(range(5))
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)


def test_sequence_longer_than_a_row_is_named():
    with pytest.raises(PackingError, match="sequence 1 has 9 tokens"):
        pack_sequences([3, 9], max_tokens=8)


def item(ids: list[int], masked: int = 0) -> dict[str, torch.Tensor]:
    ids_tensor = torch.tensor(ids)
    labels = ids_tensor.clone()
    labels[:masked] = IGNORE_INDEX
    return {"input_ids": ids_tensor, "labels": labels}


def test_packed_row_restarts_positions_masks_boundaries_and_blocks_attention():
    batch = collate_packed([item([11, 12, 13]), item([21, 22]), item([31, 32, 33, 34], masked=2)], pad_id=0)

    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # every sequence's first label is -100, so 13 never learns to predict 21, nor 22 to predict 31
    assert batch.labels.tolist() == [[-100, 12, 13, -100, 22, -100, -100, 33, 34]]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert batch.seq_lengths == [[3, 2, 4]]
    assert batch.max_seqlen == 4
    assert batch.num_target_tokens == 2 + 1 + 2
    expected = torch.zeros(9, 9, dtype=torch.bool)
    for start, end in [(0, 3), (3, 5), (5, 9)]:
        expected[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
    assert torch.equal(batch.block_mask[0, 0], expected)
    additive = batch.additive_mask(torch.float32)
    assert additive[0, 0, 4, 3] == 0 and additive[0, 0, 4, 2] == torch.finfo(torch.float32).min


def test_rows_are_padded_as_their_own_segment():
    batch = collate_packed([[item([1, 2, 3])], [item([4]), item([5])]], pad_id=7, row_length=4)

    assert batch.input_ids.tolist() == [[1, 2, 3, 7], [4, 5, 7, 7]]
    assert batch.labels.tolist() == [[-100, 2, 3, -100], [-100, -100, -100, -100]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0], [0, 0, 0, 1]]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 5, 6, 8]
    assert batch.seq_lengths == [[3], [1, 1]]
    assert batch.block_mask[1, 0, 3].tolist() == [False, False, True, True]  # padding sees only padding
    flat = batch.model_inputs("flash")
    assert flat["input_ids"].shape == (1, 8) and "attention_mask" not in flat


def test_mismatched_labels_are_rejected():
    with pytest.raises(PackingError, match="row 0 sequence 1"):
        collate_packed([item([1, 2]), {"input_ids": torch.tensor([3, 4]), "labels": torch.tensor([4])}])


def test_padded_collate_pads_right_and_ignores_padding():
    batch = collate_padded([item([1, 2, 3]), item([4])], pad_id=9)

    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch.labels.tolist() == [[1, 2, 3], [4, -100, -100]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.lengths == [3, 1]


def flagged(ids: list[int], flags: list[int]) -> dict[str, torch.Tensor]:
    return {**item(ids), "segments": torch.tensor(flags, dtype=torch.uint8)}


def test_packed_rows_carry_segment_flags_zeroed_where_a_sequence_starts_and_on_padding():
    batch = collate_packed([[flagged([1, 2, 3], [1, 2, 6])], [flagged([4, 5], [2, 2]), item([6, 7])]], row_length=5)

    # 1 and 4 start their sequences (never a target); item [6, 7] has no flags; padding has none
    assert batch.segments.tolist() == [[0, 2, 6, 0, 0], [0, 2, 0, 0, 0]]
    assert batch.segments.dtype == torch.uint8
    assert batch.to("cpu").segments.tolist() == batch.segments.tolist()


def test_padded_batch_carries_segment_flags_and_zero_padding():
    batch = collate_padded([flagged([1, 2, 3], [0, 2, 6]), flagged([4], [1])], pad_id=9)

    assert batch.segments.tolist() == [[0, 2, 6], [1, 0, 0]]


def test_segment_flags_of_the_wrong_length_are_rejected():
    with pytest.raises(PackingError, match="row 0 sequence 0: 2 input ids but 3 segment flags"):
        collate_packed([flagged([1, 2], [0, 1, 2])])
    with pytest.raises(PackingError, match="sequence 1: 1 input ids but 2 segment flags"):
        collate_padded([item([1]), flagged([1], [0, 1])], pad_id=0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        max_position_embeddings=256,
    )
    return Qwen3ForCausalLM(config).float().eval()


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over trained positions (position t scored against labels[t + 1])."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).double(), labels[:, 1:].reshape(-1), reduction="sum"
    )


def sequences() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    lengths, masked = [7, 12, 5, 9], [2, 4, 0, 3]
    return [item(torch.randint(0, VOCAB, (n,), generator=generator).tolist(), m) for n, m in zip(lengths, masked)]


def unpacked(model, seqs):
    """Each sequence on its own: its logits and its summed loss."""
    with torch.no_grad():
        outputs = [model(input_ids=s["input_ids"][None]).logits[0] for s in seqs]
    loss = sum(summed_loss(logits[None], s["labels"][None]) for logits, s in zip(outputs, seqs))
    return outputs, loss


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_loss_and_logits_equal_unpacked(tiny_model, attention):
    tiny_model.set_attn_implementation(attention)
    seqs = sequences()
    separate_logits, separate_loss = unpacked(tiny_model, seqs)

    batch = collate_packed(seqs)
    inputs = batch.model_inputs(attention, dtype=torch.float32)
    with torch.no_grad():
        logits = tiny_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"]
        ).logits
    packed_loss = summed_loss(logits, batch.labels)

    starts = batch.cu_seqlens.tolist()
    for number, expected in enumerate(separate_logits):
        torch.testing.assert_close(logits[0, starts[number] : starts[number + 1]], expected, atol=1e-5, rtol=0)
    assert packed_loss.item() == pytest.approx(separate_loss.item(), abs=1e-5)
    assert batch.num_target_tokens == sum(int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in seqs)


def test_packing_without_the_block_mask_changes_the_loss(tiny_model):
    tiny_model.set_attn_implementation("sdpa")
    seqs = sequences()
    _, separate_loss = unpacked(tiny_model, seqs)
    batch = collate_packed(seqs)

    # A plain 2D mask of ones: causal attention across the whole row, so later sequences see earlier ones
    # (and transformers' own packed-sequence detection, which needs attention_mask=None, stays off).
    with torch.no_grad():
        logits = tiny_model(
            input_ids=batch.input_ids, attention_mask=torch.ones_like(batch.input_ids), position_ids=batch.position_ids
        ).logits
    contaminated = summed_loss(logits, batch.labels)

    assert abs(contaminated.item() - separate_loss.item()) > 1e-3


def test_multi_row_packed_batch_with_padding_matches_unpacked_and_padded(tiny_model):
    tiny_model.set_attn_implementation("sdpa")
    seqs = sequences()
    _, separate_loss = unpacked(tiny_model, seqs)
    rows = pack_sequences(seqs, max_tokens=16)  # 12 | 9+7 | 5 → three rows, two of them padded
    assert rows == [[1], [3, 0], [2]]

    batch = collate_packed([[seqs[i] for i in row] for row in rows], pad_id=0)
    padded = collate_padded(seqs, pad_id=0)
    with torch.no_grad():
        packed_logits = tiny_model(
            input_ids=batch.input_ids, attention_mask=batch.additive_mask(), position_ids=batch.position_ids
        ).logits
        padded_logits = tiny_model(**{k: v for k, v in padded.model_inputs().items() if k != "labels"}).logits

    assert batch.input_ids.shape == (3, 16)
    assert summed_loss(packed_logits, batch.labels).item() == pytest.approx(separate_loss.item(), abs=1e-5)
    assert summed_loss(padded_logits, padded.labels).item() == pytest.approx(separate_loss.item(), abs=1e-5)


def test_packed_gradients_equal_unpacked_gradients(tiny_model):
    tiny_model.set_attn_implementation("eager")
    seqs = sequences()
    parameters = [p for p in tiny_model.parameters() if p.requires_grad]

    tiny_model.zero_grad()
    sum(summed_loss(tiny_model(input_ids=s["input_ids"][None]).logits, s["labels"][None]) for s in seqs).backward()
    separate = [p.grad.clone() for p in parameters]
    tiny_model.zero_grad()
    batch = collate_packed(seqs)
    summed_loss(
        tiny_model(**{k: v for k, v in batch.model_inputs("eager").items() if k != "labels"}).logits, batch.labels
    ).backward()
    packed = [p.grad.clone() for p in parameters]
    tiny_model.zero_grad()

    for a, b in zip(packed, separate):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
