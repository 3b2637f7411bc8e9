"""The corpus folder as a manifest of Markdown files and content hashes: what changed, and what a run read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel


class CorpusFile(BaseModel):
    path: str
    bytes: int
    sha256: str


class CorpusManifest(BaseModel):
    root: str
    files: list[CorpusFile]

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


class CorpusNotFoundError(FileNotFoundError):
    pass


def scan_corpus(root: str | Path) -> CorpusManifest:
    """Every `*.md` file under root, sorted, with its size and sha256."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusNotFoundError(f"corpus folder not found: {root}")
    files = []
    for path in sorted(root.rglob("*.md")):
        if not path.is_file():
            continue
        content = path.read_bytes()
        files.append(CorpusFile(path=path.relative_to(root).as_posix(), bytes=len(content), sha256=hashlib.sha256(content).hexdigest()))
    return CorpusManifest(root=str(root), files=files)
