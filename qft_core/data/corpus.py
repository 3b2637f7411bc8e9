"""The corpus folder as a manifest of Markdown files and content hashes: what changed, and what a run read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field

from qft_core.data.sources import CorpusNotFoundError, markdown_files

__all__ = ["CorpusFile", "CorpusManifest", "CorpusNotFoundError", "UnreadableCorpusFile", "scan_corpus"]


class CorpusFile(BaseModel):
    path: str
    bytes: int
    sha256: str


class UnreadableCorpusFile(BaseModel):
    """A Markdown file the scan found but could not open: a parse of the manifest quarantines it."""

    path: str
    reason: str


class CorpusManifest(BaseModel):
    root: str
    files: list[CorpusFile]
    unreadable: list[UnreadableCorpusFile] = Field(default_factory=list)
    # Files and links left out, as the parser words them (links outside the root, unreadable files).
    warnings: list[str] = Field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files)

    @property
    def content_hash(self) -> str:
        """One hash over every file's relative path and content: equal corpora, equal hash."""
        digest = hashlib.sha256()
        for entry in self.files:
            digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
        return digest.hexdigest()


def scan_corpus(root: str | Path) -> CorpusManifest:
    """Every Markdown file under root that the parser reads (`.md` or `.markdown`, any case), sorted, with
    its size and sha256.

    The files are chosen by the same walk as `parse_paths` (`sources.markdown_files`): links are followed
    only inside the root and a file reached twice is listed once, so the manifest never hashes a file outside
    the corpus, and the content hash changes exactly when what a parse reads changes.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusNotFoundError(f"corpus folder not found: {root}")
    found, warnings = markdown_files([root])
    files, unreadable = [], []
    for path, name in found:
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256")
                size = handle.tell()
        except OSError as error:
            reason = error.strerror or str(error)
            warnings.append(f"{name}: unreadable: {reason}; not in the manifest")
            unreadable.append(UnreadableCorpusFile(path=name, reason=reason))
            continue
        files.append(CorpusFile(path=name, bytes=size, sha256=digest.hexdigest()))
    return CorpusManifest(root=str(root), files=files, unreadable=unreadable, warnings=warnings)
