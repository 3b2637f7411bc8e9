"""Validation metrics on the Chinese targets, beside the validation loss: reasoning- and answer-token loss,
character-level and word-level next-token accuracy on the answer, and next-token accuracy on cryptography-term
tokens.

Every metric is a ratio of sums (a `ValidationTally`), added up over batches and then over ranks before
dividing, so the result is the same whatever the batching and the world size (never a mean of means).
All are teacher-forced next-token measurements on the supervised targets, with the segment flags the dataset
stores (`dataset.REASONING`, `ANSWER`, `TERM`, `WORD_START`):

- val_reasoning_loss: mean cross-entropy over reasoning targets.
- val_answer_loss: mean cross-entropy over answer targets.
- val_char_accuracy: over answer targets, the characters of each target token that the predicted (argmax) token
  reproduces as a common prefix of the two tokens' texts, divided by the characters of the target tokens
  (`TokenPieces.char_credit`). For a one-character token, the usual case for Chinese, that is whether the next
  character is right; a multi-character target earns partial credit, a longer prediction that starts with the
  target's characters full credit. A byte of a character split over byte tokens counts as one character.
- val_word_accuracy: over the jieba words of the answer (a WORD_START target and the answer targets up to the
  next one), the share whose every token the argmax predicts right. A word is as hard as its hardest token:
  "分组密码" as 分 组 密码 counts once, and only when all three are right.
- val_term_accuracy: over answer targets flagged TERM (their characters overlap a dictionary term), the share
  whose argmax prediction is the target token.

A metric whose denominator is 0 over the whole split (no reasoning tokens when `loss_on_reasoning` is off, no
terms, a tokenizer that is not byte-level for the characters) is left out of the record rather than logged as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING

import torch

from qft_core.train.dataset import ANSWER, REASONING, TERM, WORD_START
from qft_core.train.loss import TokenScores, scored_positions

if TYPE_CHECKING:
    # Only a type here: the monitor imports this module's keys and should not pull in transformers.
    from qft_core.train.token_pieces import TokenPieces

VAL_LOSS = "val_loss"
VAL_CHAR_ACCURACY = "val_char_accuracy"
VAL_TERM_ACCURACY = "val_term_accuracy"
VAL_WORD_ACCURACY = "val_word_accuracy"
VAL_REASONING_LOSS = "val_reasoning_loss"
VAL_ANSWER_LOSS = "val_answer_loss"


@dataclass
class ValidationTally:
    """Numerators and denominators of the validation metrics; `+` adds two tallies, `summed_over_ranks` all ranks'."""

    loss_sum: float = 0.0
    tokens: int = 0
    reasoning_loss_sum: float = 0.0
    reasoning_tokens: int = 0
    answer_loss_sum: float = 0.0
    answer_tokens: int = 0
    answer_chars_correct: int = 0
    answer_chars: int = 0
    term_correct: int = 0
    term_tokens: int = 0
    words_correct: int = 0
    words: int = 0

    def __add__(self, other: ValidationTally) -> ValidationTally:
        return ValidationTally(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))

    def summed_over_ranks(self, all_reduce_sum: Callable[[list[float]], list[float]]) -> ValidationTally:
        """The tally of every rank, from one sum of all fields (`Runtime.all_reduce_sum`)."""
        totals = all_reduce_sum([float(value) for value in astuple(self)])
        counts = [isinstance(field.default, int) for field in fields(self)]
        return ValidationTally(*(round(value) if count else value for count, value in zip(counts, totals, strict=True)))

    @property
    def val_loss(self) -> float:
        """Mean token loss over every scored target (0.0 for none, as the engine always logged it)."""
        return self.loss_sum / max(self.tokens, 1)

    def metrics(self) -> dict[str, float]:
        """The Chinese metrics with a non-zero denominator, by their metrics-record keys."""
        ratios = {
            VAL_REASONING_LOSS: (self.reasoning_loss_sum, self.reasoning_tokens),
            VAL_ANSWER_LOSS: (self.answer_loss_sum, self.answer_tokens),
            VAL_CHAR_ACCURACY: (self.answer_chars_correct, self.answer_chars),
            VAL_TERM_ACCURACY: (self.term_correct, self.term_tokens),
            VAL_WORD_ACCURACY: (self.words_correct, self.words),
        }
        return {key: numerator / denominator for key, (numerator, denominator) in ratios.items() if denominator}


def tally_batch(
    scores: TokenScores, labels: torch.Tensor, segments: torch.Tensor, pieces: TokenPieces | None
) -> ValidationTally:
    """One batch's tally from its per-target scores (`TokenLossSum(..., token_scores=True)`), its labels and the
    segment flags aligned with them. Without `pieces` the character accuracy is not counted."""
    flags = segments.reshape(labels.shape)[:, 1:].reshape(-1)[scored_positions(labels)].long()
    losses = scores.losses.double()
    correct = scores.predictions == scores.targets
    reasoning = (flags & REASONING) != 0
    answer = (flags & ANSWER) != 0
    term = (flags & TERM) != 0
    words_correct, words = _word_tally(correct[answer], ((flags & WORD_START) != 0)[answer])
    chars_correct = chars = 0
    if pieces is not None:
        predicted, target = scores.predictions[answer].tolist(), scores.targets[answer].tolist()
        for earned, length in map(pieces.char_credit, predicted, target):
            chars_correct += earned
            chars += length
    return ValidationTally(
        loss_sum=float(losses.sum()),
        tokens=len(losses),
        reasoning_loss_sum=float(losses[reasoning].sum()),
        reasoning_tokens=int(reasoning.sum()),
        answer_loss_sum=float(losses[answer].sum()),
        answer_tokens=int(answer.sum()),
        answer_chars_correct=chars_correct,
        answer_chars=chars,
        term_correct=int(correct[term].sum()),
        term_tokens=int(term.sum()),
        words_correct=words_correct,
        words=words,
    )


def _word_tally(correct: torch.Tensor, starts: torch.Tensor) -> tuple[int, int]:
    """(words all of whose tokens are right, words) over answer targets in order, a word being a WORD_START target
    and those after it up to the next; targets before the first WORD_START (a split written before the flag
    existed) belong to no word."""
    words = int(starts.sum())
    if not words:
        return 0, 0
    word = torch.cumsum(starts.long(), dim=0) - 1
    inside = word >= 0
    wrong = torch.zeros(words, dtype=torch.long, device=correct.device)
    wrong.index_add_(0, word[inside], (~correct[inside]).long())
    return int((wrong == 0).sum()), words
