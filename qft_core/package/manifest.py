"""The sha256 manifest that seals a deployment package: one `digest  path` line per file, in `sha256sum` format,
so `sha256sum -c MANIFEST.sha256` checks a package without qft."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qft_core.package.layout import PackageError

MANIFEST_FILE = "MANIFEST.sha256"
_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<path>.+)$")


class ManifestError(PackageError):
    """A package whose files differ from its manifest, or a manifest that cannot be read; the message names
    every file at fault."""

    def __init__(
        self,
        message: str,
        *,
        missing: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        changed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.extra = extra
        self.changed = changed


@dataclass(frozen=True)
class ManifestCheck:
    """A manifest that matched its folder: how many files and bytes it covers."""

    files: int
    total_bytes: int
    digests: dict[str, str] = field(repr=False)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def package_files(directory: Path) -> list[str]:
    """Every file below `directory` except the manifest, as sorted POSIX paths relative to it.

    Links are reported as files: the manifest check then flags them, since a package never contains links.
    """
    found = []
    for path in directory.rglob("*"):
        if path.is_symlink() or path.is_file():
            relative = path.relative_to(directory).as_posix()
            if relative != MANIFEST_FILE:
                found.append(relative)
    return sorted(found)


def write_manifest(directory: Path) -> Path:
    """Hash every file of `directory` into its manifest; call it after the last other file is written."""
    lines = [f"{file_sha256(directory / name)}  {name}\n" for name in package_files(directory)]
    manifest = directory / MANIFEST_FILE
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def read_manifest(manifest: Path) -> dict[str, str]:
    """The manifest's entries as {path: digest}; a malformed line or an unsafe path is an error naming its line."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{manifest}: no manifest; this is not a qft package", missing=(MANIFEST_FILE,)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{manifest}: cannot read the manifest: {error}") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line)
        if match is None:
            raise ManifestError(f"{manifest}, line {number}: expected '<sha256>  <path>', got {line[:80]!r}")
        path = match["path"]
        parts = PurePosixPath(path).parts
        if path.startswith("/") or ".." in parts or "\\" in path:
            raise ManifestError(f"{manifest}, line {number}: path {path!r} leaves the package folder")
        if path in entries:
            raise ManifestError(f"{manifest}, line {number}: {path} is listed twice")
        entries[path] = match["digest"]
    return entries


def check_manifest(directory: Path) -> ManifestCheck:
    """Compare `directory` with its manifest: a missing, extra, changed or linked file raises `ManifestError`.

    Only files found by walking the folder are opened; paths written in the manifest are only compared.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    expected = read_manifest(manifest)
    present = package_files(directory)
    links = tuple(name for name in present if (directory / name).is_symlink())
    digests = {name: file_sha256(directory / name) for name in present if name not in links}
    missing = tuple(sorted(set(expected) - set(present)))
    extra = tuple(sorted(set(present) - set(expected) - set(links)))
    changed = tuple(sorted(name for name, digest in digests.items() if name in expected and expected[name] != digest))
    findings = (("changed", changed), ("missing", missing), ("not in the manifest", extra), ("links", links))
    problems = [f"{label}: {', '.join(names)}" for label, names in findings if names]
    if problems:
        raise ManifestError(
            f"{manifest}: the package does not match its manifest — {'; '.join(problems)}",
            missing=missing,
            extra=extra + links,
            changed=changed,
        )
    return ManifestCheck(
        files=len(digests), total_bytes=sum((directory / name).stat().st_size for name in digests), digests=digests
    )
