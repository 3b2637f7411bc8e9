"""The line grammar of thinking-data Markdown: front matter, code fences, HTML comments, category headings,
question and answer markers, and `<thinking>` tags."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qft_core.data.normalize import fullwidth_to_ascii


@dataclass(frozen=True)
class Notice:
    """A recoverable oddity found in a document: what it is (a stable code), where, and what was done."""

    code: str
    detail: str
    line: int | None = None  # None: it concerns the whole file

    def for_example(self) -> str:
        where = "" if self.line is None else f"line {self.line}: "
        return f"{where}{self.code}: {self.detail}"

    def for_file(self, source_file: str) -> str:
        where = source_file if self.line is None else f"{source_file}:{self.line}"
        return f"{where}: {self.code}: {self.detail}"


class Unparseable(Exception):
    """Why something goes to the quarantine: a stable machine-friendly code and a detail naming lines."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class FrontMatter(BaseModel):
    """The optional YAML block at the top of a file; it applies to every pair in the file."""

    model_config = ConfigDict(extra="forbid")

    category: str | None = None
    difficulty: int | None = Field(None, ge=1, le=5)
    source: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _single_tag_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


_FRONT_MATTER_OPEN = "---"
_FRONT_MATTER_CLOSE = ("---", "...")


def read_front_matter(lines: list[str]) -> tuple[FrontMatter | None, int, list[Notice]]:
    """The front matter of a file, the index of the first body line, and what was wrong with it.

    Front matter that is not valid YAML or does not validate is ignored (with a notice); its lines
    are still skipped so that they are not read as pairs.
    """
    if not lines or lines[0].strip() != _FRONT_MATTER_OPEN:
        return None, 0, []
    closing = next((index for index in range(1, len(lines)) if lines[index].strip() in _FRONT_MATTER_CLOSE), None)
    if closing is None:
        notice = Notice("front_matter", "'---' on line 1 opens front matter that is never closed; read as text", 1)
        return None, 0, [notice]
    block = lines[1:closing]
    try:
        values = yaml.safe_load("\n".join(block))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = 2 + mark.line if mark is not None else 1
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return None, closing + 1, [Notice("front_matter", f"invalid YAML ({problem}); front matter ignored", line)]
    if values is None:
        return None, closing + 1, []
    if not isinstance(values, dict):
        return None, closing + 1, [Notice("front_matter", "not a mapping of keys; front matter ignored", 2)]
    try:
        return FrontMatter.model_validate(values), closing + 1, []
    except ValidationError as error:
        notices = []
        for item in error.errors():
            key = str(item["loc"][0]) if item["loc"] else ""
            notices.append(
                Notice("front_matter", f"key '{key}': {item['msg']}; front matter ignored", _key_line(block, key))
            )
        return None, closing + 1, notices


def _key_line(block: list[str], key: str) -> int:
    pattern = re.compile(rf"\s*{re.escape(key)}\s*:")
    return next((index + 2 for index, line in enumerate(block) if pattern.match(line)), 1)


class LineKind(StrEnum):
    TEXT = "text"
    HEADING = "heading"  # `#` or `##`: the category path of the pairs below it
    QUESTION = "question"
    ANSWER = "answer"
    UNKNOWN_MARKER = "unknown_marker"  # `q:`: looks like a question marker but is not one


@dataclass(frozen=True)
class MarkdownLine:
    number: int  # 1-based, in the file
    text: str  # the whole line
    kind: LineKind
    content: str  # after the marker for questions and answers, the title for headings, else the line
    level: int = 0  # heading level
    fenced: bool = False  # inside a code fence: never a marker, heading or tag
    in_comment: bool = False  # starts inside an HTML comment: never a marker or heading, no tag before `-->`
    comment_closes: bool = True  # False: a `<!--` on this line is never closed, and so is text


# Markers are matched on the half-width form of a line: `：` reads as `:`, `＊＊问题＊＊` as `**问题**`.
# Patterns run on whole lines of any length: no two unbounded runs of the same characters may meet, or a line
# of spaces makes the backtracking quadratic.
_MARKER = re.compile(
    r"""^(?:[ ]{0,3}\#{1,6})?[ \t]*
    (?:(?P<bold>\*\*)[ \t]*)?
    (?P<label>Q|A|问题|問題|问|問|答案|答)(?:[ \t]*[0-9]+)?[ \t]*
    (?(bold)(?:\*\*[ \t]*:|:[ \t]*\*\*)|:)""",
    re.VERBOSE,
)
_QUESTION_LABELS = {"Q", "问题", "問題", "问", "問"}
# A lowercase `q:` where a marker would be: said to be no marker rather than read as text of the pair before.
_LOWERCASE_QUESTION = re.compile(r"^(?:[ ]{0,3}\#{1,6})?[ \t]*(?:\*\*)?q[ \t]*(?:\*\*)?:")
_NUMBER = r"(?:[0-9]+|[一二三四五六七八九十百零〇两]+)"
# `## 问题 3` alone on its line (the question follows on the next lines), or followed by the question.
_QUESTION_HEADING = re.compile(
    rf"^[ ]{{0,3}}\#{{1,6}}[ \t]*(?:\*\*)?(?:问题|問題)[ \t]*{_NUMBER}(?:\*\*)?"
    r"(?:[ \t]*$|[ \t.、)]+(?P<rest>.*)$)"
)
# The title still carries an optional closing `##` sequence; `_heading_title` drops it.
_CATEGORY_HEADING = re.compile(r"^[ ]{0,3}(?P<hashes>\#{1,2})[ \t]+(?P<title>.*)$")
# Every marker and heading starts with one of these: other lines are text without running the patterns.
_MARKER_STARTS = set("#＃*＊QＱqｑAＡ问問答")
_FENCE = re.compile(r"^[ ]{0,3}(?P<fence>`{3,}|~{3,})")

# Full-width ASCII that a marker may be typed in; `：` (U+FF1A) is an ordinary Chinese colon and not counted.
_FULLWIDTH_FORMS = re.compile("[\uff01-\uff19\uff1b-\uff5e]")


def has_fullwidth_forms(span: str) -> bool:
    """Whether a marker or tag was typed with full-width letters or punctuation (other than `：`)."""
    return _FULLWIDTH_FORMS.search(span) is not None


def _fenced_lines(lines: list[str], first_number: int) -> tuple[set[int], list[Notice]]:
    """Indexes of lines inside code fences; a fence that is never closed is read as text instead.

    Linear in the number of lines: the longest closing fence at or after each line is known beforehand,
    so an opening that nothing closes is recognised without searching the rest of the file again.
    """
    openings = [_FENCE.match(line) for line in lines]
    closers = [
        match["fence"] if match is not None and not line[match.end() :].strip() else ""
        for match, line in zip(openings, lines, strict=True)
    ]
    longest_after = {character: [0] * (len(lines) + 1) for character in "`~"}
    for index in range(len(lines) - 1, -1, -1):
        for character, longest in longest_after.items():
            here = len(closers[index]) if closers[index].startswith(character) else 0
            longest[index] = max(longest[index + 1], here)
    fenced: set[int] = set()
    notices = []
    index = 0
    while index < len(lines):
        opening = openings[index]
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        if longest_after[fence[0]][index + 1] < len(fence):
            detail = f"code fence {fence} is never closed; read as text"
            notices.append(Notice("unclosed_fence", detail, first_number + index))
            index += 1
            continue
        closing = next(
            later
            for later in range(index + 1, len(lines))
            if closers[later].startswith(fence[0]) and len(closers[later]) >= len(fence)
        )
        fenced.update(range(index, closing + 1))
        index = closing + 1
    return fenced, notices


def classify_lines(lines: list[str], first_number: int) -> tuple[list[MarkdownLine], list[Notice]]:
    """Each body line with its role; `first_number` is the file line number of `lines[0]`."""
    fenced, notices = _fenced_lines(lines, first_number)
    # Like a fence, a comment that is never closed is text: it must not swallow the rest of the file.
    last_close = max((index for index, line in enumerate(lines) if index not in fenced and "-->" in line), default=-1)
    classified = []
    in_comment = False  # HTML comments span lines; inside a code fence `<!--` is code
    for index, text in enumerate(lines):
        number = first_number + index
        if index in fenced:
            classified.append(MarkdownLine(number, text, LineKind.TEXT, text, fenced=True))
            continue
        starts_in_comment, closes = in_comment, index < last_close
        in_comment = html_comment_spans(text, starts_in_comment, closes)[1]
        if not closes and html_comment_spans(text, starts_in_comment)[1]:
            notices.append(Notice("unclosed_comment", "HTML comment <!-- is never closed; read as text", number))
        if starts_in_comment:
            classified.append(MarkdownLine(number, text, LineKind.TEXT, text, in_comment=True))
            continue
        line, span = _classify(number, text)
        if not closes:
            line = dataclasses.replace(line, comment_closes=False)
        classified.append(line)
        if span and has_fullwidth_forms(span):
            detail = f"full-width characters in marker '{span.strip()}' read as ASCII"
            notices.append(Notice("fullwidth_marker", detail, number))
    return classified, notices


def html_comment_spans(text: str, starts_inside: bool, closes: bool = True) -> tuple[list[tuple[int, int]], bool]:
    """The (start, end) of each HTML comment (`<!-- … -->`) in one line, and whether the line ends inside one;
    `starts_inside`: the line continues a comment opened on an earlier line; `closes`: whether a comment left
    open at the end of the line is closed later (if not, its `<!--` is text). One pass over the line."""
    spans = []
    position, inside, start = 0, starts_inside, 0
    while True:
        if inside:
            end = text.find("-->", position)
            if end < 0:
                if closes or start == 0 and starts_inside:
                    spans.append((start, len(text)))
                    return spans, True
                return spans, False
            spans.append((start, end + 3))
            position, inside = end + 3, False
        opening = text.find("<!--", position)
        if opening < 0:
            return spans, False
        position, inside, start = opening + 4, True, opening


def _classify(number: int, text: str) -> tuple[MarkdownLine, str]:
    """The line's role, and the span of the original text that marks it (empty for plain text)."""
    if text.lstrip(" \u3000")[:1] not in _MARKER_STARTS:
        return MarkdownLine(number, text, LineKind.TEXT, text), ""
    ascii_form = fullwidth_to_ascii(text)
    if marker := _MARKER.match(ascii_form):
        kind = LineKind.QUESTION if marker["label"] in _QUESTION_LABELS else LineKind.ANSWER
        return MarkdownLine(number, text, kind, text[marker.end() :].strip()), text[: marker.end()]
    if heading := _QUESTION_HEADING.match(ascii_form):
        rest = text[heading.start("rest") :].strip() if heading["rest"] is not None else ""
        marker_end = heading.start("rest") if heading["rest"] is not None else len(text)
        return MarkdownLine(number, text, LineKind.QUESTION, rest), text[:marker_end]
    if unknown := _LOWERCASE_QUESTION.match(ascii_form):
        return MarkdownLine(number, text, LineKind.UNKNOWN_MARKER, text), text[: unknown.end()]
    if (heading := _CATEGORY_HEADING.match(ascii_form)) and (title_end := _title_end(ascii_form, heading)):
        title = text[heading.start("title") : title_end].strip()
        line = MarkdownLine(number, text, LineKind.HEADING, title, level=len(heading["hashes"]))
        return line, text[: heading.start("title")]
    return MarkdownLine(number, text, LineKind.TEXT, text), ""


def _title_end(ascii_form: str, heading: re.Match[str]) -> int:
    """Where a heading's title ends: before trailing blanks and a closing `#` sequence that follows a blank.

    0 when there is no title.
    """
    start = heading.start("title")
    title = ascii_form[start:].rstrip(" \t")
    without_closing = title.rstrip("#")
    if without_closing != title and without_closing.endswith((" ", "\t")):
        title = without_closing.rstrip(" \t")
    return start + len(title) if title else 0


class TagForm(StrEnum):
    PLAIN = "plain"  # <thinking>, </thinking>
    ATTRIBUTES = "attributes"  # <thinking type="x">: thinking tags take none
    SELF_CLOSING = "self_closing"  # <thinking/>: encloses nothing


@dataclass(frozen=True)
class ThinkingTag:
    start: int
    end: int
    name: str  # "thinking" or "think"
    closing: bool
    fullwidth: bool
    form: TagForm = TagForm.PLAIN
    written: str = ""  # the tag as the line has it, for messages about a tag that is not plain

    def __str__(self) -> str:
        if self.form is not TagForm.PLAIN:
            return self.written
        return f"</{self.name}>" if self.closing else f"<{self.name}>"


# What follows the name up to `>` is bounded, so a line of `<thinking` without `>` stays linear.
_TAG = re.compile(
    r"<[ \t]*(?:(?P<slash>/)[ \t]*)?(?P<name>thinking|think)(?![\w-])(?P<rest>[^<>\n]{0,200}?)>", re.IGNORECASE
)
_BACKTICKS = re.compile(r"`+")


def _tag_form(rest: str) -> TagForm:
    rest = rest.strip(" \t")
    if not rest:
        return TagForm.PLAIN
    return TagForm.SELF_CLOSING if rest == "/" else TagForm.ATTRIBUTES


def find_thinking_tags(text: str, in_comment: bool = False, comment_closes: bool = True) -> list[ThinkingTag]:
    """The opening and closing thinking tags in one line, full-width spellings (`＜think＞`) included, and
    the malformed ones (with attributes, self-closing) marked by their form.

    A tag quoted in inline code (`` `<thinking>` ``) or inside an HTML comment is text, not a tag;
    `in_comment`: the line starts inside a comment opened on an earlier line; `comment_closes`: False when a
    comment opened on this line is never closed (its `<!--` is then text).
    """
    if "<" not in text and "＜" not in text:
        return []
    ascii_form = fullwidth_to_ascii(text)
    hidden = inline_code_spans(ascii_form) if "`" in ascii_form else []
    if in_comment or "<!--" in ascii_form:
        hidden += html_comment_spans(ascii_form, in_comment, comment_closes)[0]
    return [
        ThinkingTag(
            match.start(),
            match.end(),
            match["name"].lower(),
            bool(match["slash"]),
            has_fullwidth_forms(text[match.start() : match.end()]),
            _tag_form(match["rest"]),
            text[match.start() : match.end()],
        )
        for match in _TAG.finditer(ascii_form)
        if not any(start <= match.start() < end for start, end in hidden)
    ]


def inline_code_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each inline code span: a run of backticks up to the next run of the same length.

    Found in one pass over the runs (a regular expression that searches for the closing run from every
    backtick is quadratic on long lines full of unmatched backticks).
    """
    runs = [match.span() for match in _BACKTICKS.finditer(text)]
    next_same_length: list[int | None] = [None] * len(runs)
    latest: dict[int, int] = {}
    for index in range(len(runs) - 1, -1, -1):
        length = runs[index][1] - runs[index][0]
        next_same_length[index] = latest.get(length)
        latest[length] = index
    spans = []
    index = 0
    while index < len(runs):
        closing = next_same_length[index]
        if closing is None:
            index += 1
            continue
        spans.append((runs[index][0], runs[closing][1]))
        index = closing + 1
    return spans
