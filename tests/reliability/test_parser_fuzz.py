"""Property-based fuzzing of the parser (Hypothesis): Markdown built at random from the grammar's pieces —
markers in every spelling, nested thinking, headings, fenced code, HTML comments, prose, and broken pieces —
parses without an exception, every well-formed pair comes out intact and in order, every pair found is
either parsed or quarantined, and the time grows linearly with the input."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qft_core.config import DataConfig
from qft_core.data.parse import parse_text

CONFIG = DataConfig()
# Text that can never read as a marker, heading, tag, fence or comment, whatever the line starts with.
WORDS = st.text(alphabet="密码学分组公钥哈希签名认证椭圆曲线素数模运算 ，。、？！0123456789AESRSMH-", min_size=1, max_size=24)
# A question, answer or step: never empty, never only a `---` rule.
TEXTS = WORDS.map(lambda words: ("密" + words).strip())
QUESTION_MARKERS = ["Q: ", "## Q: ", "问：", "**问题**：", "问题 3：", "### 问题 12. ", "Ｑ：", "## 问题 十二\n"]
ANSWER_MARKERS = ["A: ", "## A: ", "答：", "**答案**：", "答案：", "Ａ："]
TAGS = [("<thinking>", "</thinking>"), ("<think>", "</think>"), ("< thinking >", "</ thinking>")]
# Pieces that are no pair: each is read as text or quarantined, never as a good pair.
BROKEN = [
    "</thinking>",
    "<thinking>\n悬空的思考",
    '<thinking type="x">\n属性\n</thinking>\n## A: 答',
    "<thinking/>",
    "Q: 没有答案的问题",
    "A: 没有问题的答案",
    "q: 小写标记\n<thinking>\n想\n</thinking>\na: 答",
    "<thinking>\n<thinking>\n不配对\n</think>\n</thinking>",
    # Text when nothing closes them; a later fence or `-->` would close them, as in CommonMark, so these two are
    # only mixed into the documents that are not checked pair by pair.
    "```\n未关闭的代码块",
    "<!-- 未关闭的注释",
    "#" + " " * 300 + "a",
    "`" * 7 + "x" + "`" * 3,
]
BROKEN_SECTIONS = [piece for piece in BROKEN if not piece.startswith(("<!--", "```"))]


@dataclass(frozen=True)
class Pair:
    question: str
    thinking: tuple[str, ...]  # nested steps, outermost first
    answer: str
    markdown: str


@st.composite
def pairs(draw) -> Pair:
    question, answer = draw(TEXTS), draw(TEXTS)
    steps = tuple(draw(st.lists(TEXTS, min_size=0, max_size=3)))
    opening, closing = draw(st.sampled_from(TAGS))
    marker = draw(st.sampled_from(QUESTION_MARKERS))
    lines = [f"{marker}{question}"]
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["```\nQ: 代码里的标记\n<thinking>\n```", "<!-- <thinking> Q: 注释 -->"])))
    lines += [f"{opening}\n{step}" for step in steps] + [closing] * len(steps)
    lines.append(f"{draw(st.sampled_from(ANSWER_MARKERS))}{answer}")
    if draw(st.booleans()):
        lines.append(draw(TEXTS) + " 补充说明")  # prose after an answer belongs to it
    return Pair(question, steps, answer, "\n".join(lines))


@st.composite
def documents(draw) -> tuple[str, list[Pair], int]:
    """A document of sections, each opened by a category heading (which ends whatever came before): good pairs,
    or one broken piece. Returns the text, its good pairs in order and the number of broken sections."""
    parts, good, broken = [], [], 0
    if draw(st.booleans()):
        parts.append("---\ncategory: 密码学\ndifficulty: 2\n---")
    for index in range(draw(st.integers(min_value=1, max_value=6))):
        parts.append(f"# 类别 {index}")
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            parts.append(draw(st.sampled_from(BROKEN_SECTIONS)))
            broken += 1
        else:
            section = draw(st.lists(pairs(), min_size=1, max_size=3))
            parts += [pair.markdown for pair in section]
            good += section
    text = draw(st.sampled_from(["\n", "\n\n"])).join(parts)
    return (text.replace("\n", "\r\n") if draw(st.booleans()) else text), good, broken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_every_well_formed_pair_is_parsed_intact_and_every_pair_is_accounted_for(document) -> None:
    text, good, _ = document

    result = parse_text(text, "fuzz.md", CONFIG)

    # A fenced block between the question and its thinking is part of the question; comments are not.
    assert [example.question.split("\n")[0] for example in result.examples] == [pair.question for pair in good]
    for example, pair in zip(result.examples, good, strict=True):
        assert example.answer.split("\n")[0] == pair.answer
        steps, level = [], example.thinking
        while level:
            steps.append(level[0].text.split("\n")[0])
            level = level[0].children
        assert tuple(steps) == pair.thinking
    assert len(result.examples) + len(result.quarantined) == result.pairs_found
    assert all(item.line >= 1 for item in result.quarantined)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*BROKEN, *QUESTION_MARKERS, *ANSWER_MARKERS, "<thinking>", "</thinking>", "<!--",
                                 "-->", "```", "~~~", "# 标题", "\x00", "\ufeff", "\u200b", "＜think＞", "**"]),
                max_size=40),
       st.lists(WORDS, max_size=40))
def test_any_mix_of_grammar_pieces_parses_without_an_exception(pieces: list[str], words: list[str]) -> None:
    text = "\n".join(piece + (words[index] if index < len(words) else "") for index, piece in enumerate(pieces))
    result = parse_text(text, "fuzz.md", CONFIG)
    assert len(result.examples) + len(result.quarantined) == result.pairs_found


def _cpu_seconds(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        parse_text(text, "fuzz.md", CONFIG)
        best = min(best, time.process_time() - started)
    return best


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([*BROKEN, *QUESTION_MARKERS, "<thinking>", "</thinking>", "<!--",
                                 "```", "# 标题", "A: 答"]), min_size=1, max_size=6))
def test_parse_time_grows_linearly_with_the_input(pieces: list[str]) -> None:
    unit = "\n".join(pieces) + "\n"
    small, large = unit * 400, unit * 1600
    # Four times the input: about four times the time if linear, sixteen if quadratic. CPU time (not wall time)
    # and the best of three keep other processes on the machine out of the ratio.
    assert _cpu_seconds(large) < 8 * max(_cpu_seconds(small), 0.005)
