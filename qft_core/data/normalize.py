"""Text normalisation shared by the parser and the Chinese NLP: traditional to simplified Chinese,
zero-width characters, full-width ASCII forms."""

from __future__ import annotations

import re
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


# Invisible characters that editors and web copies leave inside text: they split words and markers.
ZERO_WIDTH_CHARACTERS = "\u200b\u200c\u200d\u2060\ufeff"
_ZERO_WIDTH = re.compile(f"[{ZERO_WIDTH_CHARACTERS}]")

# Full-width ASCII forms (U+FF01–U+FF5E) sit exactly 0xFEE0 above their ASCII twins.
_HALFWIDTH_TABLE = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_FULLWIDTH = re.compile("[\uff01-\uff5e\u3000]")


def remove_zero_width(text: str) -> tuple[str, int]:
    """The text without zero-width characters, and how many were removed."""
    return _ZERO_WIDTH.subn("", text)


def fullwidth_to_ascii(text: str) -> str:
    """Every full-width ASCII form (letters, digits and punctuation such as `：＃＊＜`) and the ideographic
    space to plain ASCII; every other character is kept.

    One character maps to one character, so offsets in the result are offsets in the input. The parser
    matches markers on this form; `chinese.to_halfwidth`, which keeps Chinese punctuation, is for text.
    """
    # The search is a fast path: most lines hold no full-width ASCII, and translate is slow on CJK text.
    return text.translate(_HALFWIDTH_TABLE) if _FULLWIDTH.search(text) else text
