"""Parse thinking-data Markdown into ThinkingExamples; every pair that cannot be parsed goes to the quarantine."""

from __future__ import annotations

import functools
import hashlib
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qft_core.config import DataConfig
from qft_core.data.corpus import CorpusFile, CorpusManifest
from qft_core.data.markdown import (
    FrontMatter,
    LineKind,
    MarkdownLine,
    Notice,
    TagForm,
    ThinkingTag,
    Unparseable,
    classify_lines,
    find_thinking_tags,
    html_comment_spans,
    read_front_matter,
)
from qft_core.data.normalize import count_traditional, remove_zero_width, to_simplified
from qft_core.data.sources import (
    UnreadableFile,
    decode_markdown,
    markdown_files,
    path_of_name,
    read_markdown_bytes,
)
from qft_core.records import QuarantinedPair, ThinkingExample, ThinkingStructure

Progress = Callable[[int, int, Path], None]
# Reads a file's bytes (path, max_bytes); raises UnreadableFile.
ReadBytes = Callable[[Path, int], bytes]


@dataclass
class ParseResult:
    """What a parse produced: examples, the quarantine, and warnings naming file and line."""

    examples: list[ThinkingExample] = field(default_factory=list)
    quarantined: list[QuarantinedPair] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_read: int = 0
    # The ids of `examples`, kept across `extend` calls so that adding a file costs its own size only.
    _ids: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def pairs_found(self) -> int:
        return len(self.examples) + len(self.quarantined)

    def extend(self, other: ParseResult) -> None:
        """Add another file's result; an example whose id is already taken gets a disambiguated one."""
        if len(self._ids) != len(self.examples):
            self._ids = {example.id for example in self.examples}
        for example in other.examples:
            example.id = _claim_id(example, self._ids)
            self.examples.append(example)
        self.quarantined.extend(other.quarantined)
        self.warnings.extend(other.warnings)
        self.files_read += other.files_read

    def report(self) -> dict:
        return {
            "files_read": self.files_read,
            "pairs_found": self.pairs_found,
            "parsed": len(self.examples),
            "quarantined": len(self.quarantined),
            "quarantine": [
                {"file": item.file, "line": item.line, "reason": item.reason} for item in self.quarantined
            ],
            "warnings": list(self.warnings),
        }


def example_id(source_file: str, question: str, disambiguation: str = "") -> str:
    """Stable id: the same question in the same file keeps its id from run to run."""
    digest = hashlib.sha1(f"{source_file}\n{question}{disambiguation}".encode())
    return digest.hexdigest()[:16]


def _claim_id(example: ThinkingExample, taken: set[str]) -> str:
    candidate, attempt = example.id, 0
    while candidate in taken:
        attempt += 1
        suffix = f"\n{example.source_line}" if attempt == 1 else f"\n{example.source_line}\n{attempt}"
        candidate = example_id(example.source_file, example.question, suffix)
    taken.add(candidate)
    return candidate


def parse_paths(paths: Iterable[str | Path], config: DataConfig, progress: Progress | None = None) -> ParseResult:
    """Parse files and folders (searched recursively for `.md` and `.markdown` files of any case, in sorted order).

    A file that fails in any way is quarantined whole; the others are still parsed.
    """
    files, walk_warnings = markdown_files([Path(path) for path in paths])
    reads = [(path, source_file, read_markdown_bytes) for path, source_file in files]
    return _parse_each(reads, ParseResult(warnings=walk_warnings), config, progress)


def _parse_each(
    reads: Sequence[tuple[Path, str, ReadBytes]], result: ParseResult, config: DataConfig, progress: Progress | None
) -> ParseResult:
    """Add each file to `result`, read by its own reader; a file that fails in any way but CorpusChangedError is
    quarantined whole, and the others are still parsed."""
    for done, (path, source_file, read) in enumerate(reads, start=1):
        try:
            part = _parse_file(path, source_file, config, read)
        except CorpusChangedError:
            raise
        except Exception as error:  # noqa: BLE001 — one broken file must never stop the rest of the corpus
            part = _unreadable(source_file, "parse_error", f"{type(error).__name__}: {error}")
        result.extend(part)
        if progress is not None:
            progress(done, len(reads), path)
    return result


class CorpusChangedError(ValueError):
    """A corpus file that is not what the manifest given to the parse says: parsing it would give examples of
    another data version than the manifest's."""


def parse_manifest(manifest: CorpusManifest, config: DataConfig, progress: Progress | None = None) -> ParseResult:
    """Parse exactly the files of `manifest`, each checked against its size and sha256 there, so that the
    manifest's content hash is the version of what was parsed. Files the scan could not open are quarantined;
    files added since are not read. Raises CorpusChangedError naming a file changed or removed since the scan."""
    root = Path(manifest.root)
    result = ParseResult(warnings=list(manifest.warnings))
    for entry in manifest.unreadable:
        result.quarantined.append(QuarantinedPair(file=entry.path, line=0, reason=f"unreadable: {entry.reason}"))
        result.files_read += 1
    reads = [(path_of_name(root, entry.path), entry.path, functools.partial(_listed_bytes, entry)) for entry in manifest.files]
    return _parse_each(reads, result, config, progress)


def _listed_bytes(entry: CorpusFile, path: Path, max_bytes: int) -> bytes:
    """The bytes of a manifest's file, refused unless its size and sha256 are the manifest's (a file over
    `max_bytes` is never read whole, so only its size is compared)."""
    changed = f"{entry.path}: changed since the corpus manifest was taken"
    again = "materialize raw_thinking_documents again to parse the corpus as it is now"
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CorpusChangedError(f"{entry.path}: listed in the corpus manifest but {error.strerror or error}; {again}") from None
    if size != entry.bytes:
        raise CorpusChangedError(f"{changed} ({entry.bytes} bytes then, {size} now); {again}")
    data = read_markdown_bytes(path, max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise CorpusChangedError(f"{changed} (sha256 {entry.sha256[:12]}… then, {digest[:12]}… now); {again}")
    return data


def parse_file(path: str | Path, config: DataConfig) -> ParseResult:
    """Parse one Markdown file; its examples name it by its file name."""
    path = Path(path)
    return _parse_file(path, path.name, config)


def parse_text(text: str, source_file: str, config: DataConfig) -> ParseResult:
    """Parse the text of one Markdown file; `source_file` is the name its examples and warnings carry."""
    return _parse_document(text, source_file, config, [])


def _parse_file(
    path: Path, source_file: str, config: DataConfig, read: ReadBytes = read_markdown_bytes
) -> ParseResult:
    try:
        text, notices = decode_markdown(read(path, config.max_file_bytes))
    except UnreadableFile as error:
        return _unreadable(source_file, error.code, error.detail)
    return _parse_document(text, source_file, config, notices)


def _unreadable(source_file: str, code: str, detail: str) -> ParseResult:
    reason = f"{code}: {detail}"
    return ParseResult(
        quarantined=[QuarantinedPair(file=source_file, line=0, reason=reason)],
        warnings=[f"{source_file}: {reason}; file quarantined"],
        files_read=1,
    )


class UnparseablePair(Unparseable):
    """A pair that cannot become an example."""


@dataclass
class _Segment:
    """The lines from one marker up to the next question marker or category heading."""

    kind: Literal["pair", "answer_only", "loose", "unknown_marker"]
    lines: list[MarkdownLine]
    category_path: list[str]

    @property
    def first_line(self) -> int:
        return self.lines[0].number

    @property
    def last_line(self) -> int:
        return self.lines[-1].number

    @property
    def raw(self) -> str:
        return "\n".join(line.text for line in self.lines).strip("\n")


class _Notices:
    """A document's notices, found by line: each pair carries those of its whole file and of its own lines."""

    def __init__(self, notices: Iterable[Notice]) -> None:
        self.whole_file: list[Notice] = []
        self.by_line: dict[int, list[Notice]] = {}
        self.add(notices)

    def add(self, notices: Iterable[Notice]) -> None:
        for notice in notices:
            if notice.line is None:
                self.whole_file.append(notice)
            else:
                self.by_line.setdefault(notice.line, []).append(notice)

    def concerning(self, first_line: int, last_line: int) -> list[Notice]:
        on_lines = (self.by_line.get(line, []) for line in range(first_line, last_line + 1))
        return [*self.whole_file, *(notice for notices in on_lines for notice in notices)]

    def in_order(self) -> list[Notice]:
        """Whole-file notices first, then by line."""
        return [*self.whole_file, *(notice for line in sorted(self.by_line) for notice in self.by_line[line])]


def _parse_document(text: str, source_file: str, config: DataConfig, file_notices: list[Notice]) -> ParseResult:
    lines, text_notices = _normalised_lines(text)
    front_matter, body_start, front_notices = read_front_matter(lines)
    body, line_notices = classify_lines(lines[body_start:], first_number=body_start + 1)
    notices = _Notices([*file_notices, *text_notices, *front_notices, *line_notices])
    result = ParseResult(files_read=1)
    taken: set[str] = set()
    for segment in _segments(body):
        try:
            example, found = _example(segment, source_file, front_matter or FrontMatter(), config, notices)
        except UnparseablePair as error:
            result.quarantined.append(
                QuarantinedPair(file=source_file, line=segment.first_line, reason=str(error), raw=segment.raw)
            )
            continue
        notices.add(found)
        if example is not None:
            example.id = _claim_id(example, taken)
            result.examples.append(example)
    result.warnings = [notice.for_file(source_file) for notice in notices.in_order()]
    return result


def _normalised_lines(text: str) -> tuple[list[str], list[Notice]]:
    """Lines with the BOM, carriage returns and zero-width characters removed, and a notice for each fix."""
    notices = []
    if text.startswith("\ufeff"):
        text = text[1:]
        notices.append(Notice("bom", "UTF-8 byte order mark removed"))
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        notices.append(Notice("crlf", "CRLF line ends converted to LF"))
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        cleaned, removed = remove_zero_width(line)
        if removed:
            notices.append(Notice("zero_width", f"{removed} zero-width character(s) removed", number))
        lines.append(cleaned)
    return lines, notices


def _segments(body: list[MarkdownLine]) -> Iterable[_Segment]:
    """Cut the body at question markers, category headings, answers that no question precedes, and a `q:` that
    goes on with thinking or an answer (it would otherwise break the pair before it)."""
    headings: dict[int, str] = {}
    current: _Segment | None = None
    answered = False
    unknown_at: int | None = None  # where a `q:` sits among the lines after the current pair's answer
    for line in body:
        if line.kind is LineKind.HEADING:
            if current is not None:
                yield current
            current = None
            headings = {level: title for level, title in headings.items() if level < line.level}
            headings[line.level] = to_simplified(line.content)
        elif line.kind is LineKind.QUESTION:
            if current is not None:
                yield current
            current, answered, unknown_at = _Segment("pair", [line], list(headings.values())), False, None
        elif unknown_at is not None and current is not None and (line.kind is LineKind.ANSWER or _has_tags(line)):
            # The `q:` opens what reads as a pair of its own: the answered pair ends before it.
            unknown = _Segment("unknown_marker", [*current.lines[unknown_at:], line], current.category_path)
            del current.lines[unknown_at:]
            yield current
            current, unknown_at = unknown, None
        elif line.kind is LineKind.UNKNOWN_MARKER and current is not None and current.kind == "pair" and answered:
            unknown_at = unknown_at if unknown_at is not None else len(current.lines)
            current.lines.append(line)
        elif line.kind is LineKind.UNKNOWN_MARKER and (current is None or current.kind == "loose"):
            if current is not None:
                yield current
            current = _Segment("unknown_marker", [line], list(headings.values()))
        elif line.kind is LineKind.ANSWER and current is not None and current.kind == "pair" and not answered:
            current.lines.append(line)
            answered = True
        elif line.kind is LineKind.ANSWER and current is not None and current.kind == "unknown_marker":
            current.lines.append(line)
        elif line.kind is LineKind.ANSWER:
            if current is not None:
                yield current
            current, unknown_at = _Segment("answer_only", [line], list(headings.values())), None
        elif current is not None:
            current.lines.append(line)
        elif line.text.strip():
            current = _Segment("loose", [line], list(headings.values()))
    if current is not None:
        yield current


def _has_tags(line: MarkdownLine) -> bool:
    return not line.fenced and bool(find_thinking_tags(line.text, line.in_comment, line.comment_closes))


@dataclass
class _Pair:
    """What a pair segment reads as, before traditional characters are simplified."""

    question: str
    thinking: list[ThinkingStructure]
    answer: str
    notices: list[Notice]


def _example(
    segment: _Segment, source_file: str, front_matter: FrontMatter, config: DataConfig, notices: _Notices
) -> tuple[ThinkingExample | None, list[Notice]]:
    """The example a segment holds (None for text between pairs) and the notices found while reading it.

    `notices` are the document's notices so far: the example carries those of its file and its lines.
    """
    if segment.kind == "loose":
        _reject_stray_tags(segment)
        return None, []
    if segment.kind == "unknown_marker":
        if any(line.kind is LineKind.ANSWER or _has_tags(line) for line in segment.lines):
            detail = (
                f"{segment.lines[0].text.strip()[:40]!r} at line {segment.first_line} is not a question marker "
                "(write Q: or 问：); it and the lines up to the next question were not read"
            )
            raise UnparseablePair("unknown_marker", detail)
        return None, []  # prose that happens to start with `q:`, outside any pair: ignored like other loose text
    if segment.kind == "answer_only":
        detail = f"answer at line {segment.first_line} has no question before it"
        raise UnparseablePair("answer_without_question", detail)
    pair = _read_pair(segment, config.max_thinking_depth)
    original_text = None
    traditional = count_traditional(
        "\n".join([pair.question, pair.answer, *(step.text for root in pair.thinking for step in root.walk())])
    )
    if traditional:
        pair.question, pair.answer = to_simplified(pair.question), to_simplified(pair.answer)
        pair.thinking = [_simplified(root) for root in pair.thinking]
        original_text = segment.raw
        detail = f"{traditional} traditional character(s) converted to simplified"
        pair.notices.append(Notice("traditional", detail, segment.first_line))
    own = notices.concerning(segment.first_line, segment.last_line)
    example = ThinkingExample(
        id=example_id(source_file, pair.question),
        question=pair.question,
        answer=pair.answer,
        source_file=source_file,
        source_line=segment.first_line,
        category_path=segment.category_path,
        category=front_matter.category,
        difficulty=front_matter.difficulty,
        source=front_matter.source,
        tags=list(front_matter.tags),
        warnings=[notice.for_example() for notice in sorted(own + pair.notices, key=lambda notice: notice.line or 0)],
        thinking=pair.thinking,
        thinking_origin="expert" if pair.thinking else "none",
        original_text=original_text,
    )
    return example, pair.notices


def _reject_stray_tags(segment: _Segment) -> None:
    for line in segment.lines:
        tags = [] if line.fenced else find_thinking_tags(line.text, line.in_comment, line.comment_closes)
        if tags:
            _reject_malformed_tag(tags[0], line.number)
            detail = f"{tags[0]} at line {line.number} is not between a question and an answer"
            raise UnparseablePair("stray_tag", detail)


def _read_pair(segment: _Segment, max_depth: int) -> _Pair:
    """Question, thinking tree and answer of a pair segment; raises UnparseablePair."""
    nul_line = next((line.number for line in segment.lines if "\x00" in line.text), None)
    if nul_line is not None:
        raise UnparseablePair("nul_byte", f"line {nul_line} holds a NUL byte: the pair is not text")
    answer_at = next((index for index, line in enumerate(segment.lines) if line.kind is LineKind.ANSWER), None)
    reading = _ThinkingReader(max_depth)
    for line in segment.lines[:answer_at]:
        reading.feed(line)
    reading.finish(segment.lines[answer_at].number if answer_at is not None else None)
    question = _clean_block(reading.question)
    if not question:
        raise UnparseablePair("empty_question", f"question marker at line {segment.first_line} has no question text")
    if answer_at is None:
        raise UnparseablePair("missing_answer", f"question at line {segment.first_line} has no answer")
    answer_lines = segment.lines[answer_at:]
    _reject_tags_in_answer(answer_lines)
    answer_text = "\n".join(
        [_visible(answer_lines[0], answer_lines[0].content), *(_visible(line, line.text) for line in answer_lines[1:])]
    )
    answer = _clean_block(answer_text, drop_rules=True)
    if not answer:
        raise UnparseablePair("empty_answer", f"answer marker at line {answer_lines[0].number} has no answer text")
    return _Pair(question, reading.roots, answer, reading.notices)


def _reject_tags_in_answer(answer_lines: list[MarkdownLine]) -> None:
    for index, line in enumerate(answer_lines):
        tags = [] if line.fenced else find_thinking_tags(
            line.content if index == 0 else line.text, line.in_comment, line.comment_closes
        )
        if tags:
            _reject_malformed_tag(tags[0], line.number)
            detail = f"{tags[0]} at line {line.number} is inside the answer; thinking goes before the answer"
            raise UnparseablePair("misplaced_tag", detail)


def _visible(line: MarkdownLine, text: str) -> str:
    """`text` (of `line`) without its HTML comments, which a reader of the rendered Markdown never sees; in
    fenced code they are code and stay."""
    if line.fenced or not (line.in_comment or "<!--" in text):
        return text
    kept, position = [], 0
    for start, end in html_comment_spans(text, line.in_comment, line.comment_closes)[0]:
        kept.append(text[position:start])
        position = end
    kept.append(text[position:])
    return "".join(kept)


def _reject_malformed_tag(tag: ThinkingTag, number: int) -> None:
    """A tag with attributes or a self-closing one is refused for what it is, not as a stray or unclosed tag."""
    if tag.form is TagForm.ATTRIBUTES:
        raise UnparseablePair(
            "tag_with_attributes", f"{tag} at line {number}: thinking tags take no attributes; write <{tag.name}>"
        )
    if tag.form is TagForm.SELF_CLOSING:
        detail = f"{tag} at line {number} is self-closing: thinking goes between <{tag.name}> and </{tag.name}>"
        raise UnparseablePair("self_closing_tag", detail)


def _simplified(step: ThinkingStructure) -> ThinkingStructure:
    return ThinkingStructure(
        text=to_simplified(step.text), line=step.line, children=[_simplified(child) for child in step.children]
    )


@dataclass
class _OpenBlock:
    tag: ThinkingTag
    line: int
    # The block's own text, one paragraph per stretch between its nested blocks, each kept as its pieces
    # (joined once, when the block closes: appending to one string is quadratic in a long block).
    paragraphs: list[list[str]] = field(default_factory=lambda: [[]])
    children: list[ThinkingStructure] = field(default_factory=list)

    def add_child(self, step: ThinkingStructure) -> None:
        self.children.append(step)
        self.paragraphs.append([])


class _ThinkingReader:
    """Reads the lines between a question marker and its answer: question text, then the thinking tree."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.question_parts: list[str] = []
        self.first_stray_line: int | None = None  # text after the thinking that is not the answer
        self.stack: list[_OpenBlock] = []
        self.roots: list[ThinkingStructure] = []
        self.notices: list[Notice] = []

    @property
    def question(self) -> str:
        return "".join(self.question_parts)

    def feed(self, line: MarkdownLine) -> None:
        text = _visible(line, line.content if line.kind is LineKind.QUESTION else line.text)
        tags = [] if line.fenced else find_thinking_tags(text)
        position = 0
        for tag in tags:
            self._text(line.number, text[position : tag.start])
            self._tag(line.number, tag)
            position = tag.end
        self._text(line.number, text[position:] + "\n")

    def finish(self, answer_line: int | None) -> None:
        if self.stack:
            block = self.stack[-1]
            ends = f"before the answer at line {answer_line}" if answer_line is not None else "before the pair ends"
            raise UnparseablePair("unclosed_tag", f"{block.tag} opened at line {block.line} is never closed {ends}")
        if self.first_stray_line is not None:
            detail = "text between the thinking and the answer was ignored"
            self.notices.append(Notice("text_outside_thinking", detail, self.first_stray_line))

    def _text(self, number: int, text: str) -> None:
        if self.stack:
            self.stack[-1].paragraphs[-1].append(text)
        elif self.roots:
            if text.strip() and self.first_stray_line is None:
                self.first_stray_line = number
        else:
            self.question_parts.append(text)

    def _tag(self, number: int, tag: ThinkingTag) -> None:
        _reject_malformed_tag(tag, number)
        if tag.fullwidth:
            self.notices.append(Notice("fullwidth_marker", f"full-width tag read as {tag}", number))
        if not tag.closing:
            if len(self.stack) == self.max_depth:
                raise UnparseablePair(
                    "too_deep", f"{tag} at line {number} nests thinking deeper than the limit of {self.max_depth}"
                )
            self.stack.append(_OpenBlock(tag, number))
            return
        if not self.stack:
            raise UnparseablePair("stray_tag", f"{tag} at line {number} closes no open tag")
        block = self.stack.pop()
        if block.tag.name != tag.name:
            detail = f"{block.tag} opened at line {block.line} is closed by {tag} at line {number}"
            raise UnparseablePair("mismatched_tag", detail)
        step = ThinkingStructure(
            text="\n".join(paragraph for paragraph in map(_clean_block, map("".join, block.paragraphs)) if paragraph),
            line=block.line,
            children=block.children,
        )
        if not any(node.text for node in step.walk()):
            raise UnparseablePair("empty_thinking", f"{block.tag} at line {block.line} is empty")
        if self.stack:
            self.stack[-1].add_child(step)
        else:
            self.roots.append(step)


_RULES = {"---", "***", "___"}


def _clean_block(text: str, drop_rules: bool = False) -> str:
    """Trim surrounding blank lines and common indentation; optionally drop trailing `---` separators."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and (not lines[-1] or (drop_rules and lines[-1].replace(" ", "") in _RULES)):
        lines.pop()
    return textwrap.dedent("\n".join(lines)).strip()

