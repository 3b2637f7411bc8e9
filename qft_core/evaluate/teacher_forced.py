"""Teacher-forced loss: how well a model predicts each reference reasoning and answer, given the question (and,
for the answer, the reference reasoning) in the training chat format; no generation, so no budget cuts it off.

Per example: `answer_loss` and `reasoning_loss`, the mean negative log-likelihood in nats per token of the
part's tokens (the spans `encode_example` marks, so `</think>` and `<|im_end|>` are in neither), and the same
sums as `answer_bits_per_char` / `reasoning_bits_per_char`, which compare models with different tokenizers.
Lower is better for all four. A part that is missing (no reference reasoning) is NaN: not applicable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qft_core.evaluate.generate import EvalItem
from qft_core.model.chat import Turn, encode_conversation

Progress = Callable[[int, int, str], None]

ANSWER_LOSS = "answer_loss"
REASONING_LOSS = "reasoning_loss"
ANSWER_BITS_PER_CHAR = "answer_bits_per_char"
REASONING_BITS_PER_CHAR = "reasoning_bits_per_char"
METRICS = (ANSWER_LOSS, REASONING_LOSS, ANSWER_BITS_PER_CHAR, REASONING_BITS_PER_CHAR)
# Where a smaller value is the better model (the regression check reads it): all of them.
LOWER_IS_BETTER = frozenset(METRICS)


def target_nats(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The summed negative log-likelihood of `targets[i]` under the distribution `softmax(logits[i])`."""
    logits = logits.float()
    return float((torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None])[:, 0]).sum())


def reference_turns(items: Sequence[EvalItem]) -> list[Turn]:
    """The references of evaluation items as conversations; an item without reference reasoning (only expert
    reasoning is a reference) has its answer scored after an empty reasoning."""
    return [Turn(item.question, item.reference_answer, item.reference_reasoning or "") for item in items]


@torch.no_grad()
def teacher_forced_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[Turn],
    *,
    system: str | None = None,
    progress: Progress | None = None,
    label: str = "teacher-forced",
) -> list[dict[str, float]]:
    """The four losses of each turn (question, reference reasoning, reference answer), in order.

    One example per forward pass: no padding can change a score, and only the rows that score a target token
    are projected to the vocabulary (`logits_to_keep`), which keeps a 262k-word vocabulary affordable.
    """
    device = next(model.parameters()).device
    rows = []
    for index, turn in enumerate(turns):
        encoded = encode_conversation([turn], tokenizer, system=system)
        spans = {"reasoning": encoded.reasoning_span, "answer": encoded.answer_span}
        texts = {"reasoning": turn.reasoning.strip("\n"), "answer": turn.answer.lstrip("\n")}
        scored = {part: span for part, span in spans.items() if span[1] > span[0] and texts[part]}
        row = dict.fromkeys(METRICS, math.nan)
        if scored:
            # Token t is predicted by the logits at position t - 1.
            first = min(start for start, _ in scored.values()) - 1
            last = max(end for _, end in scored.values()) - 1
            ids = torch.tensor(encoded.input_ids, device=device)
            kept = torch.arange(first, last, device=device)
            logits = model(input_ids=ids[None, :last], logits_to_keep=kept).logits[0]
            for part, (start, end) in scored.items():
                nats = target_nats(logits[start - 1 - first : end - 1 - first], ids[start:end])
                row[f"{part}_loss"] = nats / (end - start)
                row[f"{part}_bits_per_char"] = nats / math.log(2) / len(texts[part])
        rows.append(row)
        if progress is not None:
            progress(index + 1, len(turns), label)
    return rows
