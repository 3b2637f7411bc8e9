"""The parser keeps every good pair it can: undecodable bytes and NUL bytes cost their lines or pair, not the
file; HTML comments are ignored like fenced code; malformed tags and a `q:` get reasons of their own and never
take the valid pair before them down."""

from __future__ import annotations

from pathlib import Path

import pytest

from qft_core.config import DataConfig
from qft_core.data.parse import ParseResult, parse_paths, parse_text

PAIR = "## Q: {question}\n<thinking>\n先回忆定义。\n</thinking>\n## A: {answer}\n"


def _parse_bytes(tmp_path: Path, data: bytes) -> ParseResult:
    path = tmp_path / "file.md"
    path.write_bytes(data)
    return parse_paths([path], DataConfig())


def _pairs(result: ParseResult) -> list[tuple[str, str]]:
    return [(example.question, example.answer) for example in result.examples]


def _quarantine(result: ParseResult) -> list[tuple[int, str]]:
    return [(item.line, item.reason.split(":")[0]) for item in result.quarantined]


def test_one_latin1_byte_in_an_ascii_file_costs_one_character(tmp_path: Path) -> None:
    data = b"## Q: What is AES?\n<thinking>\nrecall\n</thinking>\n## A: A block cipher, caf\xe9 style.\n"
    data += b"## Q: What is RSA?\n<thinking>\nrecall\n</thinking>\n## A: A public-key scheme.\n"

    result = _parse_bytes(tmp_path, data)

    assert _pairs(result) == [("What is AES?", "A block cipher, caf\ufffd style."), ("What is RSA?", "A public-key scheme.")]
    assert result.quarantined == []
    assert result.warnings == ["file.md:5: encoding: 1 byte(s) that are neither UTF-8 nor GB18030 replaced by U+FFFD"]


def test_a_file_mixing_utf8_gbk_and_bad_bytes_is_read_line_by_line(tmp_path: Path) -> None:
    data = PAIR.format(question="什么是 AES？", answer="分组密码。").encode()
    data += PAIR.format(question="什么是 SM4？", answer="国密分组密码。").encode("gbk")
    data += PAIR.format(question="什么是 RSA？", answer="公钥密码。").encode() + b"\xff\xfe\n"

    result = _parse_bytes(tmp_path, data)

    assert _pairs(result) == [("什么是 AES？", "分组密码。"), ("什么是 SM4？", "国密分组密码。"), ("什么是 RSA？", "公钥密码。\n\ufffd\ufffd")]
    # The GBK pair's lines with Chinese (its tag lines are ASCII, hence UTF-8 too), then the damaged line.
    assert result.warnings == [
        *(f"file.md:{line}: encoding: line decoded as GB18030/GBK (not UTF-8)" for line in (6, 8, 10)),
        "file.md:16: encoding: 2 byte(s) that are neither UTF-8 nor GB18030 replaced by U+FFFD",
    ]


def test_a_file_mostly_undecodable_or_binary_stays_refused(tmp_path: Path) -> None:
    assert _quarantine(_parse_bytes(tmp_path, b"Q: \xff\xfe\xff\x80\x80\nA: \xff\n" * 4)) == [(0, "undecodable")]
    assert _quarantine(_parse_bytes(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))) == [
        (0, "binary_file")
    ]


def test_a_nul_byte_quarantines_its_pair_only(tmp_path: Path) -> None:
    data = PAIR.format(question="第一题？", answer="答案一。").encode()
    data += PAIR.format(question="第二题？", answer="答\x00案二。").encode()
    data += b"\x00 loose text between pairs\n"
    data += PAIR.format(question="第三题？", answer="答案三。").encode()

    result = _parse_bytes(tmp_path, data)

    assert _pairs(result) == [("第一题？", "答案一。"), ("第三题？", "答案三。")]
    assert [(item.line, item.reason) for item in result.quarantined] == [
        (6, "nul_byte: line 10 holds a NUL byte: the pair is not text")
    ]


def test_tags_in_html_comments_are_ignored_and_comments_are_not_text() -> None:
    text = (
        "## Q: 什么是 AES？ <!-- 草稿 -->\n<!-- <thinking> -->\n<thinking>\n分组密码。<!-- </thinking> -->\n"
        "</thinking>\n## A: 一种分组密码。\n"
        "<!--\n## Q: 注释里的题？\n<thinking>\n## A: 不是答案\n-->\n"
        + PAIR.format(question="下一题？", answer="好。")
    )

    result = parse_text(text, "x.md", DataConfig())

    assert [(e.question, [step.text for step in e.thinking], e.answer) for e in result.examples] == [
        ("什么是 AES？", ["分组密码。"], "一种分组密码。"),
        ("下一题？", ["先回忆定义。"], "好。"),
    ]
    assert result.quarantined == []


def test_a_comment_inside_fenced_code_is_code() -> None:
    text = "## Q: 示例？\n<thinking>\n```html\n<!-- x\n```\n</thinking>\n## A: 见上。\n"
    (example,) = parse_text(text, "x.md", DataConfig()).examples
    assert example.thinking[0].text == "```html\n<!-- x\n```"


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ('<thinking type="x">', 'tag_with_attributes: <thinking type="x"> at line 7: thinking tags take no attributes'),
        ("<think class='a'>", "tag_with_attributes: <think class='a'> at line 7: thinking tags take no attributes"),
        ("<thinking/>", "self_closing_tag: <thinking/> at line 7 is self-closing"),
        ("<think />", "self_closing_tag: <think /> at line 7 is self-closing"),
    ],
)
def test_malformed_tags_get_their_own_reason_and_the_pairs_around_them_parse(tag: str, reason: str) -> None:
    closing = "</think>" if "think " in tag or "think/" in tag or "think'" in tag else "</thinking>"
    text = (
        PAIR.format(question="前一题？", answer="前。")
        + f"## Q: 坏标签的题？\n{tag}\n想。\n{closing}\n## A: 答。\n"
        + PAIR.format(question="后一题？", answer="后。")
    )

    result = parse_text(text, "x.md", DataConfig())

    assert _pairs(result) == [("前一题？", "前。"), ("后一题？", "后。")]
    ((line, got),) = [(item.line, item.reason) for item in result.quarantined]
    assert line == 6 and got.startswith(reason)


def test_a_lowercase_q_after_a_valid_pair_is_an_unknown_marker_and_the_pair_is_kept() -> None:
    text = (
        "## 问题 十二\n什么是 AES？\n<thinking>\n分组密码。\n</thinking>\n答：一种分组密码。\n\n"
        "q: 这是什么？\n<thinking>\n想一想。\n</thinking>\na: 不知道。\n"
        + PAIR.format(question="下一题？", answer="好。")
    )

    result = parse_text(text, "x.md", DataConfig())

    assert _pairs(result) == [("什么是 AES？", "一种分组密码。"), ("下一题？", "好。")]
    assert _quarantine(result) == [(8, "unknown_marker")]
    assert result.quarantined[0].reason.startswith("unknown_marker: 'q: 这是什么？' at line 8 is not a question marker")


def test_q_and_p_as_variable_names_in_an_answer_stay_answer_text() -> None:
    text = "## Q: RSA 的参数？\n<thinking>\n回忆。\n</thinking>\n## A: 参数如下：\np: 第一个素数\nq: 第二个素数\n"
    (example,) = parse_text(text, "x.md", DataConfig()).examples
    assert example.answer == "参数如下：\np: 第一个素数\nq: 第二个素数"


def test_an_html_comment_that_is_never_closed_is_text_and_hides_nothing_after_it() -> None:
    text = PAIR.format(question="前一题？", answer="前。") + "<!-- 忘了关闭\n" + PAIR.format(question="后一题？", answer="后。")

    result = parse_text(text, "x.md", DataConfig())

    assert _pairs(result) == [("前一题？", "前。\n<!-- 忘了关闭"), ("后一题？", "后。")]
    assert "x.md:6: unclosed_comment: HTML comment <!-- is never closed; read as text" in result.warnings
