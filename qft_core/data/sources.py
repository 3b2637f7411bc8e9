"""Thinking-data files on disk: which Markdown files a parse reads, and their bytes decoded to text."""

from __future__ import annotations

import codecs
import errno
import os
import re
import stat
from collections import Counter
from pathlib import Path

from qft_core.data.markdown import Notice, Unparseable

# Text never has more control characters than this share; binary files that slip past the NUL test do.
_MAX_CONTROL_SHARE = 0.01
_BINARY_CONTROLS = {chr(code) for code in [*range(32), 127]} - set("\t\n\r\f\v")
_BINARY_CONTROL_BYTES = "".join(sorted(_BINARY_CONTROLS)).encode("ascii")
# A few stray control bytes (a NUL pasted by accident) in a short file are damage to its lines, not binary
# (unless they are a quarter of it).
_CONTROL_ALLOWANCE = 4
# GB18030 text has about two thirds of its non-ASCII bytes invalid as UTF-8; UTF-8 with a few damaged
# bytes (a bad copy, a stray Latin-1 character) has a small share. Below this share the file is UTF-8.
_MAX_INVALID_UTF8_SHARE = 0.1
# Bytes that are not UTF-8, as `surrogateescape` decodes them.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_ASCII = bytes(range(128))
# What a file name may hold that a report cannot: bytes that are not UTF-8 (which Python decodes to lone
# surrogates) and control characters (a newline would split a one-line warning).
_UNPRINTABLE_IN_NAMES = re.compile("[\udc80-\udcff\x00-\x1f\x7f]")
# What `printable_name` writes for a control character or a byte that is not UTF-8.
_NAME_ESCAPE = re.compile(r"\\x(0[0-9a-f]|1[0-9a-f]|7f|[89a-f][0-9a-f])")
# Suffixes of the files a folder walk reads, compared without case: `a.md`, `B.MD` and `c.markdown` are all read.
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})


class CorpusNotFoundError(FileNotFoundError):
    """A corpus folder or file that does not exist."""


class UnreadableFile(Unparseable):
    """A file that cannot be read as text at all; it is quarantined whole."""


def read_markdown_bytes(path: Path, max_bytes: int) -> bytes:
    """The bytes of a file; raises UnreadableFile.

    Only regular files are read (a FIFO or a device would block or never end), and never more than
    `max_bytes` + 1 bytes, even if the file grows while it is read.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for regular files.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(descriptor, "rb") as handle:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise UnreadableFile("unreadable", "not a regular file (a FIFO, a device or a socket)")
            data = handle.read(max_bytes + 1) if status.st_size <= max_bytes else b""
    except OSError as error:
        raise UnreadableFile("unreadable", error.strerror or str(error)) from None
    size = max(status.st_size, len(data))
    if size > max_bytes:
        detail = f"{size} bytes is over the limit of {max_bytes} (data.max_file_bytes)"
        raise UnreadableFile("file_too_large", detail)
    return data


def decode_markdown(data: bytes) -> tuple[str, list[Notice]]:
    """Bytes as text: UTF-8 (a BOM stays in the text for the parser to note), UTF-16 with a BOM, GB18030,
    UTF-8 with a few damaged bytes (each replaced by U+FFFD, with a notice naming its line), or, failing all
    of them, each line on its own. A few NUL bytes stay in the text (the parser quarantines their pairs);
    a file that is mostly binary or mostly undecodable is refused whole."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, notices = data.decode("utf-16"), [Notice("encoding", "decoded as UTF-16 (not UTF-8)")]
        except UnicodeDecodeError:
            raise UnreadableFile("undecodable", "starts with a UTF-16 byte order mark but is not UTF-16") from None
        _refuse_binary(sum(1 for character in text if character in _BINARY_CONTROLS), len(text), "characters")
        return text, notices
    # Counted on the bytes, before decoding: neither UTF-8 nor GB18030 has an ASCII control byte inside a
    # multi-byte character, so each is a control character of the text (NUL included).
    _refuse_binary(len(data) - len(data.translate(None, _BINARY_CONTROL_BYTES)), len(data), "bytes")
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return _decode_not_utf8(data)


def _refuse_binary(controls: int, size: int, unit: str) -> None:
    if controls > min(size / 4, _MAX_CONTROL_SHARE * size + _CONTROL_ALLOWANCE):
        raise UnreadableFile("binary_file", f"{controls} control characters in {size} {unit}: not a text file")


def _decode_not_utf8(data: bytes) -> tuple[str, list[Notice]]:
    """UTF-8 with U+FFFD for each damaged byte when few of its non-ASCII bytes are damaged, else GB18030, else
    line by line (UTF-8, GB18030, or UTF-8 with U+FFFD); raises UnreadableFile when more than a tenth of the
    file's bytes are in lines neither encoding reads."""
    escaped = data.decode("utf-8", errors="surrogateescape")
    damaged = [match.start() for match in _ESCAPED_BYTE.finditer(escaped)]
    if len(damaged) <= _MAX_INVALID_UTF8_SHARE * len(data.translate(None, _ASCII)):
        return _ESCAPED_BYTE.sub("\ufffd", escaped), _replacement_notices(escaped, damaged)
    try:
        return data.decode("gb18030"), [Notice("encoding", "decoded as GB18030/GBK (not UTF-8)")]
    except UnicodeDecodeError:
        return _decode_by_line(data)


def _replacement_notices(escaped: str, damaged: list[int]) -> list[Notice]:
    per_line = Counter(_line_numbers(escaped, damaged))
    return [
        Notice("encoding", f"{count} byte(s) that are not UTF-8 replaced by U+FFFD", line)
        for line, count in sorted(per_line.items())
    ]


def _decode_by_line(data: bytes) -> tuple[str, list[Notice]]:
    """A file mixing encodings (a GBK paragraph pasted into UTF-8, a stray Latin-1 byte): each line read on its
    own, so one bad line costs that line's bytes, not the file."""
    pieces, notices, replaced = [], [], 0
    # Lines end as the parser counts them (LF, CRLF, CR); the ends are kept, so offsets and numbers agree.
    for number, line in enumerate(re.split(rb"(?<=\n)|(?<=\r)(?!\n)", data), start=1):
        try:
            pieces.append(line.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            pass
        try:
            pieces.append(line.decode("gb18030"))
            notices.append(Notice("encoding", "line decoded as GB18030/GBK (not UTF-8)", number))
        except UnicodeDecodeError:
            escaped = line.decode("utf-8", errors="surrogateescape")
            count = len(_ESCAPED_BYTE.findall(escaped))
            replaced += count
            pieces.append(_ESCAPED_BYTE.sub("\ufffd", escaped))
            detail = f"{count} byte(s) that are neither UTF-8 nor GB18030 replaced by U+FFFD"
            notices.append(Notice("encoding", detail, number))
    if replaced > _MAX_INVALID_UTF8_SHARE * len(data):
        detail = f"{replaced} of {len(data)} bytes are neither UTF-8 nor GB18030"
        raise UnreadableFile("undecodable", detail)
    return "".join(pieces), notices


def _line_numbers(text: str, offsets: list[int]) -> list[int]:
    """The 1-based line of each offset (ascending), counting line ends as the parser does: LF, CRLF, CR."""
    lines, line, previous = [], 1, 0
    for offset in offsets:
        stretch = text[previous:offset]
        line += stretch.count("\n") + stretch.count("\r") - stretch.count("\r\n")
        lines.append(line)
        previous = offset
    return lines


def printable_name(name: str) -> str:
    """A file name as reports, parquet files and logs carry it: each byte that is not UTF-8 and each control
    character written as `\\xNN`, so that any name on disk can be shown and never fails to encode."""
    return _UNPRINTABLE_IN_NAMES.sub(lambda match: f"\\x{_name_byte(match.group()):02x}", name)


def _name_byte(character: str) -> int:
    code = ord(character)
    return code - 0xDC00 if code >= 0xDC80 else code


def path_of_name(root: Path, name: str) -> Path:
    """The file under `root` that a folder walk reported as `name`: `printable_name` undone where the name as
    written is not on disk (a name that really holds `\\xNN` is taken as written)."""
    written = root / name
    if written.exists() or "\\x" not in name:
        return written
    return root / _NAME_ESCAPE.sub(lambda match: _name_character(int(match.group(1), 16)), name)


def _name_character(byte: int) -> str:
    return chr(0xDC00 + byte) if byte >= 0x80 else chr(byte)


def is_markdown_name(path: Path) -> bool:
    """Whether a folder walk reads the file at `path`: its suffix is `.md` or `.markdown`, in any case."""
    return path.suffix.lower() in MARKDOWN_SUFFIXES


def markdown_files(paths: list[Path]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every file to parse with the name its examples carry, and warnings about what was skipped.

    A file given directly is read whatever its name and named by its file name; a file found in a folder
    by its path relative to that folder; either way as `printable_name` writes it. Folders are searched recursively, in sorted order, for files that
    `is_markdown_name` accepts. A file reached twice (through a symlink) is read once.
    """
    files: list[tuple[Path, str]] = []
    warnings: list[str] = []
    first_name: dict[Path, str] = {}
    for path in paths:
        if path.is_dir():
            found, skipped = _markdown_files_under(path)
            warnings += skipped
        elif path.exists():
            found = [(path, path.name)]
        else:
            raise CorpusNotFoundError(f"no such file or folder: {path}")
        for file, name in found:
            real = file.resolve()
            if real in first_name:
                notice = Notice("duplicate_file", f"same file as {first_name[real]}; read once")
                warnings.append(notice.for_file(name))
                continue
            first_name[real] = name
            files.append((file, name))
    return [(file, printable_name(name)) for file, name in files], [printable_name(warning) for warning in warnings]


def _markdown_files_under(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    root_real = root.resolve()
    found: list[tuple[Path, str]] = []
    warnings: list[str] = []
    visited = {root_real}  # real folders already searched: a link back up the tree is not followed again

    def search(folder: Path) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError as error:
            name = folder.relative_to(root).as_posix()
            detail = f"folder cannot be listed ({error.strerror or error}); skipped"
            warnings.append(Notice("unreadable", detail).for_file(name))
            return
        for entry in entries:
            name = entry.relative_to(root).as_posix()
            if entry.is_symlink() and not _link_stays_inside(entry, name, root, root_real, warnings):
                continue
            if entry.is_dir():
                real = entry.resolve()
                if real not in visited:
                    visited.add(real)
                    search(entry)
            elif is_markdown_name(entry) and entry.is_file():
                found.append((entry, name))

    search(root)
    return sorted(found, key=lambda item: item[1]), warnings


def _link_stays_inside(link: Path, name: str, root: Path, root_real: Path, warnings: list[str]) -> bool:
    """Whether to follow a link: only to an existing target inside the scanned folder, never elsewhere."""
    relevant = is_markdown_name(link) or link.is_dir()
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError) as error:
        # Python 3.12 reports a chain of links that never ends as RuntimeError, later versions as ELOOP.
        if isinstance(error, RuntimeError) or error.errno == errno.ELOOP:
            warnings.append(Notice("broken_symlink", "link loop: it never reaches a file; skipped").for_file(name))
        elif relevant:
            warnings.append(Notice("broken_symlink", "link target does not exist; skipped").for_file(name))
        return False
    if target.is_relative_to(root_real):
        return True
    if relevant:
        warnings.append(Notice("symlink_outside_root", f"points to {target}, outside {root}; skipped").for_file(name))
    return False
