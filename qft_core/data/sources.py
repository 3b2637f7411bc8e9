"""Thinking-data files on disk: which Markdown files a parse reads, and their bytes decoded to text."""

from __future__ import annotations

import codecs
from pathlib import Path

from qft_core.data.corpus import CorpusNotFoundError
from qft_core.data.markdown import Notice, Unparseable

# Text never has more control characters than this share; binary files that slip past the NUL test do.
_MAX_CONTROL_SHARE = 0.01
_BINARY_CONTROLS = {chr(code) for code in [*range(32), 127]} - set("\t\n\r\f\v")


class UnreadableFile(Unparseable):
    """A file that cannot be read as text at all; it is quarantined whole."""


def read_markdown(path: Path, max_bytes: int) -> tuple[str, list[Notice]]:
    """The text of a file, with a notice if it was not UTF-8; raises UnreadableFile."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            detail = f"{size} bytes is over the limit of {max_bytes} (data.max_file_bytes)"
            raise UnreadableFile("file_too_large", detail)
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableFile("unreadable", error.strerror or str(error)) from None
    return decode_markdown(data)


def decode_markdown(data: bytes) -> tuple[str, list[Notice]]:
    """Bytes as text: UTF-8 (a BOM stays in the text for the parser to note), UTF-16 with a BOM, or GB18030."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, notices = data.decode("utf-16"), [Notice("encoding", "decoded as UTF-16 (not UTF-8)")]
        except UnicodeDecodeError:
            raise UnreadableFile("undecodable", "starts with a UTF-16 byte order mark but is not UTF-16") from None
    elif (nul := data.find(b"\x00")) >= 0:
        raise UnreadableFile("binary_file", f"NUL byte at offset {nul}: not a text file")
    else:
        try:
            text, notices = data.decode("utf-8"), []
        except UnicodeDecodeError as not_utf8:
            try:
                text, notices = data.decode("gb18030"), [Notice("encoding", "decoded as GB18030/GBK (not UTF-8)")]
            except UnicodeDecodeError:
                detail = f"neither UTF-8 (bad byte at offset {not_utf8.start}) nor GB18030"
                raise UnreadableFile("undecodable", detail) from None
    controls = sum(1 for character in text if character in _BINARY_CONTROLS)
    if controls > _MAX_CONTROL_SHARE * max(len(text), 1):
        raise UnreadableFile("binary_file", f"{controls} control characters in {len(text)}: not a text file")
    return text, notices


def markdown_files(paths: list[Path]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every file to parse with the name its examples carry, and warnings about what was skipped.

    A file given directly is named by its file name; a file found in a folder by its path relative to
    that folder. Folders are searched recursively for `*.md` in sorted order. A file reached twice
    (through a symlink) is read once.
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
    return files, warnings


def _markdown_files_under(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    root_real = root.resolve()
    found: list[tuple[Path, str]] = []
    warnings: list[str] = []
    visited = {root_real}  # real folders already searched: a link back up the tree is not followed again

    def search(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            name = entry.relative_to(root).as_posix()
            if entry.is_symlink() and not _link_stays_inside(entry, name, root, root_real, warnings):
                continue
            if entry.is_dir():
                real = entry.resolve()
                if real not in visited:
                    visited.add(real)
                    search(entry)
            elif entry.suffix == ".md" and entry.is_file():
                found.append((entry, name))

    search(root)
    return sorted(found, key=lambda item: item[1]), warnings


def _link_stays_inside(link: Path, name: str, root: Path, root_real: Path, warnings: list[str]) -> bool:
    """Whether to follow a link: only to an existing target inside the scanned folder, never elsewhere."""
    relevant = link.suffix == ".md" or link.is_dir()
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        if relevant:
            warnings.append(Notice("broken_symlink", "link target does not exist; skipped").for_file(name))
        return False
    if target.is_relative_to(root_real):
        return True
    if relevant:
        warnings.append(Notice("symlink_outside_root", f"points to {target}, outside {root}; skipped").for_file(name))
    return False
