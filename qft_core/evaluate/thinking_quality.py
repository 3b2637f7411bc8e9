"""The reasoning block of a generated answer: split it off the raw output and measure it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qft_core.data.chinese import repetition_ratio
from qft_core.data.thinking import score_thinking
from qft_core.evaluate.degenerate import word_characters

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True, slots=True)
class Generation:
    """A raw model output split into its reasoning and its answer; `closed` says whether `</think>` was written."""

    reasoning: str
    answer: str
    closed: bool


@dataclass(frozen=True, slots=True)
class ThinkingQuality:
    """The reasoning's text. Whether `</think>` was the model's or forced in at the budget is not in the text:
    the generation statistics (`closed_by_model_rate`, `closed_by_budget_rate`) say that."""

    present: bool
    chars: int
    coherence: float
    repetition: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "thinking_present": float(self.present),
            "thinking_chars": float(self.chars),
            "thinking_coherence": self.coherence,
            "thinking_repetition": self.repetition,
        }


def split_generation(text: str) -> Generation:
    """Reasoning is the text up to the last `</think>` (a leading `<think>` dropped), the answer what follows.

    Qwen3-Thinking's chat template opens the block itself, so its outputs usually carry only the closing
    tag. Without `</think>` an output that opens a block is all (unfinished) reasoning; one that does not
    is all answer.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        reasoning, answer = text[:close], text[close + len(THINK_CLOSE) :]
        opening = reasoning.find(THINK_OPEN)
        if opening >= 0 and not reasoning[:opening].strip():
            reasoning = reasoning[opening + len(THINK_OPEN) :]
        return Generation(reasoning.strip(), answer.strip(), closed=True)
    opening = text.find(THINK_OPEN)
    if opening >= 0:
        return Generation(text[opening + len(THINK_OPEN) :].strip(), text[:opening].strip(), closed=False)
    return Generation("", text.strip(), closed=False)


def thinking_quality(generation: Generation, dictionary: TermDictionary) -> ThinkingQuality:
    """chars: the reasoning's letters and digits (CJK included; punctuation and whitespace are not reasoning);
    present: chars > 0; coherence: `score_thinking` of reasoning against the answer (0 without reasoning);
    repetition: `repetition_ratio` of its non-whitespace text (NaN without reasoning)."""
    visible = "".join(generation.reasoning.split())
    score = score_thinking(generation.reasoning, generation.answer, dictionary)
    chars = word_characters(generation.reasoning)
    return ThinkingQuality(
        present=chars > 0,
        chars=chars,
        coherence=score.score,
        repetition=repetition_ratio(visible) if chars else math.nan,
    )
