"""The bad-input corpus: malformed and odd Markdown files written into a folder, each declaring what the parser
must make of it — the questions of its good pairs, the quarantine codes of its bad pairs, its warning codes."""

from __future__ import annotations

import codecs
import os
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Quarantine codes of records that stand for a whole file (line 0, no raw text).
WHOLE_FILE_CODES = frozenset({"binary_file", "undecodable", "file_too_large", "unreadable", "parse_error"})
# One byte over the default `data.max_file_bytes`; written sparse, so it costs no disk.
OVER_DEFAULT_LIMIT = 50_000_001
TERMS = ("AES", "SM4", "RSA", "SM2", "SHA-256", "SM3", "HMAC", "ECDSA", "X25519", "ML-KEM", "ZUC", "TLS 1.3")
SCENES = ("磁盘加密", "网上银行", "电子签章", "即时通信", "物联网设备", "证书签发", "密钥协商", "口令存储")
QUESTION_MARKERS = ("Q: ", "问：", "### Q: ", "**问题**：", "问题 3：")
ANSWER_MARKERS = ("A: ", "答：", "### A: ", "**答案**：", "答案：")


@dataclass(frozen=True)
class Piece:
    """A stretch of Markdown: a good pair (with its question as parsed), a bad pair (with its quarantine
    code), or text that holds no pair."""

    markdown: str
    question: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BadInput:
    """One entry of the corpus and what parsing it must give."""

    name: str  # path relative to the corpus root, as the parser names it
    case: str  # what is odd about it
    good: tuple[str, ...] = ()  # questions of the pairs that must be parsed
    bad: tuple[str, ...] = ()  # quarantine codes, in file order; a whole-file code stands alone
    warnings: frozenset[str] = frozenset()  # warning codes the parser reports under this name
    read: bool = True  # whether the parser reads it as a file (skipped links are not read)


@dataclass
class BadCorpus:
    """The written corpus and the counts a parse of it must give."""

    root: Path
    inputs: list[BadInput] = field(default_factory=list)

    @property
    def files_read(self) -> int:
        return sum(entry.read for entry in self.inputs)

    @property
    def good_questions(self) -> list[str]:
        return [question for entry in self.inputs for question in entry.good]

    @property
    def parsed(self) -> int:
        return len(self.good_questions)

    @property
    def quarantined(self) -> int:
        return sum(len(entry.bad) for entry in self.inputs)

    @property
    def pairs_found(self) -> int:
        return self.parsed + self.quarantined

    @property
    def odd_files(self) -> int:
        """Entries that are malformed or odd in some way (every one but the plain good file)."""
        return sum(entry.case != "plain good pairs" for entry in self.inputs)

    def by_name(self) -> dict[str, BadInput]:
        return {entry.name: entry for entry in self.inputs}

    def reasons(self) -> dict[str, Counter[str]]:
        """Expected quarantine codes per file, counted."""
        return {entry.name: Counter(entry.bad) for entry in self.inputs if entry.bad}


def good(key: str, index: int, style: int = 0, answer_extra: str = "") -> Piece:
    """A pair that must be parsed; `key` makes its question unique in the corpus."""
    term = TERMS[(index + style) % len(TERMS)]
    question = f"{key} 第 {index} 题：{term} 在{SCENES[index % len(SCENES)]}中的主要用途是什么？"
    markdown = (
        f"{QUESTION_MARKERS[style % len(QUESTION_MARKERS)]}{question}\n"
        "<thinking>\n"
        f"{term} 属于密码学的基本构件，先回忆它的定义，再看场景的要求。\n"
        "</thinking>\n"
        f"{ANSWER_MARKERS[style % len(ANSWER_MARKERS)]}{term} 用于保护数据，这是 {key} 的第 {index} 个答案。{answer_extra}\n"
    )
    return Piece(markdown, question=question)


def bad(reason: str, markdown: str) -> Piece:
    return Piece(markdown, reason=reason)


def text(markdown: str) -> Piece:
    return Piece(markdown)


def nested_thinking(depth: int, innermost: str) -> str:
    return "<thinking>\n" * depth + innermost + "\n" + "</thinking>\n" * depth


# Pairs that must be quarantined, one per quarantine code (and a few spellings of the same fault).
UNCLOSED = "Q: 推理没有闭合的问题？\n<thinking>\n这段推理没有结束标签。\nA: 答案。\n"
UNCLOSED_BEFORE_NEXT = "问：推理一直开到下一个问题？\n<thinking>\n没有结束。\n"
STRAY_CLOSING = "Q: 多了一个结束标签？\n</thinking>\nA: 答案。\n"
TAG_OUTSIDE_PAIR = "在任何问题之前出现的推理：\n<thinking>\n孤立的推理。\n</thinking>\n"
MISMATCHED = "Q: 标签不配对？\n<think>\n开头是 think，结尾是 thinking。\n</thinking>\nA: 答案。\n"
MISPLACED = "Q: 推理写进了答案？\nA: 答案开头。\n<thinking>\n放错位置的推理。\n</thinking>\n"
EMPTY_THINKING = "Q: 空的推理？\n<thinking>\n\n</thinking>\nA: 答案。\n"
EMPTY_NESTED_THINKING = "Q: 嵌套但全空的推理？\n<thinking>\n<think>\n</think>\n</thinking>\nA: 答案。\n"
MISSING_ANSWER = "Q: 只有问题没有答案？\n<thinking>\n想了但没答。\n</thinking>\n"
ANSWER_WITHOUT_QUESTION = "A: 没有问题的答案。\n"
EMPTY_QUESTION = "Q:\n<thinking>\n问题是空的。\n</thinking>\nA: 答案。\n"
EMPTY_ANSWER = "Q: 答案是空的？\n<thinking>\n答案标记后面什么也没有。\n</thinking>\nA:\n"
TOO_DEEP = "Q: 推理嵌套过深？\n" + nested_thinking(17, "第十七层。") + "A: 答案。\n"


class _CorpusWriter:
    """Writes the entries of a corpus and records what each must give."""

    def __init__(self, root: Path) -> None:
        self.corpus = BadCorpus(root)
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        path = self.corpus.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def pieces(
        self,
        name: str,
        case: str,
        pieces: Iterable[Piece],
        *,
        encoding: str = "utf-8",
        prefix: bytes = b"",
        newline: str = "\n",
        warnings: Iterable[str] = (),
    ) -> None:
        pieces = list(pieces)
        markdown = "\n".join(piece.markdown for piece in pieces).replace("\n", newline)
        self.path(name).write_bytes(prefix + markdown.encode(encoding))
        self.expect(
            name,
            case,
            good=[piece.question for piece in pieces if piece.question is not None],
            bad=[piece.reason for piece in pieces if piece.reason is not None],
            warnings=warnings,
        )

    def raw(self, name: str, case: str, data: bytes, *, reason: str) -> None:
        self.path(name).write_bytes(data)
        self.expect(name, case, bad=[reason], warnings=[reason])

    def expect(
        self,
        name: str,
        case: str,
        *,
        good: Iterable[str] = (),
        bad: Iterable[str] = (),
        warnings: Iterable[str] = (),
        read: bool = True,
    ) -> None:
        self.corpus.inputs.append(
            BadInput(name, case, tuple(good), tuple(bad), frozenset(warnings), read)
        )


def write_bad_corpus(root: Path, *, huge_pairs: int = 2_400, unclosed_fences: int = 20_000) -> BadCorpus:
    """Write the corpus into `root` (created) and return what a parse of it must give.

    `huge_pairs` sets the size of `huge.md` (2,400 pairs make about 5 MB); `unclosed_fences` the number of
    fences that `pathological_lines.md` opens and never closes (each one is a warning).
    """
    writer = _CorpusWriter(root)
    _malformed_pairs(writer)
    _whole_files(writer)
    _encodings_and_line_ends(writer)
    _front_matter_and_code(writer)
    _sizes_and_shapes(writer, huge_pairs, unclosed_fences)
    _links_and_folders(writer)
    return writer.corpus


def _malformed_pairs(writer: _CorpusWriter) -> None:
    writer.pieces("good.md", "plain good pairs", [good("good", n, style=n) for n in range(5)])
    cases = [
        ("unclosed_tag.md", "thinking never closed before the answer", UNCLOSED, "unclosed_tag"),
        ("unclosed_before_next.md", "thinking still open at the next question", UNCLOSED_BEFORE_NEXT, "unclosed_tag"),
        ("stray_closing_tag.md", "closing tag with nothing open", STRAY_CLOSING, "stray_tag"),
        ("mismatched_tag.md", "<think> closed by </thinking>", MISMATCHED, "mismatched_tag"),
        ("misplaced_tag.md", "thinking inside the answer", MISPLACED, "misplaced_tag"),
        ("empty_thinking.md", "thinking block with no text", EMPTY_THINKING, "empty_thinking"),
        ("empty_nested_thinking.md", "nested thinking with no text", EMPTY_NESTED_THINKING, "empty_thinking"),
        ("too_deep.md", "17 nested thinking blocks (limit 16)", TOO_DEEP, "too_deep"),
        ("missing_answer.md", "question without answer", MISSING_ANSWER, "missing_answer"),
        ("answer_without_question.md", "answer first", ANSWER_WITHOUT_QUESTION, "answer_without_question"),
        ("empty_question.md", "question marker with no text", EMPTY_QUESTION, "empty_question"),
        ("empty_answer.md", "answer marker with no text", EMPTY_ANSWER, "empty_answer"),
    ]
    for name, case, markdown, reason in cases:
        key = name.removesuffix(".md")
        # The bad pair sits between good ones: its neighbours must survive it.
        writer.pieces(name, case, [good(key, 1), bad(reason, markdown), good(key, 2, style=1)])
    writer.pieces(
        "tag_outside_pair.md",
        "thinking block before any question",
        [bad("stray_tag", TAG_OUTSIDE_PAIR), good("tag_outside_pair", 1), good("tag_outside_pair", 2, style=1)],
    )
    writer.pieces(
        "second_answer.md",
        "a second answer marker after a complete pair",
        [good("second_answer", 1), bad("answer_without_question", "A: 第二个答案。\n"), good("second_answer", 2)],
    )
    writer.pieces(
        "missing_answer_at_end.md",
        "the last question of the file has no answer",
        [good("missing_answer_at_end", 1), bad("missing_answer", "问：文件末尾的问题？\n")],
    )
    deepest = "Q: depth_limit 第 1 题：刚好十六层的推理可以吗？\n" + nested_thinking(16, "第十六层。") + "A: 可以。\n"
    writer.pieces(
        "depth_limit.md",
        "16 nested blocks (at the limit) and 17 (over it)",
        [Piece(deepest, question="depth_limit 第 1 题：刚好十六层的推理可以吗？"), bad("too_deep", TOO_DEEP)],
    )
    writer.pieces(
        "all_bad.md",
        "nothing but broken pairs",
        [bad("unclosed_tag", UNCLOSED), bad("missing_answer", MISSING_ANSWER), bad("empty_thinking", EMPTY_THINKING),
         bad("mismatched_tag", MISMATCHED), bad("misplaced_tag", MISPLACED)],
    )


def _whole_files(writer: _CorpusWriter) -> None:
    writer.raw(
        "binary.md", "PNG bytes named .md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        reason="binary_file",
    )
    writer.raw(
        "control_characters.md", "no NUL byte but mostly control characters", bytes(range(1, 32)) * 20,
        reason="binary_file",
    )
    writer.raw(
        "undecodable.md", "bytes that are neither UTF-8 nor GB18030", b"Q: \xff\xfe\xff\x80\x80\nA: \xff\n" * 4,
        reason="undecodable",
    )
    writer.raw("utf16_bom_odd_length.md", "UTF-16 byte order mark, then an odd byte", codecs.BOM_UTF16_LE + b"Q\x00:",
               reason="undecodable")
    with writer.path("too_large.md").open("wb") as handle:
        handle.truncate(OVER_DEFAULT_LIMIT)  # sparse: the size is real, the disk blocks are not
    writer.expect("too_large.md", "one byte over data.max_file_bytes", bad=["file_too_large"],
                  warnings=["file_too_large"])
    if os.geteuid() != 0:
        # root reads any file whatever its mode, so the case exists only for ordinary users.
        locked = writer.path("no_permission.md")
        locked.write_text(good("no_permission", 1).markdown, encoding="utf-8")
        locked.chmod(0)
        writer.expect("no_permission.md", "file without read permission", bad=["unreadable"], warnings=["unreadable"])


def two_good(key: str) -> list[Piece]:
    return [good(key, 1), good(key, 2, style=2)]


def _encodings_and_line_ends(writer: _CorpusWriter) -> None:
    writer.pieces(
        "gb18030.md", "GB18030 with a character outside GBK",
        [good("gb18030", 1, answer_extra="生僻字𠮷。"), good("gb18030", 2)],
        encoding="gb18030", warnings=["encoding"],
    )
    writer.pieces(
        "gbk.md", "GBK, with a bad pair", [good("gbk", 1), bad("missing_answer", MISSING_ANSWER), good("gbk", 2)],
        encoding="gbk", warnings=["encoding"],
    )
    writer.pieces(
        "utf8_bom.md", "UTF-8 byte order mark before front matter",
        [text("---\ncategory: symmetric\ndifficulty: 2\n---\n"), *two_good("utf8_bom")],
        prefix=codecs.BOM_UTF8, warnings=["bom"],
    )
    writer.pieces("bom_only.md", "nothing but a UTF-8 byte order mark", [], prefix=codecs.BOM_UTF8, warnings=["bom"])
    writer.pieces(
        "utf16_le.md", "UTF-16 little-endian with a byte order mark", two_good("utf16_le"),
        encoding="utf-16-le", prefix=codecs.BOM_UTF16_LE, warnings=["encoding"],
    )
    writer.pieces(
        "utf16_be.md", "UTF-16 big-endian with a byte order mark", two_good("utf16_be"),
        encoding="utf-16-be", prefix=codecs.BOM_UTF16_BE, warnings=["encoding"],
    )
    writer.pieces(
        "crlf.md", "Windows line ends, with a bad pair",
        [good("crlf", 1), bad("unclosed_tag", UNCLOSED), good("crlf", 2)], newline="\r\n", warnings=["crlf"],
    )
    writer.pieces("cr_only.md", "old Mac line ends (CR only)", two_good("cr_only"), newline="\r", warnings=["crlf"])
    mixed_ends = good("mixed_line_ends", 1).markdown.replace("\n", "\r\n") + "\n" + good("mixed_line_ends", 2).markdown
    writer.path("mixed_line_ends.md").write_bytes(mixed_ends.replace("</thinking>\n", "</thinking>\r").encode())
    writer.expect(
        "mixed_line_ends.md", "CRLF, LF and CR in one file",
        good=[good("mixed_line_ends", n).question for n in (1, 2)], warnings=["crlf"],
    )
    zero_width = good("zero_width", 2, style=1)
    writer.pieces(
        "zero_width.md", "zero-width characters inside a marker and the text",
        [good("zero_width", 1), Piece(zero_width.markdown.replace("：", "\u200b：", 1).replace("属于", "属\u200d于"),
                                      question=zero_width.question)],
        warnings=["zero_width"],
    )
    traditional = (
        "Q: traditional 第 1 題：什麼是對稱加密的金鑰長度？\n<thinking>\n因為金鑰只有通訊雙方知道。\n</thinking>\n"
        "A: 常見的金鑰長度是 128 位。\n\n問：traditional 第 2 題：數位簽章如何驗證訊息的來源？\n答：用公鑰驗證。\n"
    )
    writer.path("traditional.md").write_text(traditional, encoding="utf-8")
    writer.expect(
        "traditional.md", "traditional characters, simplified on parsing",
        good=["traditional 第 1 题：什么是对称加密的金钥长度？", "traditional 第 2 题：数位签章如何验证讯息的来源？"],
        warnings=["traditional"],
    )
    fullwidth = (
        "Ｑ：fullwidth 第 1 题：全角标记能识别吗？\n＜ｔｈｉｎｋｉｎｇ＞\n全角的推理标签。\n＜／ｔｈｉｎｋｉｎｇ＞\n"
        "＊＊答案＊＊：能。\n\n＃＃＃ Ｑ：fullwidth 第 2 题：全角井号也可以？\nＡ：可以。\n"
    )
    writer.path("fullwidth_markers.md").write_text(fullwidth, encoding="utf-8")
    writer.expect(
        "fullwidth_markers.md", "full-width markers and tags",
        good=["fullwidth 第 1 题：全角标记能识别吗？", "fullwidth 第 2 题：全角井号也可以？"],
        warnings=["fullwidth_marker"],
    )
    damaged = [good("invalid_utf8", 1), good("invalid_utf8", 2), good("invalid_utf8", 3)]
    data = b"\n".join(piece.markdown.encode() for piece in damaged)
    # One answer gets two bytes that are not UTF-8, another a phrase in GBK: a file of mixed encodings.
    data = data.replace("第 1 个答案".encode(), "第 1 个答案".encode() + b"\xff\xfe", 1)
    data = data.replace("第 2 个答案".encode(), "第 2 个答案".encode() + "国密算法".encode("gbk"), 1)
    writer.path("invalid_utf8.md").write_bytes(data)
    writer.expect(
        "invalid_utf8.md", "UTF-8 with damaged bytes and a GBK phrase (mixed encodings)",
        good=[piece.question for piece in damaged], warnings=["encoding"],
    )


def _front_matter_and_code(writer: _CorpusWriter) -> None:
    front_matters = [
        ("bad_yaml.md", "front matter that is not YAML", "---\ncategory: [symmetric\ndifficulty: 2\n---\n"),
        ("difficulty_out_of_range.md", "difficulty 9 (allowed 1–5)", "---\ncategory: hash_mac\ndifficulty: 9\n---\n"),
        ("unknown_key.md", "front matter with an unknown key", "---\ncategory: signature\nauthor: 张三\n---\n"),
        ("front_matter_not_mapping.md", "front matter that is a list", "---\n- symmetric\n- 2\n---\n"),
        ("unclosed_front_matter.md", "'---' on line 1 never closed", "---\ncategory: symmetric\n\n"),
        (
            "python_tag_front_matter.md", "front matter asking YAML to run Python",
            "---\ncategory: !!python/object/apply:os.system ['echo owned']\n---\n",
        ),
    ]
    for name, case, front_matter in front_matters:
        writer.pieces(name, case, [text(front_matter), *two_good(name.removesuffix(".md"))], warnings=["front_matter"])
    fenced = (
        "Q: code_markers 第 1 题：怎样在 Markdown 里写出 `<thinking>` 标签而不被解析？\n<thinking>\n"
        "行内代码 `</think>` 与 ``<think>`` 只是文字。\n</thinking>\nA: 放进代码块：\n"
        "```markdown\nQ: 这不是问题\n<thinking>\n# 这不是分类\nA: 这不是答案\n```\n"
        "~~~~\n## 也不是分类\n</thinking>\n~~~~\n结束。\n"
    )
    writer.path("markers_in_code.md").write_text(fenced + "\n" + good("code_markers", 2).markdown, encoding="utf-8")
    writer.expect(
        "markers_in_code.md", "markers, headings and tags inside code fences and inline code",
        good=["code_markers 第 1 题：怎样在 Markdown 里写出 `<thinking>` 标签而不被解析？", good("code_markers", 2).question],
    )
    writer.pieces(
        "unclosed_fence.md", "a code fence that is never closed",
        [good("unclosed_fence", 1, answer_extra="\n```python\nprint('没有结束的代码块')\n"), good("unclosed_fence", 2)],
        warnings=["unclosed_fence"],
    )
    stray_text = good("text_outside", 1).markdown.replace("</thinking>\n", "</thinking>\n推理之后、答案之前的闲话。\n")
    writer.pieces(
        "text_outside_thinking.md", "text between the thinking and the answer",
        [Piece(stray_text, question=good("text_outside", 1).question), good("text_outside", 2)],
        warnings=["text_outside_thinking"],
    )


def _sizes_and_shapes(writer: _CorpusWriter, huge_pairs: int, unclosed_fences: int) -> None:
    writer.pieces("empty.md", "an empty file", [])
    writer.path("whitespace_only.md").write_text(" \n\t\n\u3000\n   \n\n", encoding="utf-8")
    writer.expect("whitespace_only.md", "spaces, tabs and an ideographic space only")
    writer.pieces("prose_only.md", "headings and prose, no markers", [text("# 标题\n\n一段没有问答标记的文字。\n")])

    headings = []
    questions = []
    for number in range(1000):
        headings.append(f"{'#' * (number % 6 + 1)} 标题 {number}\n")
        if number % 50 == 49:
            pair = good("headings", number, style=number)
            headings.append(pair.markdown)
            questions.append(pair.question)
    writer.path("deep_headings.md").write_text("".join(headings), encoding="utf-8")
    writer.expect("deep_headings.md", "1000 headings of levels 1–6 with pairs among them", good=questions)

    long_answer = "长" * 350_000  # one line of about 1 MB
    writer.pieces(
        "long_line.md", "a line of about 1 MB before any pair, and one in an answer",
        [text("注" * 350_000), good("long_line", 1, answer_extra=long_answer), good("long_line", 2)],
    )
    # Lines that made the old line patterns backtrack quadratically (hours for lines of this length).
    pathological = "\n".join(
        [
            "# a" + " " * 200_000 + "b",
            "#" + " " * 200_000 + "x",
            "<" + " " * 200_000 + "x",
            "".join("`" * width + "码" for width in range(1, 600)) + " a < b",
            *("```x" for _ in range(unclosed_fences)),
        ]
    )
    writer.pieces(
        "pathological_lines.md", "long lines that defeat backtracking regular expressions",
        [good("pathological", 1, answer_extra="\n" + pathological), good("pathological", 2)],
        warnings=["unclosed_fence"],
    )

    rng = random.Random(20_507)
    pieces = []
    for index in range(huge_pairs):
        if index % 400 == 399:
            pieces.append(bad("missing_answer", f"问：huge 第 {index} 题缺少答案？\n"))
            continue
        filler = "".join(rng.choice(SCENES) + rng.choice(TERMS) + "，" for _ in range(90))
        pieces.append(good("huge", index, style=index, answer_extra=filler))
    writer.pieces("huge.md", f"{huge_pairs} pairs in one file of several MB", pieces)


def _links_and_folders(writer: _CorpusWriter) -> None:
    inner = good("folder_named_md", 1)
    writer.path("x.md/inner.md").write_text(inner.markdown, encoding="utf-8")
    writer.expect("x.md/inner.md", "a folder named x.md: searched, not read as a file", good=[inner.question])

    target = good("link_target", 1)
    writer.path("link_targets/pair.txt").write_text(target.markdown, encoding="utf-8")
    writer.path("symlink_inside.md").symlink_to("link_targets/pair.txt")
    writer.expect("symlink_inside.md", "link to a file inside the root", good=[target.question])
    writer.path("symlink_to_good.md").symlink_to("good.md")
    writer.expect("symlink_to_good.md", "second name of good.md", warnings=["duplicate_file"], read=False)

    outside = writer.corpus.root.parent / f"{writer.corpus.root.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.md").write_text(good("outside", 1).markdown, encoding="utf-8")
    writer.path("symlink_outside.md").symlink_to(outside / "secret.md")
    writer.expect(
        "symlink_outside.md", "link to a file outside the root", warnings=["symlink_outside_root"], read=False
    )
    writer.path("symlink_outside_dir").symlink_to(outside, target_is_directory=True)
    writer.expect("symlink_outside_dir", "link to a folder outside the root", warnings=["symlink_outside_root"],
                  read=False)
    writer.path("symlink_dangling.md").symlink_to("nowhere.md")
    writer.expect("symlink_dangling.md", "link to nothing", warnings=["broken_symlink"], read=False)
    writer.path("symlink_loop_a.md").symlink_to("symlink_loop_b.md")
    writer.path("symlink_loop_b.md").symlink_to("symlink_loop_a.md")
    for name in ("symlink_loop_a.md", "symlink_loop_b.md"):
        writer.expect(name, "links that point at each other", warnings=["broken_symlink"], read=False)
    writer.path("x.md/back_to_root").symlink_to("..", target_is_directory=True)
    writer.expect("x.md/back_to_root", "link from a subfolder back to the root", read=False)


_WARNING = re.compile(r"^(?P<name>[^:]+)(?::\d+)?: (?P<code>[a-z_0-9]+): ")


def warning_codes(warnings: Iterable[str]) -> dict[str, set[str]]:
    """The warning codes of a parse by file name: warnings read `name: code: …` or `name:12: code: …`."""
    codes: dict[str, set[str]] = {}
    for warning in warnings:
        match = _WARNING.match(warning)
        assert match is not None, f"warning without file and code: {warning[:200]!r}"
        codes.setdefault(match["name"], set()).add(match["code"])
    return codes
