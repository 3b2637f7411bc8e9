"""Degenerate completions, as the evaluation and `qft package verify` name them."""

import pytest

from qft_core.evaluate.degenerate import Degeneration, degeneration, word_characters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Degeneration("empty", "empty")),
        ("  \n\t ", Degeneration("empty", "empty")),
        ("，，，，", Degeneration("repeated", "'，' repeated 4 times")),
        ("，， ，，\n，", Degeneration("repeated", "'，' repeated 5 times")),
        ("的的的", Degeneration("repeated", "'的' repeated 3 times")),
        # Cut at the token limit inside the fourth copy of a two-character unit.
        ("密码密码密码密", Degeneration("repeated", "'密码' repeated 3 times")),
        ("。，！？", Degeneration("no_letters_or_digits", "no letters or digits: '。，！？'")),
    ],
)
def test_degenerate_texts_say_why(text: str, expected: Degeneration) -> None:
    assert degeneration(text) == expected


@pytest.mark.parametrize("text", ["是", "的的", "AES 是一种分组密码。", "256", "密码学密码学"])
def test_short_or_real_answers_are_not_degenerate(text: str) -> None:
    # "密码学密码学" repeats a 3-character unit only twice: below MIN_REPEATS.
    assert degeneration(text) is None


def test_word_characters_count_letters_and_digits_not_punctuation() -> None:
    assert word_characters("SM3 输出 256 位。") == 3 + 2 + 3 + 1
