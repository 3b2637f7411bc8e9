"""Degenerate completions: an empty answer, one short unit repeated ("，，，，"), or no letters or digits at all.

Text metrics still give such answers credit (ROUGE-L matches the reference's commas), so the evaluation and
`qft package verify` name them instead of scoring them as answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# A unit of up to this many characters, repeated to fill the whole answer, is one repeated token or so.
MAX_REPEATED_UNIT = 4
MIN_REPEATS = 3
# Share of a model's answers that, once degenerate, makes the model degenerate: its metric gains are not gains.
DEGENERATE_SHARE = 0.5
_WORD_CHARACTER = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class Degeneration:
    """Why a text is degenerate: `kind` to count by, `detail` to show ("'，' repeated 40 times")."""

    kind: Literal["empty", "repeated", "no_letters_or_digits"]
    detail: str


def word_characters(text: str) -> int:
    """How many letters and digits (CJK included) `text` holds: what counts as content, punctuation not."""
    return len(_WORD_CHARACTER.findall(text))


def degeneration(text: str) -> Degeneration | None:
    """Why `text` is degenerate, or None: empty (whitespace only), one unit of at most MAX_REPEATED_UNIT
    characters repeated at least MIN_REPEATS times and nothing else, or no letters or digits at all."""
    visible = "".join(text.split())
    if not visible:
        return Degeneration("empty", "empty")
    for width in range(1, MAX_REPEATED_UNIT + 1):
        unit, repeats = visible[:width], len(visible) // width
        # A completion cut at its token limit may end inside a unit, hence the partial last copy.
        if repeats >= MIN_REPEATS and (unit * (repeats + 1))[: len(visible)] == visible:
            return Degeneration("repeated", f"{unit!r} repeated {repeats} times")
    if not word_characters(visible):
        return Degeneration("no_letters_or_digits", f"no letters or digits: {visible[:20]!r}")
    return None
