"""The Markdown thinking-data parser: every pattern, every odd input, and counts that add up."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from qft_core.config import DataConfig
from qft_core.data import sources
from qft_core.data.corpus import CorpusNotFoundError
from qft_core.data.parse import ParseResult, example_id, parse_file, parse_paths, parse_text
from qft_core.records import ThinkingExample, ThinkingStructure, read_parquet, write_parquet

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = DataConfig()


def parse(*lines: str, config: DataConfig = CONFIG, name: str = "t.md") -> ParseResult:
    return parse_text("\n".join(lines), name, config)


def summary(result: ParseResult) -> list[tuple[int, str, str]]:
    return [(example.source_line, example.question, example.answer) for example in result.examples]


def reasons(result: ParseResult) -> list[tuple[int, str]]:
    return [(item.line, item.reason) for item in result.quarantined]


def step(text: str, line: int, *children: ThinkingStructure) -> ThinkingStructure:
    return ThinkingStructure(text=text, line=line, children=list(children))


# --- the mixed fixture: every pattern in one file -------------------------------------------------


@pytest.fixture(scope="module")
def mixed() -> ParseResult:
    return parse_file(FIXTURES / "mixed.md", CONFIG)


def test_mixed_file_yields_every_pair_with_its_line_and_category_path(mixed: ParseResult) -> None:
    got = [(e.source_line, e.category_path, e.question, e.answer) for e in mixed.examples]
    assert got == [
        (13, ["对称密码", "分组密码"], "AES 的分组长度是多少？", "128 位。"),
        (19, ["对称密码", "分组密码"], "DES 的有效密钥长度是多少？", "56 位。"),
        (23, ["对称密码", "分组密码"], "什么是 ECB 模式？", "电子密码本模式，相同明文分组得到相同密文分组。"),
        (26, ["对称密码", "分组密码"], "CBC 模式需要什么？", "一个不可预测的 IV 和填充。"),
        (44, ["对称密码", "流密码"], "ChaCha20 的密钥长度是多少？", "256 位。"),
        (47, ["对称密码", "流密码"], "RC4 为什么被弃用？\n请简要说明。", "密钥流有偏差，已被 RFC 7465 禁止。"),
        (57, ["公钥密码"], "RSA 的安全性基于什么？", "大整数分解的困难性。"),
        (60, ["公钥密码"], "如何用 Python 计算 SHA-256？", "使用 hashlib：\n\n```python\n# 这是注释，不是标题\nimport hashlib\n```"),
    ]
    assert mixed.report() == {
        "files_read": 1,
        "pairs_found": 8,
        "parsed": 8,
        "quarantined": 0,
        "quarantine": [],
        "warnings": [],
    }


def test_mixed_file_thinking_trees_keep_nesting_siblings_and_tag_lines(mixed: ParseResult) -> None:
    thinking = {example.source_line: example.thinking for example in mixed.examples}
    assert thinking[13] == [step("AES 标准固定分组为 128 位。", 14)]
    assert thinking[19] == [step("DES 密钥 64 位，其中 8 位是校验位。", 20)]
    assert thinking[26] == [
        step(
            "第一层：CBC 需要 IV。\n回到第一层：还需要填充。",
            27,
            step("第二层：IV 必须不可预测。", 29, step("第三层：可预测 IV 导致 BEAST 攻击。", 31)),
        ),
        step("另一个并列的推理块。", 37),
    ]
    assert thinking[47] == [step("RC4 的密钥流前几个字节有统计偏差。", 50)]
    origins = {example.source_line: example.thinking_origin for example in mixed.examples}
    assert origins == {13: "expert", 19: "expert", 23: "none", 26: "expert", 44: "none", 47: "expert", 57: "none", 60: "none"}
    assert [e.thinking for e in mixed.examples if e.thinking_origin == "none"] == [[], [], [], []]


def test_front_matter_applies_to_every_pair_of_its_file(mixed: ParseResult) -> None:
    metadata = {(e.category, e.difficulty, e.source, tuple(e.tags)) for e in mixed.examples}
    assert metadata == {("symmetric", 3, "测试语料", ("分组密码", "AES"))}


def test_mixed_file_round_trips_through_parquet(mixed: ParseResult, tmp_path: Path) -> None:
    path = write_parquet(mixed.examples, ThinkingExample, tmp_path / "examples.parquet")
    assert read_parquet(path, ThinkingExample) == mixed.examples


# --- markers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question_marker",
    ["### Q: ", "Q: ", "Q：", "问：", "问:", "问题：", "**问题**：", "**问题：**", "**Q:** ", "## Q: ", "问题 3："],
)
@pytest.mark.parametrize("answer_marker", ["A: ", "A：", "答：", "答案：", "**答案**：", "### A: "])
def test_every_question_and_answer_marker_is_recognised(question_marker: str, answer_marker: str) -> None:
    result = parse(f"{question_marker}什么是哈希函数？", f"{answer_marker}把任意长输入映射为定长摘要的函数。")
    assert summary(result) == [(1, "什么是哈希函数？", "把任意长输入映射为定长摘要的函数。")]
    assert result.warnings == []


def test_question_heading_takes_the_question_from_the_lines_below() -> None:
    result = parse("# 哈希", "## 问题 12", "", "SHA-1 还安全吗？", "为什么？", "答：不安全，已有实际碰撞。")
    assert summary(result) == [(2, "SHA-1 还安全吗？\n为什么？", "不安全，已有实际碰撞。")]
    assert result.examples[0].category_path == ["哈希"]


def test_question_heading_is_not_a_category_heading() -> None:
    result = parse("# 哈希", "## 摘要算法", "## 问题 1", "MD5 能用于签名吗？", "答：不能。", "## 问题二", "SHA-256 输出多长？", "答：256 位。")
    assert [e.category_path for e in result.examples] == [["哈希", "摘要算法"], ["哈希", "摘要算法"]]
    assert summary(result) == [(3, "MD5 能用于签名吗？", "不能。"), (6, "SHA-256 输出多长？", "256 位。")]


def test_category_path_follows_level_one_and_two_headings() -> None:
    result = parse(
        "## 没有上级的小节",
        "Q: 一？",
        "A: 1。",
        "# 甲",
        "Q: 二？",
        "A: 2。",
        "## 乙 ##",
        "Q: 三？",
        "A: 3。",
        "### 丙不是分类",
        "## 丁",
        "Q: 四？",
        "A: 4。",
        "# 戊",
        "Q: 五？",
        "A: 5。",
    )
    paths = [(e.question, e.category_path) for e in result.examples]
    assert paths == [("一？", ["没有上级的小节"]), ("二？", ["甲"]), ("三？", ["甲", "乙"]), ("四？", ["甲", "丁"]), ("五？", ["戊"])]
    assert result.examples[2].answer == "3。\n### 丙不是分类"


def test_multiline_question_and_answer_keep_their_lines_and_drop_separators() -> None:
    result = parse("Q: 第一行", "第二行", "", "A: 答一", "答二", "", "---", "", "Q: 下一个？", "A: 好。")
    assert summary(result) == [(1, "第一行\n第二行", "答一\n答二"), (9, "下一个？", "好。")]


def test_inline_thinking_on_the_question_line_is_split_off() -> None:
    result = parse("Q: 为什么？<thinking>先想<think>再细想</think>后结论</thinking>", "A: 因为。")
    assert summary(result) == [(1, "为什么？", "因为。")]
    assert result.examples[0].thinking == [step("先想\n后结论", 1, step("再细想", 1))]


def test_thinking_tags_are_case_insensitive_and_nest_to_any_depth_within_the_limit() -> None:
    depth = 16
    opening = [f"<THINKING>第 {level} 层" for level in range(1, depth + 1)]
    result = parse("Q: 深吗？", *opening, *["</Thinking>"] * depth, "A: 深。")
    (example,) = result.examples
    assert example.thinking_depth() == 16
    assert [node.line for node in example.thinking[0].walk()] == list(range(2, 18))
    assert [node.text for node in example.thinking[0].walk()] == [f"第 {level} 层" for level in range(1, 17)]


def test_indented_nested_thinking_is_dedented() -> None:
    result = parse("Q: 缩进？", "<thinking>", "  外层", "  <thinking>", "    内层", "    第二行", "  </thinking>", "</thinking>", "A: 好。")
    assert result.examples[0].thinking == [step("外层", 2, step("内层\n第二行", 4))]


def test_markers_and_tags_inside_code_are_text() -> None:
    result = parse(
        "Q: 格式是什么？",
        "A: 推理写在 `<thinking>` 标签里，例如：",
        "```",
        "Q: 示例问题",
        "<thinking>示例</thinking>",
        "# 不是标题",
        "```",
    )
    assert summary(result) == [(1, "格式是什么？", "推理写在 `<thinking>` 标签里，例如：\n```\nQ: 示例问题\n<thinking>示例</thinking>\n# 不是标题\n```")]
    assert result.examples[0].category_path == []


def test_unclosed_code_fence_is_read_as_text_with_a_warning() -> None:
    result = parse("Q: 一？", "A: 一。", "```", "Q: 二？", "A: 二。")
    assert summary(result) == [(1, "一？", "一。\n```"), (4, "二？", "二。")]
    assert result.warnings == ["t.md:3: unclosed_fence: code fence ``` is never closed; read as text"]


def test_text_between_thinking_and_answer_is_ignored_with_a_warning() -> None:
    result = parse("Q: 问？", "<thinking>想</thinking>", "多余的话", "A: 答。")
    assert summary(result) == [(1, "问？", "答。")]
    assert result.examples[0].warnings == ["line 3: text_outside_thinking: text between the thinking and the answer was ignored"]
    assert result.warnings == ["t.md:3: text_outside_thinking: text between the thinking and the answer was ignored"]


# --- ids ----------------------------------------------------------------------------------------


def test_example_id_is_sha1_of_file_and_question_truncated_to_16_hex() -> None:
    result = parse("Q: 什么是 MAC？", "A: 消息认证码。", name="mac.md")
    expected = hashlib.sha1("mac.md\n什么是 MAC？".encode()).hexdigest()[:16]
    assert result.examples[0].id == expected == example_id("mac.md", "什么是 MAC？")
    assert parse("", "", "Q: 什么是 MAC？", "A: 另一个答案。", name="mac.md").examples[0].id == expected


def test_duplicate_questions_get_distinct_ids_disambiguated_by_line() -> None:
    result = parse("Q: 同一个问题？", "A: 一。", "Q: 同一个问题？", "A: 二。")
    first, second = result.examples
    assert first.id == example_id("t.md", "同一个问题？")
    assert second.id == example_id("t.md", "同一个问题？", "\n3")
    assert first.id != second.id


def test_ids_stay_unique_across_files_with_the_same_name(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.md").write_text("Q: 重复？\nA: 是。\n", encoding="utf-8")
    result = parse_paths([tmp_path / "one", tmp_path / "two"], CONFIG)
    assert [e.source_file for e in result.examples] == ["same.md", "same.md"]
    assert len({e.id for e in result.examples}) == 2


# --- unrecoverable pairs: quarantined, neighbours still parsed ----------------------------------


def test_unclosed_thinking_is_quarantined_with_line_and_neighbours_still_parse() -> None:
    result = parse(
        "Q: 前一个？",
        "A: 好。",
        "",
        "Q: 坏的？",
        "<thinking>",
        "没有闭合",
        "A: 答案。",
        "",
        "Q: 后一个？",
        "<thinking>正常</thinking>",
        "A: 也好。",
    )
    assert summary(result) == [(1, "前一个？", "好。"), (9, "后一个？", "也好。")]
    assert reasons(result) == [(4, "unclosed_tag: <thinking> opened at line 5 is never closed before the answer at line 7")]
    assert result.quarantined[0].raw == "Q: 坏的？\n<thinking>\n没有闭合\nA: 答案。"
    assert result.quarantined[0].file == "t.md"
    assert result.pairs_found == 3


def test_unclosed_thinking_before_the_next_question_is_quarantined() -> None:
    result = parse("Q: 坏？", "<think>", "想到一半", "Q: 好？", "A: 好。")
    assert reasons(result) == [(1, "unclosed_tag: <think> opened at line 2 is never closed before the pair ends")]
    assert summary(result) == [(4, "好？", "好。")]


def test_stray_closing_tag_is_quarantined() -> None:
    result = parse("Q: 坏？", "想法</thinking>", "A: 答。", "Q: 好？", "A: 好。")
    assert reasons(result) == [(1, "stray_tag: </thinking> at line 2 closes no open tag")]
    assert summary(result) == [(4, "好？", "好。")]


def test_tag_outside_any_pair_is_quarantined() -> None:
    result = parse("# 标题", "<thinking>孤立的推理</thinking>", "Q: 好？", "A: 好。")
    assert reasons(result) == [(2, "stray_tag: <thinking> at line 2 is not between a question and an answer")]
    assert result.quarantined[0].raw == "<thinking>孤立的推理</thinking>"
    assert summary(result) == [(3, "好？", "好。")]


def test_mismatched_tags_are_quarantined() -> None:
    result = parse("Q: 坏？", "<think>想</thinking>", "A: 答。")
    assert reasons(result) == [(1, "mismatched_tag: <think> opened at line 2 is closed by </thinking> at line 2")]


def test_thinking_inside_the_answer_is_quarantined() -> None:
    result = parse("Q: 坏？", "A: 答。", "<thinking>晚了</thinking>", "Q: 好？", "A: 好。")
    assert reasons(result) == [(1, "misplaced_tag: <thinking> at line 3 is inside the answer; thinking goes before the answer")]
    assert summary(result) == [(4, "好？", "好。")]


@pytest.mark.parametrize(
    "thinking",
    [["<thinking></thinking>"], ["<thinking>", "   ", "</thinking>"], ["<thinking>外层<thinking> </thinking></thinking>"]],
)
def test_empty_thinking_block_is_quarantined(thinking: list[str]) -> None:
    result = parse("Q: 好？", "A: 好。", "Q: 空？", *thinking, "A: 答。")
    assert summary(result) == [(1, "好？", "好。")]
    assert [item.reason.split(":")[0] for item in result.quarantined] == ["empty_thinking"]
    assert result.quarantined[0].line == 3


def test_parent_block_with_only_nested_steps_is_not_empty() -> None:
    result = parse("Q: 问？", "<thinking><thinking>子步骤</thinking></thinking>", "A: 答。")
    assert result.examples[0].thinking == [step("", 2, step("子步骤", 2))]


def test_question_without_answer_is_quarantined() -> None:
    result = parse("Q: 没有答案？", "<thinking>想</thinking>", "", "Q: 有答案？", "A: 有。", "Q: 最后也没有？")
    assert reasons(result) == [
        (1, "missing_answer: question at line 1 has no answer"),
        (6, "missing_answer: question at line 6 has no answer"),
    ]
    assert summary(result) == [(4, "有答案？", "有。")]
    assert result.pairs_found == 3


def test_answer_without_question_is_quarantined() -> None:
    result = parse("A: 开头就是答案。", "Q: 好？", "A: 好。", "答：第二个答案。", "Q: 再来？", "A: 好。")
    assert reasons(result) == [
        (1, "answer_without_question: answer at line 1 has no question before it"),
        (4, "answer_without_question: answer at line 4 has no question before it"),
    ]
    assert summary(result) == [(2, "好？", "好。"), (5, "再来？", "好。")]
    assert [item.raw for item in result.quarantined] == ["A: 开头就是答案。", "答：第二个答案。"]


def test_blank_question_or_answer_is_quarantined() -> None:
    result = parse("Q:", "<thinking>想</thinking>", "A: 答。", "Q: 问？", "A:", "", "Q: 好？", "A: 好。")
    assert reasons(result) == [
        (1, "empty_question: question marker at line 1 has no question text"),
        (4, "empty_answer: answer marker at line 5 has no answer text"),
    ]
    assert summary(result) == [(7, "好？", "好。")]


def test_nesting_deeper_than_the_limit_is_quarantined() -> None:
    config = DataConfig(max_thinking_depth=3)
    three = ["<thinking>一", "<thinking>二", "<thinking>三", "</thinking>", "</thinking>", "</thinking>"]
    four = ["<thinking>一", "<thinking>二", "<thinking>三", "<thinking>四", "</thinking>" * 4]
    result = parse("Q: 三层？", *three, "A: 可以。", "Q: 四层？", *four, "A: 太深。", config=config)
    assert summary(result) == [(1, "三层？", "可以。")]
    assert reasons(result) == [(9, "too_deep: <thinking> at line 13 nests thinking deeper than the limit of 3")]


def test_default_limit_quarantines_seventeen_levels() -> None:
    result = parse("Q: 十七层？", *["<thinking>层"] * 17, *["</thinking>"] * 17, "A: 太深。")
    assert reasons(result) == [(1, "too_deep: <thinking> at line 18 nests thinking deeper than the limit of 16")]
    assert result.examples == []


# --- unreadable files ---------------------------------------------------------------------------


def test_binary_file_is_quarantined_whole(tmp_path: Path) -> None:
    path = tmp_path / "image.md"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    result = parse_file(path, CONFIG)
    assert reasons(result) == [(0, "binary_file: 32 control characters in 272 bytes: not a text file")]
    assert result.warnings == [
        "image.md: binary_file: 32 control characters in 272 bytes: not a text file; file quarantined"
    ]
    assert (result.files_read, result.pairs_found, result.examples) == (1, 1, [])


def test_text_full_of_control_characters_is_binary(tmp_path: Path) -> None:
    path = tmp_path / "noise.md"
    path.write_bytes(bytes(range(1, 32)) * 10)  # 31 controls of which \t \n \v \f \r are text: 26 × 10
    assert reasons(parse_file(path, CONFIG)) == [(0, "binary_file: 260 control characters in 310 bytes: not a text file")]


def test_bytes_that_are_neither_utf8_nor_gb18030_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "broken.md"
    path.write_bytes(b"Q: \xff\xff\n")
    assert reasons(parse_file(path, CONFIG)) == [(0, "undecodable: 2 of 6 bytes are neither UTF-8 nor GB18030")]


def test_file_larger_than_the_limit_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "big.md"
    path.write_text("Q: 大？\nA: 大。\n" * 20, encoding="utf-8")
    size = path.stat().st_size
    result = parse_file(path, DataConfig(max_file_bytes=100))
    assert reasons(result) == [(0, f"file_too_large: {size} bytes is over the limit of 100 (data.max_file_bytes)")]
    assert len(parse_file(path, DataConfig(max_file_bytes=size)).examples) == 20


def test_one_bad_file_never_stops_the_others(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    (tmp_path / "b.md").write_bytes(b"\x00\x01\x02")
    (tmp_path / "c.md").write_text("Q: 丙？\n<thinking>\nA: 丙。\n\nQ: 丁？\nA: 丁。\n", encoding="utf-8")
    result = parse_paths([tmp_path], CONFIG)
    assert [(e.source_file, e.source_line, e.question) for e in result.examples] == [("a.md", 1, "甲？"), ("c.md", 5, "丁？")]
    assert [(item.file, item.line, item.reason.split(":")[0]) for item in result.quarantined] == [
        ("b.md", 0, "binary_file"),
        ("c.md", 1, "unclosed_tag"),
    ]
    assert (result.files_read, result.pairs_found, len(result.examples), len(result.quarantined)) == (3, 4, 2, 2)


def test_unexpected_error_in_one_file_is_quarantined_and_the_rest_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.md").write_text("Q: 甲？\nA: 甲。\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("Q: 乙？\nA: 乙。\n", encoding="utf-8")
    real_read = sources.read_markdown_bytes

    def failing_read(path: Path, max_bytes: int):
        if path.name == "a.md":
            raise RuntimeError("disk on fire")
        return real_read(path, max_bytes)

    monkeypatch.setattr("qft_core.data.parse.read_markdown_bytes", failing_read)
    result = parse_paths([tmp_path], CONFIG)
    assert reasons(result) == [(0, "parse_error: RuntimeError: disk on fire")]
    assert summary(result) == [(1, "乙？", "乙。")]


# --- recoverable oddities: normalised, parsed, warned -------------------------------------------

GBK_TEXT = "---\ncategory: chinese_standard\n---\n问：SM4 的分组长度是多少？\n答：128 位。\n"


def test_gbk_file_is_decoded_parsed_and_warned(tmp_path: Path) -> None:
    path = tmp_path / "sm4.md"
    path.write_bytes(GBK_TEXT.encode("gbk"))
    result = parse_file(path, CONFIG)
    assert summary(result) == [(4, "SM4 的分组长度是多少？", "128 位。")]
    assert result.examples[0].category == "chinese_standard"
    assert result.examples[0].warnings == ["encoding: decoded as GB18030/GBK (not UTF-8)"]
    assert result.warnings == ["sm4.md: encoding: decoded as GB18030/GBK (not UTF-8)"]


def test_utf16_file_with_bom_is_decoded_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "wide.md"
    path.write_bytes(GBK_TEXT.encode("utf-16"))
    result = parse_file(path, CONFIG)
    assert summary(result) == [(4, "SM4 的分组长度是多少？", "128 位。")]
    assert result.warnings == ["wide.md: encoding: decoded as UTF-16 (not UTF-8)"]


def test_utf8_bom_is_removed_and_front_matter_still_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.md"
    path.write_bytes(GBK_TEXT.encode("utf-8-sig"))
    result = parse_file(path, CONFIG)
    assert summary(result) == [(4, "SM4 的分组长度是多少？", "128 位。")]
    assert result.examples[0].category == "chinese_standard"
    assert result.examples[0].warnings == ["bom: UTF-8 byte order mark removed"]
    assert result.warnings == ["bom.md: bom: UTF-8 byte order mark removed"]


def test_crlf_line_ends_are_normalised_and_line_numbers_kept() -> None:
    result = parse_text("Q: 一？\r\n<thinking>\r\n想\r\n</thinking>\r\nA: 一。\r\n\r\nQ: 二？\r\nA: 二\r\n第二行。\r\n", "crlf.md", CONFIG)
    assert summary(result) == [(1, "一？", "一。"), (7, "二？", "二\n第二行。")]
    assert result.examples[0].thinking == [step("想", 2)]
    assert result.warnings == ["crlf.md: crlf: CRLF line ends converted to LF"]
    assert [e.warnings for e in result.examples] == [["crlf: CRLF line ends converted to LF"]] * 2


def test_zero_width_characters_are_removed_and_warned_on_their_pair_only() -> None:
    result = parse("Q: 干净？", "A: 是。", "Q\u200b: 零\u200d宽？", "<\u2060thinking>想</thinking>", "A: 是\ufeff。")
    assert summary(result) == [(1, "干净？", "是。"), (3, "零宽？", "是。")]
    assert result.examples[1].thinking == [step("想", 4)]
    assert result.examples[0].warnings == []
    assert result.examples[1].warnings == [
        "line 3: zero_width: 2 zero-width character(s) removed",
        "line 4: zero_width: 1 zero-width character(s) removed",
        "line 5: zero_width: 1 zero-width character(s) removed",
    ]
    assert result.warnings == [
        "t.md:3: zero_width: 2 zero-width character(s) removed",
        "t.md:4: zero_width: 1 zero-width character(s) removed",
        "t.md:5: zero_width: 1 zero-width character(s) removed",
    ]


def test_traditional_characters_are_simplified_and_the_original_kept() -> None:
    lines = ("問題：什麼是對稱加密？", "<thinking>", "對稱密碼", "</thinking>", "答：加密和解密使用相同的密鑰。")
    result = parse("Q: 简体？", "A: 是。", *lines)
    simplified, traditional = result.examples
    assert (simplified.original_text, simplified.warnings) == (None, [])
    assert summary(result)[1] == (3, "什么是对称加密？", "加密和解密使用相同的密钥。")
    assert traditional.thinking == [step("对称密码", 4)]
    assert traditional.original_text == "\n".join(lines)
    # 麼 對 稱 | 鑰 | 對 稱 碼: seven characters change
    assert traditional.warnings == ["line 3: traditional: 7 traditional character(s) converted to simplified"]
    assert result.warnings == ["t.md:3: traditional: 7 traditional character(s) converted to simplified"]


def test_fullwidth_marker_punctuation_is_read_as_ascii_with_a_warning() -> None:
    result = parse("＃ 分类", "Ｑ：全角？", "＜ｔｈｉｎｋｉｎｇ＞想＜／ｔｈｉｎｋｉｎｇ＞", "＊＊答案＊＊：好。", "Q：半角问号加全角冒号？", "A：不警告。")
    assert summary(result) == [(2, "全角？", "好。"), (5, "半角问号加全角冒号？", "不警告。")]
    assert result.examples[0].category_path == ["分类"]
    assert result.examples[0].thinking == [step("想", 3)]
    assert result.examples[0].warnings == [
        "line 2: fullwidth_marker: full-width characters in marker 'Ｑ：' read as ASCII",
        "line 3: fullwidth_marker: full-width tag read as <thinking>",
        "line 3: fullwidth_marker: full-width tag read as </thinking>",
        "line 4: fullwidth_marker: full-width characters in marker '＊＊答案＊＊：' read as ASCII",
    ]
    assert result.examples[1].warnings == []
    assert result.warnings[0] == "t.md:1: fullwidth_marker: full-width characters in marker '＃' read as ASCII"
    assert len(result.warnings) == 5


# --- front matter -------------------------------------------------------------------------------


def test_invalid_yaml_front_matter_is_ignored_with_a_warning_and_pairs_still_parse() -> None:
    result = parse("---", "category: symmetric", "tags: [未闭合", "---", "Q: 问？", "A: 答。", name="bad.md")
    assert summary(result) == [(5, "问？", "答。")]
    assert result.examples[0].category is None
    assert result.warnings == [
        "bad.md:3: front_matter: invalid YAML (expected ',' or ']', but got '<stream end>'); front matter ignored"
    ]


def test_difficulty_out_of_range_is_ignored_with_a_warning_naming_its_line() -> None:
    result = parse("---", "category: symmetric", "difficulty: 7", "---", "Q: 问？", "A: 答。", name="hard.md")
    assert summary(result) == [(5, "问？", "答。")]
    assert (result.examples[0].category, result.examples[0].difficulty) == (None, None)
    assert result.warnings == [
        "hard.md:3: front_matter: key 'difficulty': Input should be less than or equal to 5; front matter ignored"
    ]


def test_unknown_front_matter_key_is_ignored_with_a_warning() -> None:
    result = parse("---", "difficulty: 2", "author: 张三", "---", "Q: 问？", "A: 答。", name="k.md")
    assert result.examples[0].difficulty is None
    assert result.warnings == ["k.md:3: front_matter: key 'author': Extra inputs are not permitted; front matter ignored"]


def test_single_tag_string_becomes_a_list() -> None:
    result = parse("---", "tags: AES", "difficulty: 1", "---", "Q: 问？", "A: 答。")
    assert (result.examples[0].tags, result.examples[0].difficulty) == (["AES"], 1)


def test_unclosed_front_matter_is_read_as_text_with_a_warning() -> None:
    result = parse("---", "Q: 问？", "A: 答。")
    assert summary(result) == [(2, "问？", "答。")]
    assert result.warnings == ["t.md:1: front_matter: '---' on line 1 opens front matter that is never closed; read as text"]


# --- folders, symlinks, progress, report --------------------------------------------------------


def test_folders_are_searched_recursively_in_sorted_order_with_progress(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("Q: 三？\nA: 三。\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("Q: 一？\nA: 一。\n", encoding="utf-8")
    (tmp_path / "b" / "notes.txt").write_text("Q: 不读？\nA: 不读。\n", encoding="utf-8")
    single = tmp_path / "single.markdown"
    single.write_text("Q: 单个？\nA: 单个。\n", encoding="utf-8")
    calls = []
    result = parse_paths([tmp_path / "b", tmp_path / "a.md", single], CONFIG, progress=lambda *call: calls.append(call))
    assert [(e.source_file, e.question) for e in result.examples] == [("z.md", "三？"), ("a.md", "一？"), ("single.markdown", "单个？")]
    assert calls == [(1, 3, tmp_path / "b" / "z.md"), (2, 3, tmp_path / "a.md"), (3, 3, single)]
    assert result.files_read == 3


def test_folder_files_are_named_relative_to_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "x.md").write_text("Q: 深？\nA: 深。\n", encoding="utf-8")
    (tmp_path / "sub" / "a.md").write_text("Q: 浅？\nA: 浅。\n", encoding="utf-8")
    result = parse_paths([tmp_path], CONFIG)
    assert [e.source_file for e in result.examples] == ["sub/a.md", "sub/deep/x.md"]


def test_missing_path_raises_corpus_not_found(tmp_path: Path) -> None:
    with pytest.raises(CorpusNotFoundError, match="no such file or folder: .*nowhere"):
        parse_paths([tmp_path / "nowhere"], CONFIG)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_are_followed_only_inside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text("Q: 外面？\nA: 外面。\n", encoding="utf-8")
    (root / "inner" / "real.md").write_text("Q: 里面？\nA: 里面。\n", encoding="utf-8")
    (root / "escape.md").symlink_to(outside / "secret.md")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "alias.md").symlink_to(root / "inner" / "real.md")
    (root / "loop").symlink_to(root, target_is_directory=True)
    result = parse_paths([root], CONFIG)
    assert [(e.source_file, e.question) for e in result.examples] == [("alias.md", "里面？")]
    assert result.warnings == [
        f"escape.md: symlink_outside_root: points to {(outside / 'secret.md').resolve()}, outside {root}; skipped",
        f"escape_dir: symlink_outside_root: points to {outside.resolve()}, outside {root}; skipped",
        "inner/real.md: duplicate_file: same file as alias.md; read once",
    ]
    assert result.files_read == 1


def test_report_is_json_with_counts_quarantine_and_warnings() -> None:
    result = parse("Q: 好？", "A: 好。", "Q: 坏？", "\u200b", name="r.md")
    report = result.report()
    assert json.loads(json.dumps(report, ensure_ascii=False)) == report
    assert report == {
        "files_read": 1,
        "pairs_found": 2,
        "parsed": 1,
        "quarantined": 1,
        "quarantine": [{"file": "r.md", "line": 3, "reason": "missing_answer: question at line 3 has no answer"}],
        "warnings": ["r.md:4: zero_width: 1 zero-width character(s) removed"],
    }


def test_bundled_corpus_parses_without_quarantine() -> None:
    corpus = Path(__file__).resolve().parents[3] / "data" / "corpus"
    if not any(corpus.glob("*.md")):
        pytest.skip("no bundled corpus")
    result = parse_paths([corpus], CONFIG)
    assert result.report()["quarantine"] == []
    assert result.warnings == []
    assert len(result.examples) >= 20
    assert len({e.id for e in result.examples}) == len(result.examples)
