"""Bad input to the commands is one line naming the file, column or key (no traceback), and empty or infinite
values are refused instead of accepted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qft_core.cli import main as qft
from qft_core.config import ConfigError, load_config
from qft_core.records import ThinkingExample, to_table, write_parquet

PAIR = "## Q: 什么是 AES？\n<thinking>\n分组密码。\n</thinking>\n## A: 一种分组密码。\n"


def _one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"qft {command}: ")
    assert "Traceback" not in captured.err + captured.out
    return line


def _example() -> ThinkingExample:
    return ThinkingExample(id="e1", question="什么是 AES？", answer="分组密码。", source_file="a.md", source_line=1)


def _table_without(column: str) -> pa.Table:
    table = to_table([_example()], ThinkingExample)
    return table.drop_columns([column])


def _table_with_wrong_type() -> pa.Table:
    table = to_table([_example()], ThinkingExample)
    index = table.schema.get_field_index("source_line")
    return table.set_column(index, "source_line", pa.array(["line one"]))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: pq.write_table(_table_without("question"), path),
         "row 0: column 'question': Field required; not a ThinkingExample file"),
        (lambda path: pq.write_table(_table_with_wrong_type(), path),
         "row 0: column 'source_line': Input should be a valid integer, unable to parse string as an integer"),
        (lambda path: pq.write_table(pa.table({"x": [1, 2]}), path), "row 0: column 'id': Field required"),
        (lambda path: path.write_bytes(b"PAR1 this is not parquet at all"), "not a readable parquet file"),
        (lambda path: path.write_text("id,question\n1,x\n", encoding="utf-8"), "not a readable parquet file"),
    ],
    ids=["missing-column", "wrong-type", "wrong-schema", "damaged", "csv"],
)
def test_qft_split_on_a_file_that_is_not_examples_is_one_line(
    write, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    examples = tmp_path / "examples.parquet"
    write(examples)

    assert qft(["split", str(examples), "--out-dir", str(tmp_path / "splits")]) == 1

    line = _one_error_line(capsys, "split")
    assert line.startswith(f"qft split: {examples}: ") and message in line
    assert not (tmp_path / "splits").exists()


def test_qft_split_refuses_a_parquet_without_examples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    examples = write_parquet([], ThinkingExample, tmp_path / "empty.parquet")

    assert qft(["split", str(examples), "--out-dir", str(tmp_path / "splits")]) == 1

    assert _one_error_line(capsys, "split") == f"qft split: {examples}: holds no examples; nothing to split"
    assert not (tmp_path / "splits").exists()


def test_qft_parse_out_naming_a_folder_is_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a.md").write_text(PAIR, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()

    assert qft(["parse", str(tmp_path / "a.md"), "--out", str(out), "--report", str(tmp_path / "report.json")]) == 1

    assert _one_error_line(capsys, "parse") == f"qft parse: {out}: is a folder; name the parquet file to write"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.md", "out", "report.json"]
    assert list(out.iterdir()) == []


def test_a_config_file_that_is_not_utf8_is_one_line_naming_its_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "qft.yaml"
    # GBK for 学习率 is d1 a7 cf b0 c2 ca: the first two pairs happen to be valid UTF-8, c2 ca is not.
    config.write_bytes("paths:\n  corpus_dir: data\n".encode() + "training:\n  # 学习率\n".encode("gbk"))

    with pytest.raises(ConfigError, match=rf"^{config}:4: not UTF-8 text \(byte 0xc2\); save it as UTF-8$"):
        load_config(config)
    assert qft(["--config", str(config), "terms", "AES"]) == 1
    assert _one_error_line(capsys, "terms").endswith("4: not UTF-8 text (byte 0xc2); save it as UTF-8")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("training", "epochs", ".inf"), ("training", "learning_rate", ".inf"), ("training", "learning_rate", ".nan"),
     ("eval", "temperature", ".inf"), ("export", "unpack_max_ratio", ".inf")],
)
def test_infinite_and_nan_numbers_are_refused_naming_the_key(tmp_path: Path, section: str, key: str, value: str) -> None:
    config = tmp_path / "qft.yaml"
    config.write_text(f"{section}:\n  {key}: {value}\n", encoding="utf-8")

    with pytest.raises(ConfigError, match=rf"key '{section}\.{key}': Input should be a finite number"):
        load_config(config)
