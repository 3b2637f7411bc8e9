"""Chinese text for the corpus: jieba segmentation with the term dictionary as user dictionary, width and
punctuation normalisation, and the text metrics that flag sloppy or degenerate answers."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterable
from functools import cache, lru_cache
from types import ModuleType
from typing import TYPE_CHECKING

from qft_core.data.normalize import count_traditional, to_simplified
from qft_core.records import ChineseMetrics

# jieba 0.42 has invalid escape sequences that Python reports on every fresh compile, and it logs its
# dictionary loading at DEBUG to stderr; neither says anything to our users.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SyntaxWarning)
    import jieba
jieba.setLogLevel(logging.WARNING)
_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

if TYPE_CHECKING:
    from qft_core.data.terms import TermDictionary

# High enough that a domain word beats jieba's split into common words ("分组" + "密码"), low enough
# that a two-character term does not swallow characters of its neighbours; words jieba already
# rates higher keep their own frequency.
DOMAIN_WORD_FREQUENCY = 10_000
DOMAIN_WORD_TAG = "nz"

_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK = re.compile(f"[{_CJK_RANGES}]")
_NON_CJK_RUN = re.compile(f"[^{_CJK_RANGES}]+")
# A letter, digit or CJK character: exactly the characters for which str.isalnum() is true.
_ALNUM = re.compile(r"[^\W_]")
# Full-width digits and letters, and the ideographic space. Replacing just these is an order of magnitude faster
# than translating every character of a Chinese text.
_FULLWIDTH = re.compile("[０-９Ａ-Ｚａ-ｚ\u3000]")
_HALFWIDTH = {chr(code): chr(code - 0xFEE0) for code in range(0xFF10, 0xFF5B) if chr(code).isalnum()}
_HALFWIDTH["\u3000"] = " "

_FULLWIDTH_MARKS = {",": "，", ".": "。", ":": "：", ";": "；", "?": "？", "!": "！"}
# Marks after which a Chinese sentence mark still ends the clause: closing quotes and brackets.
_CLOSERS = frozenset("\"'”’）)」』》】")
_BRACKET_PAIRS = {"(": ")", "（": "）", "[": "]", "【": "】", "《": "》", "「": "」", "『": "』", "“": "”"}
_PUNCTUATION_MARKS = frozenset("，。、；：？！,.;:?!") | frozenset(_BRACKET_PAIRS) | frozenset(_BRACKET_PAIRS.values())
# Sentence marks that are never doubled in good text; ASCII '.' is left out because "..." is an
# ordinary ellipsis in code and English.
_NO_RUN_MARKS = "，。、；：？！,;:?!"
# The punctuation checks run as regexes: a Python loop over every character of an answer costs ten times more.
_PUNCTUATION_MARK = re.compile(f"[{re.escape(''.join(sorted(_PUNCTUATION_MARKS)))}]")
_MARK_RUN = re.compile(f"([{re.escape(_NO_RUN_MARKS)}])\\1+")
_ASCII_MARK_BETWEEN_CJK = re.compile(
    f"(?<=[{_CJK_RANGES}])[{re.escape(''.join(_FULLWIDTH_MARKS))}](?=[{_CJK_RANGES}])"
)
_BRACKET = re.compile(f"[{re.escape(''.join(_BRACKET_PAIRS) + ''.join(_BRACKET_PAIRS.values()))}]")
_REPETITION_NGRAM = 4
# A natural Chinese answer repeats some 4-grams (a term used several times); only repetition
# beyond this share counts against quality, and at _REPETITION_ZERO the text is a loop.
_REPETITION_FREE = 0.15
_REPETITION_ZERO = 0.6
_CJK_FULL_CREDIT = 0.5

_domain_words: set[str] = set()


def is_cjk(char: str) -> bool:
    return bool(char) and _CJK.fullmatch(char) is not None


def count_cjk(text: str) -> int:
    """How many characters of `text` are CJK ideographs (the characters `is_cjk` accepts)."""
    return len(_NON_CJK_RUN.sub("", text))


def count_content_words(words: Iterable[str]) -> int:
    """How many of the words contain a letter, digit or CJK character (punctuation tokens do not)."""
    return sum(1 for word in words if word.isalnum() or _ALNUM.search(word))


def use_term_dictionary(dictionary: TermDictionary) -> int:
    """Teach jieba every Chinese surface form of the dictionary as one word tagged 'nz'.

    Idempotent: a word is added once per process however often this is called. Returns how many
    words were new. Forms with whitespace, or with characters jieba never joins into a word
    (such as '/' or Greek letters), cannot come out of jieba whole and are skipped.
    """
    # jieba's own frequencies are only there once its dictionary is loaded.
    jieba.initialize()
    added = 0
    for form in dictionary.surface_forms():
        if form in _domain_words or not _CJK.search(form) or not jieba.re_han_default.fullmatch(form):
            continue
        frequency = max(jieba.get_FREQ(form) or 0, DOMAIN_WORD_FREQUENCY)
        jieba.add_word(form, frequency, tag=DOMAIN_WORD_TAG)
        _domain_words.add(form)
        added += 1
    return added


def segment(text: str, hmm: bool = True) -> list[str]:
    """jieba words of `text` (precise mode), without whitespace tokens.

    With `hmm` jieba's hidden Markov model joins characters it has no word for into new words; without it
    such characters stay single, and segmenting takes less than half the time.
    """
    if hmm:
        return [word for word in jieba.lcut(text) if word.strip()]
    return _segment_without_hmm(text)


def _segment_without_hmm(text: str) -> list[str]:
    """`jieba.lcut(text, HMM=False)` without whitespace tokens, in less than half the time.

    jieba builds a dict of candidate lists for each block and scores each candidate with a generator and a
    logarithm; this runs the same dynamic programme over jieba's dictionary in one loop, with the logarithm of
    each distinct frequency computed once (`_route_weights`). Like jieba, it splits the text into blocks of CJK
    characters, ASCII letters, digits and "+#&._%-" (every other character, whitespace aside, is a word of its
    own), takes the most probable route through each block (ties go to the longer word, as jieba's max() over
    (score, end) pairs does) and joins runs of single ASCII letters and digits into one word. Measured on
    3,000-character texts: 18.7 ms per pair for jieba.lcut, 8.3 ms for this (bench/bench_metrics.py).
    """
    frequencies, weights, unknown = _route_weights()
    words: list[str] = []
    # The block pattern is one capturing group: split() gives the text between blocks at even indices, blocks at odd.
    for index, piece in enumerate(jieba.re_han_default.split(text)):
        if index % 2 == 0:
            words.extend("".join(piece.split()))
            continue
        size = len(piece)
        # score[i]: log probability of the best route through piece[i:]; end[i]: where its first word ends.
        score = [0.0] * (size + 1)
        end = [0] * size
        for start in range(size - 1, -1, -1):
            best, best_end, stop, fragment = -math.inf, 0, start + 1, piece[start]
            # jieba's dictionary holds every prefix of its words, the prefixes that are no word with frequency 0.
            while (frequency := frequencies.get(fragment)) is not None:
                if frequency and (candidate := weights[frequency] + score[stop]) >= best:
                    best, best_end = candidate, stop
                if stop == size:
                    break
                stop += 1
                fragment = piece[start:stop]
            if not best_end:
                best, best_end = unknown + score[start + 1], start + 1
            score[start], end[start] = best, best_end
        start, ascii_run = 0, -1
        while start < size:
            stop = end[start]
            if stop - start == 1 and piece[start] in _ASCII_ALNUM:
                if ascii_run < 0:
                    ascii_run = start
            else:
                if ascii_run >= 0:
                    words.append(piece[ascii_run:start])
                    ascii_run = -1
                words.append(piece[start:stop])
            start = stop
        if ascii_run >= 0:
            words.append(piece[ascii_run:])
    return words


def _route_weights() -> tuple[dict[str, int], dict[int, float], float]:
    """jieba's word frequencies, log(frequency / total) for each distinct frequency, and log(1 / total) for a
    character that is no word."""
    tokenizer = jieba.dt
    tokenizer.check_initialized()
    weights, unknown = _log_weights(tokenizer.total)
    return tokenizer.FREQ, weights, unknown


@lru_cache(maxsize=1)
def _log_weights(total: int) -> tuple[dict[int, float], float]:
    """Keyed by jieba's total frequency, which every word added to jieba raises."""
    log_total = math.log(total)
    # jieba computes log(frequency) - log(total) + score: the same operations in the same order give the same
    # floats, so ties break exactly as in jieba.
    weights = {frequency: math.log(frequency) - log_total for frequency in set(jieba.dt.FREQ.values()) if frequency}
    return weights, math.log(1) - log_total


def pos_tag(text: str) -> list[tuple[str, str]]:
    """(word, jieba POS flag) pairs of `text`, without whitespace tokens; domain terms get 'nz'."""
    return [(pair.word, pair.flag) for pair in _posseg().lcut(text) if pair.word.strip()]


def to_halfwidth(text: str) -> str:
    """Full-width ASCII letters and digits and the ideographic space to their half-width forms.

    Full-width punctuation is Chinese punctuation and stays; the result has the length of `text`.
    """
    return _FULLWIDTH.sub(_halfwidth_char, text)


def _halfwidth_char(match: re.Match[str]) -> str:
    return _HALFWIDTH[match.group()]


def normalize_punctuation(text: str) -> str:
    """ASCII sentence marks and parentheses in Chinese context become Chinese full-width ones.

    A mark ,.:;?! becomes ，。：；？！ when it follows a CJK character and ends the clause (CJK,
    whitespace, a closing quote/bracket or the end follows), when ',' or ';' follows a CJK character,
    or when it sits between non-space text and a CJK character ('.' not after a digit, so "1.概述"
    stays). Doubled marks such as "..." or "!!" are left as they are. A pair of ASCII parentheses
    becomes （） when it encloses CJK text or follows a CJK character, unless it follows an ASCII
    letter, digit or ']' (a function call or a Markdown link). ASCII runs such as "AES-128", "1.2"
    and "f(x)" keep their punctuation. The result has the length of `text`.
    """
    chars = list(text)
    for index, char in enumerate(text):
        if char in _FULLWIDTH_MARKS and _ends_chinese_clause(text, index):
            chars[index] = _FULLWIDTH_MARKS[char]
    for open_index, close_index in _parenthesis_pairs(text):
        before = text[open_index - 1] if open_index else ""
        inside = text[open_index + 1 : close_index]
        if (before.isascii() and before.isalnum()) or before == "]":
            continue
        if is_cjk(before) or _CJK.search(inside):
            chars[open_index], chars[close_index] = "（", "）"
    return "".join(chars)


def normalize_chinese(text: str) -> str:
    """The corpus normal form: half-width letters and digits, simplified characters, Chinese punctuation.

    Callers keep the original text; this is what is segmented, matched and trained on.
    """
    return normalize_punctuation(to_simplified(to_halfwidth(text)))


def chinese_metrics(text: str) -> ChineseMetrics:
    """Size, script mix, punctuation sanity and repetition of `text`, combined into a quality score.

    - char_count: non-whitespace characters.
    - word_count: jieba words that contain a letter, digit or CJK character (punctuation excluded).
    - cjk_ratio: CJK characters / char_count.
    - punctuation_score: 1 - faults / marks over the sentence marks, brackets and quotes in the text
      (1.0 when there are none), where a fault is each extra mark in a doubled sentence mark ("。。",
      "？？"), an ASCII ,.;:?! between two CJK characters, or a bracket without its partner.
    - repetition_ratio: 1 - distinct / total character 4-grams of the non-whitespace text (0 when
      shorter than 4 characters); near 0 for prose, near 1 for a text stuck in a loop.
    - traditional_chars: characters OpenCC would change going to simplified.
    - quality_score: chinese_share * punctuation_score * non_repetition, each in [0, 1]:
      chinese_share = min(1, cjk_ratio / 0.5) (a technical answer may be half Latin script);
      non_repetition falls linearly from 1 at repetition_ratio 0.15 to 0 at 0.6. Traditional
      characters are not penalised: normalisation converts them.
    Empty or whitespace-only text gives all zeros.
    """
    visible = "".join(char for char in text if not char.isspace())
    if not visible:
        return ChineseMetrics(
            char_count=0, word_count=0, cjk_ratio=0.0, punctuation_score=0.0, repetition_ratio=0.0, quality_score=0.0
        )
    cjk_ratio = count_cjk(visible) / len(visible)
    punctuation = punctuation_score(text)
    repetition = repetition_ratio(visible)
    chinese_share = min(1.0, cjk_ratio / _CJK_FULL_CREDIT)
    non_repetition = 1.0 - min(1.0, max(0.0, repetition - _REPETITION_FREE) / (_REPETITION_ZERO - _REPETITION_FREE))
    return ChineseMetrics(
        char_count=len(visible),
        word_count=count_content_words(segment(text)),
        cjk_ratio=cjk_ratio,
        punctuation_score=punctuation,
        repetition_ratio=repetition,
        traditional_chars=count_traditional(text),
        quality_score=chinese_share * punctuation * non_repetition,
    )


def punctuation_score(text: str) -> float:
    """1 - faults / marks; see `chinese_metrics` for what counts as a mark and as a fault."""
    marks = len(_PUNCTUATION_MARK.findall(text))
    if not marks:
        return 1.0
    faults = _doubled_marks(text) + _ascii_marks_between_cjk(text) + _unbalanced_brackets(text)
    return max(0.0, 1.0 - faults / marks)


def repetition_ratio(text: str, n: int = _REPETITION_NGRAM) -> float:
    """1 - distinct / total character n-grams of `text`; 0.0 when it has no n-gram."""
    grams = len(text) - n + 1
    return 1.0 - len({text[index : index + n] for index in range(grams)}) / grams if grams > 0 else 0.0


@cache
def _posseg() -> ModuleType:
    """jieba's tagger, imported on first use: its probability tables take a second to import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        import jieba.posseg
    return jieba.posseg


def _ends_chinese_clause(text: str, index: int) -> bool:
    char = text[index]
    before = text[index - 1] if index else ""
    after = text[index + 1] if index + 1 < len(text) else ""
    if before == char or after == char:
        return False
    if is_cjk(before):
        return char in ",;" or not after or after.isspace() or is_cjk(after) or after in _CLOSERS
    if is_cjk(after):
        return bool(before) and not before.isspace() and not (char == "." and before.isdigit())
    return False


def _parenthesis_pairs(text: str) -> list[tuple[int, int]]:
    """Matched ASCII parenthesis pairs as (open, close) indices; unmatched ones are ignored."""
    pairs, open_indices = [], []
    for index, char in enumerate(text):
        if char == "(":
            open_indices.append(index)
        elif char == ")" and open_indices:
            pairs.append((open_indices.pop(), index))
    return pairs


def _doubled_marks(text: str) -> int:
    """Each mark of a run of one repeated sentence mark after the first."""
    return sum(len(run.group()) - 1 for run in _MARK_RUN.finditer(text))


def _ascii_marks_between_cjk(text: str) -> int:
    return len(_ASCII_MARK_BETWEEN_CJK.findall(text))


def _unbalanced_brackets(text: str) -> int:
    """Brackets without a partner, counted per bracket kind: unmatched closers plus unclosed openers."""
    brackets = "".join(_BRACKET.findall(text))
    unbalanced = 0
    for opener, closer in _BRACKET_PAIRS.items():
        depth = 0
        for char in brackets:
            if char == opener:
                depth += 1
            elif char == closer:
                if depth:
                    depth -= 1
                else:
                    unbalanced += 1
        unbalanced += depth
    return unbalanced
