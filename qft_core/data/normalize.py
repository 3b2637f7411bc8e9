"""Text normalisation shared by the parser and the Chinese NLP: traditional to simplified Chinese."""

from __future__ import annotations

from functools import cache

import opencc


@cache
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional characters to simplified ones (OpenCC t2s); simplified text is unchanged."""
    return _t2s().convert(text)


def count_traditional(text: str) -> int:
    """How many characters OpenCC would change going from traditional to simplified."""
    simplified = to_simplified(text)
    if len(simplified) != len(text):
        return sum(1 for a, b in zip(text, simplified) if a != b) + abs(len(text) - len(simplified))
    return sum(1 for a, b in zip(text, simplified) if a != b)
