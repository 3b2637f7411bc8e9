"""The validation metrics against hand-computed values on 3-token logits, and their accumulation over batches
and ranks as sums, never means of means."""

from __future__ import annotations

import math
from dataclasses import astuple

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models

from qft_core.model.tokenizer import byte_to_unicode
from qft_core.train.dataset import ANSWER, REASONING, TERM, WORD_START
from qft_core.train.loss import IGNORE_INDEX, chunked_token_scores
from qft_core.train.token_pieces import TokenPieces, TokenPiecesError
from qft_core.train.validation_metrics import ValidationTally, tally_batch

R, A, T = REASONING, ANSWER, ANSWER | TERM
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
# Logit rows of a 3-token vocabulary: softmax [1/2, 1/4, 1/4] (argmax 0), the same with token 2 on top, uniform.
FAVOUR_0 = [LN2, 0.0, 0.0]
FAVOUR_2 = [0.0, 0.0, LN2]
UNIFORM = [0.0, 0.0, 0.0]  # argmax: the lowest id, 0
MI, MA, MIMA, PARTIAL, END = 0, 1, 2, 3, 4  # 密, 码, 密码, the first two bytes of 鬱, <|im_end|>


def byte_level(text: bytes) -> str:
    alphabet = byte_to_unicode()
    return "".join(alphabet[byte] for byte in text)


@pytest.fixture(scope="module")
def pieces() -> TokenPieces:
    vocab = {byte_level("密".encode()): MI, byte_level("码".encode()): MA, byte_level("密码".encode()): MIMA}
    vocab[byte_level("鬱".encode()[:2])] = PARTIAL
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=byte_level("密".encode())))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|im_end|>", special=True)])
    assert tokenizer.token_to_id("<|im_end|>") == END
    found = TokenPieces.of(tokenizer)
    assert found is not None
    return found


def scores_of(logits: list[list[list[float]]], labels: list[list[int]]):
    """Token scores of hand-written logits: hidden states that are the logits, through an identity lm_head."""
    hidden = torch.tensor(logits)
    return chunked_token_scores(hidden, torch.eye(hidden.shape[-1]), torch.tensor(labels), chunk_tokens=2)


# Position t of a row predicts labels[t + 1] from logits[t]:
#   t=0 → 密 (reasoning): FAVOUR_0, loss ln 2, predicts 密 (right)
#   t=1 → 码 (answer):    FAVOUR_0, loss ln 4, predicts 密 (wrong; 0 of 1 characters)
#   t=2 → 密码 (term):    FAVOUR_2, loss ln 2, predicts 密码 (right; 2 of 2 characters)
#   t=3 → 码 (answer):    UNIFORM,  loss ln 3, predicts 密 (wrong; 0 of 1)
#   t=4 predicts nothing (last position); an -100 label is no target.
FIRST_LOGITS = [[FAVOUR_0, FAVOUR_0, FAVOUR_2, UNIFORM, UNIFORM]]
FIRST_LABELS = [[IGNORE_INDEX, MI, MA, MIMA, MA]]
FIRST_SEGMENTS = [[0, R, A, T, A]]
# A second batch: t=0 → 密码 (term): UNIFORM, loss ln 3, predicts 密 (wrong; 1 of 2 characters);
# t=1 → 密 (answer): FAVOUR_2, loss ln 4, predicts 密码 (1 of 1: the next character is right).
SECOND_LOGITS = [[UNIFORM, FAVOUR_2, UNIFORM]]
SECOND_LABELS = [[IGNORE_INDEX, MIMA, MI]]
SECOND_SEGMENTS = [[0, T, A]]


def tally(logits, labels, segments, pieces) -> ValidationTally:
    return tally_batch(scores_of(logits, labels), torch.tensor(labels), torch.tensor(segments), pieces)


def test_metrics_of_one_batch_equal_the_hand_computed_values(pieces: TokenPieces) -> None:
    result = tally(FIRST_LOGITS, FIRST_LABELS, FIRST_SEGMENTS, pieces)

    assert result.tokens == 4
    assert result.val_loss == pytest.approx((LN2 + LN4 + LN2 + LN3) / 4)
    assert result.metrics() == pytest.approx(
        {
            "val_reasoning_loss": LN2,
            "val_answer_loss": (LN4 + LN2 + LN3) / 3,
            "val_char_accuracy": (0 + 2 + 0) / (1 + 2 + 1),
            "val_term_accuracy": 1 / 1,
        }
    )


def test_two_batches_add_up_to_their_concatenation_not_a_mean_of_means(pieces: TokenPieces) -> None:
    first = tally(FIRST_LOGITS, FIRST_LABELS, FIRST_SEGMENTS, pieces)
    second = tally(SECOND_LOGITS, SECOND_LABELS, SECOND_SEGMENTS, pieces)
    # One batch of both rows, the second padded with -100 labels and flag 0.
    together = tally(
        [FIRST_LOGITS[0], SECOND_LOGITS[0] + [UNIFORM, UNIFORM]],
        [FIRST_LABELS[0], SECOND_LABELS[0] + [IGNORE_INDEX, IGNORE_INDEX]],
        [FIRST_SEGMENTS[0], SECOND_SEGMENTS[0] + [0, 0]],
        pieces,
    )

    summed = first + second
    assert astuple(summed) == pytest.approx(astuple(together))
    assert summed.metrics() == pytest.approx(together.metrics())
    # By hand: answer losses ln4 + ln2 + ln3 | ln3 + ln4; characters 2 of 4 | 2 of 3; terms 1 of 1 | 0 of 1.
    assert summed.metrics() == pytest.approx(
        {
            "val_reasoning_loss": LN2,
            "val_answer_loss": (LN4 + LN2 + LN3 + LN3 + LN4) / 5,
            "val_char_accuracy": 4 / 7,
            "val_term_accuracy": 1 / 2,
        }
    )
    mean_of_means = (first.metrics()["val_char_accuracy"] + second.metrics()["val_char_accuracy"]) / 2
    assert summed.metrics()["val_char_accuracy"] != pytest.approx(mean_of_means)


def test_ranks_are_summed_field_by_field(pieces: TokenPieces) -> None:
    rank0 = tally(FIRST_LOGITS, FIRST_LABELS, FIRST_SEGMENTS, pieces)
    rank1 = tally(SECOND_LOGITS, SECOND_LABELS, SECOND_SEGMENTS, pieces)
    calls = []

    def all_reduce_sum(values: list[float]) -> list[float]:
        calls.append(values)
        return [mine + theirs for mine, theirs in zip(values, astuple(rank1), strict=True)]

    reduced = rank0.summed_over_ranks(all_reduce_sum)

    assert len(calls) == 1  # one collective for every field
    assert reduced == rank0 + rank1
    assert isinstance(reduced.tokens, int) and reduced.tokens == 6


def test_metrics_without_a_denominator_are_left_out() -> None:
    labels = [[IGNORE_INDEX, MI, MA]]
    result = tally([[UNIFORM, UNIFORM, UNIFORM]], labels, [[0, A, A]], pieces=None)

    assert result.metrics() == pytest.approx({"val_answer_loss": LN3})  # no reasoning, no terms, no characters
    assert result.val_loss == pytest.approx(LN3)
    assert ValidationTally().val_loss == 0.0 and ValidationTally().metrics() == {}


@pytest.mark.parametrize(
    ("predicted", "target", "credit"),
    [
        (MI, MI, (1, 1)),
        (MA, MI, (0, 1)),
        (MI, MIMA, (1, 2)),  # right first character of a two-character token
        (MIMA, MI, (1, 1)),  # the next character is right; the one after is not the target's to judge
        (END, MI, (0, 1)),  # an added token is never text
        (END, END, (1, 1)),
        (MI, END, (0, 1)),
        (PARTIAL, PARTIAL, (2, 2)),  # a partial character counts byte by byte
        (MI, PARTIAL, (0, 2)),
        (151_888, MI, (0, 1)),  # a padded embedding row past the vocabulary (Qwen3: 151,936 rows, 151,669 tokens)
    ],
)
def test_char_credit_is_the_common_prefix_of_the_token_texts(
    pieces: TokenPieces, predicted: int, target: int, credit: tuple[int, int]
) -> None:
    assert pieces.char_credit(predicted, target) == credit


def test_char_spans_give_each_tokens_characters_and_name_a_sequence_that_is_not_text(pieces: TokenPieces) -> None:
    text, spans = pieces.char_spans([MIMA, MI, END])

    assert text == "密码密<|im_end|>"
    assert spans == [(0, 2), (2, 3), (3, 13)]
    with pytest.raises(TokenPiecesError, match="example x: token bytes are not UTF-8"):
        pieces.char_spans([MI, PARTIAL], "example x")


def test_only_byte_level_tokenizers_have_pieces() -> None:
    word_level = Tokenizer(models.WordLevel(vocab={"a": 0}, unk_token="a"))

    assert TokenPieces.of(word_level) is None
    assert TokenPieces.of(object()) is None


def test_word_accuracy_counts_a_word_right_only_when_all_its_tokens_are(pieces: TokenPieces) -> None:
    W = ANSWER | WORD_START
    # Targets 密 码 密码 密 码 with argmax right, wrong, right, right, wrong (logits FAVOUR_0, FAVOUR_2, FAVOUR_2,
    # FAVOUR_0, UNIFORM). Words [密] [码 密码] [密 码]: only the first has every token right, 1 of 3.
    logits = [[FAVOUR_0, FAVOUR_2, FAVOUR_2, FAVOUR_0, UNIFORM, UNIFORM]]
    labels = [[IGNORE_INDEX, MI, MA, MIMA, MI, MA]]
    result = tally(logits, labels, [[0, W, W, A, W, A]], pieces)
    assert (result.words_correct, result.words) == (1, 3)
    assert result.metrics()["val_word_accuracy"] == pytest.approx(1 / 3)
    # Answer targets before the first word start (a split tokenized before the flag existed) are in no word.
    early = tally(logits, labels, [[0, A, W, A, W, A]], pieces)
    assert (early.words_correct, early.words) == (0, 2)
    # Without any word start the metric is left out, as the character accuracy is without token pieces.
    assert "val_word_accuracy" not in tally(logits, labels, [[0, A, A, A, A, A]], pieces).metrics()
