"""Teacher-forced loss against hand-computed values: models whose logits the test sets, scored on a conversation
whose reasoning and answer are three known tokens each."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from qft_core.evaluate.teacher_forced import METRICS, teacher_forced_losses
from qft_core.model.chat import Turn, encode_conversation
from qft_core.model.tokenizer import load_qwen3_tokenizer

VOCAB = 151_936
TURN = Turn(question="什么是AES？", reasoning="分组密码", answer="对称加密")


class FavoringModel(torch.nn.Module):
    """Logits 0 everywhere except `boost` on the favoured tokens: the `favored` ids at every position, or, with
    `oracle`, the token that really comes next in `oracle` (a model that has read the reference)."""

    def __init__(self, boost: float, favored: tuple[int, ...] = (), oracle: list[int] | None = None) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.boost, self.favored, self.oracle = boost, favored, oracle

    def forward(self, input_ids: torch.Tensor, logits_to_keep: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(1, len(logits_to_keep), VOCAB)
        for row, position in enumerate(logits_to_keep.tolist()):
            assert position < input_ids.shape[1], "a kept position past the input"
            favored = [self.oracle[position + 1]] if self.oracle is not None else self.favored
            logits[0, row, favored] = self.boost
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return load_qwen3_tokenizer(tmp_path_factory.mktemp("model-cache"))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_reasoning_and_answer_losses_match_hand_computed_values(qwen3_tokenizer):
    # Reasoning 分|组|密码 and answer 对|称|加密: three tokens each, four characters each.
    assert len(_ids(qwen3_tokenizer, TURN.reasoning)) == len(_ids(qwen3_tokenizer, TURN.answer)) == 3
    (secret,), (encrypt,) = _ids(qwen3_tokenizer, "密码"), _ids(qwen3_tokenizer, "加密")
    # Two favoured tokens with e^boost = (V − 2) / 2: each has probability 1/4, every other token 1/(2(V − 2)).
    model = FavoringModel(math.log((VOCAB - 2) / 2), favored=(secret, encrypt))
    hit, miss = math.log(4), math.log(2 * (VOCAB - 2))

    [row] = teacher_forced_losses(model, qwen3_tokenizer, [TURN])

    # One hit (密码, 加密) and two misses in each part; `</think>` and `<|im_end|>` (misses) are in neither.
    assert list(row) == list(METRICS)
    assert row["reasoning_loss"] == pytest.approx((2 * miss + hit) / 3, rel=1e-6)
    assert row["answer_loss"] == pytest.approx((2 * miss + hit) / 3, rel=1e-6)
    assert row["reasoning_bits_per_char"] == pytest.approx((2 * miss + hit) / math.log(2) / 4, rel=1e-6)
    assert row["answer_bits_per_char"] == pytest.approx((2 * miss + hit) / math.log(2) / 4, rel=1e-6)


def test_each_token_is_scored_by_the_logits_of_the_position_before_it(qwen3_tokenizer):
    reference = encode_conversation([TURN], qwen3_tokenizer).input_ids
    # The next token gets e^boost = V − 1: probability exactly 1/2 wherever the scoring is aligned.
    model = FavoringModel(math.log(VOCAB - 1), oracle=reference)

    [row] = teacher_forced_losses(model, qwen3_tokenizer, [TURN])

    assert row["reasoning_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert row["answer_loss"] == pytest.approx(math.log(2), rel=1e-6)


def test_without_reference_reasoning_only_the_answer_is_scored(qwen3_tokenizer):
    model = FavoringModel(0.0)
    turns = [Turn(question="什么是AES？", reasoning="", answer="对称加密"), TURN]
    seen = []

    rows = teacher_forced_losses(model, qwen3_tokenizer, turns, progress=lambda done, total, _: seen.append(done))

    # Uniform logits: every token costs ln V, whatever the part.
    assert math.isnan(rows[0]["reasoning_loss"]) and math.isnan(rows[0]["reasoning_bits_per_char"])
    assert rows[0]["answer_loss"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert rows[1]["reasoning_loss"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert seen == [1, 2]
