"""Deployment packages: built from a model directory as a folder and a `.tar.gz` sealed by a sha256 manifest,
unpacked without letting an archive write outside its target, and verified end to end."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as distributions
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from filelock import FileLock
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from qft_core.config import ExportConfig
from qft_core.evaluate.degenerate import degeneration
from qft_core.model.registry import has_weights, stand_in_note
from qft_core.model.sampling import GENERATION_CONFIG_FILE
from qft_core.model.tokenizer import EOS_TOKEN, PAD_TOKEN, qwen3_thinking_chat_template
from qft_core.package.layout import (
    CHAT_TEMPLATE_FILE,
    METADATA_FILE,
    MODEL_CARD_FILE,
    PACKAGE_FORMAT,
    PackageError,
    read_package_metadata,
)
from qft_core.package.manifest import MANIFEST_FILE, check_manifest, write_manifest
from qft_core.package.model_card import ModelCardInfo, render_model_card
from qft_core.package.quantize import PICKLE_SUFFIXES, QUANT_METADATA_FILE, QuantizedPackage
from qft_core.publish import publishing_file, publishing_folder
from qft_core.serve.served_model import SamplingParams, ServedModel, load_package_tokenizer

ARCHIVE_SUFFIX = ".tar.gz"
# What the caller's metadata must say: how the model was trained, on which data, and how well it did.
REQUIRED_METADATA = ("config", "data_hash", "metrics")
# Keys of qft_metadata.json the package writes itself.
PACKAGE_METADATA_KEYS = (
    "qft_package_format", "package_name", "base_model", "created", "versions", "weights", "quantization"
)
VERSIONED_DISTRIBUTIONS = ("qft", "transformers", "peft", "safetensors", "tokenizers", "accelerate")
# Files of the model directory that the package writes anew.
REWRITTEN_FILES = frozenset({MODEL_CARD_FILE, METADATA_FILE, MANIFEST_FILE, CHAT_TEMPLATE_FILE, "chat_template.json"})
# Qwen3-Thinking-2507's recommended sampling, for model directories that come without a generation config.
QWEN3_THINKING_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERIFY_QUESTION = "什么是分组密码？"
# Enough greedy tokens to tell a model that writes from one that repeats a single token.
VERIFY_MAX_TOKENS = 16
# The export.unpack_max_ratio limit starts above this many unpacked bytes: small text files compress very well.
RATIO_GRACE_BYTES = 16 * 2**20
# A tar writer pads the archive to its record size (10,240 bytes for Python and GNU tar) after the end marker;
# more than this inside the gzip stream is not padding.
MAX_TRAILING_BYTES = 2**20


def archive_path(package_dir: Path) -> Path:
    """Where `build_package` writes the archive of `package_dir`: beside it, `<name>.tar.gz`."""
    package_dir = Path(package_dir)
    return package_dir.with_name(package_dir.name + ARCHIVE_SUFFIX)


def library_versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries that made the package; torch's includes its build (e.g. +cu128)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in VERSIONED_DISTRIBUTIONS:
        try:
            versions[name] = distributions.version(name)
        except distributions.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def _check_inputs(model_dir: Path, out_dir: Path, metadata: Mapping[str, Any], model_card: ModelCardInfo) -> None:
    if not has_weights(model_dir):
        raise PackageError(f"{model_dir}: not a model directory (needs config.json and *.safetensors weights)")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise PackageError(f"package metadata lacks {', '.join(missing)} (required: {', '.join(REQUIRED_METADATA)})")
    reserved = [key for key in PACKAGE_METADATA_KEYS if key in metadata]
    if reserved:
        raise PackageError(f"package metadata key(s) {', '.join(reserved)} are written by the package itself")
    if not PACKAGE_NAME.match(model_card.model_name):
        raise PackageError(
            f"package name {model_card.model_name!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    if out_dir.exists() and not (out_dir / METADATA_FILE).is_file():
        raise PackageError(f"{out_dir}: exists and is not a qft package; refusing to replace it")
    if out_dir.resolve().is_relative_to(model_dir.resolve()):
        raise PackageError(f"{out_dir}: the package cannot be written inside the model directory {model_dir}")


def _copy_model_files(model_dir: Path, package_dir: Path) -> None:
    for source in sorted(model_dir.rglob("*")):
        relative = source.relative_to(model_dir)
        # Hidden entries are tool state (.cache of hub downloads, .gitattributes), not part of the model.
        if any(part.startswith(".") for part in relative.parts) or relative.as_posix() in REWRITTEN_FILES:
            continue
        if source.suffix in PICKLE_SUFFIXES:
            raise PackageError(f"{source}: pickled checkpoints are never packaged; save the model as safetensors")
        if source.is_file():
            target = package_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _write_tokenizer(package_dir: Path) -> PreTrainedTokenizerBase:
    """Re-save the tokenizer with Qwen3-Thinking-2507's official template (the format qft trains in), then
    load it back: the package is refused unless its template opens replies with `<think>\\n`."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(package_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise PackageError(f"{package_dir}: the model directory has no loadable tokenizer: {error}") from None
    tokenizer.chat_template = qwen3_thinking_chat_template()
    tokenizer.save_pretrained(package_dir)
    return load_package_tokenizer(package_dir)


def _ensure_generation_config(package_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    if (package_dir / GENERATION_CONFIG_FILE).is_file():
        return
    eos_ids = [tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
    config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=eos_ids[1], **QWEN3_THINKING_SAMPLING)
    config.save_pretrained(package_dir)


def _package_metadata(package_dir: Path, metadata: Mapping[str, Any], model_card: ModelCardInfo) -> dict[str, Any]:
    model_config = json.loads((package_dir / "config.json").read_text(encoding="utf-8"))
    weights = {
        "files": sorted(path.relative_to(package_dir).as_posix() for path in package_dir.rglob("*.safetensors")),
        "dtype": model_config.get("dtype") or model_config.get("torch_dtype"),
        "architectures": model_config.get("architectures"),
    }
    quantized = (package_dir / QUANT_METADATA_FILE).is_file()
    return {
        "qft_package_format": PACKAGE_FORMAT,
        "package_name": model_card.model_name,
        "base_model": model_card.base_model,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "weights": weights,
        "quantization": QuantizedPackage.read(package_dir).metadata() if quantized else None,
        **metadata,
    }


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)
    except (TypeError, ValueError) as error:
        raise PackageError(f"{path.name}: the package metadata is not JSON-serialisable: {error}") from None
    path.write_text(text + "\n", encoding="utf-8")


def _normalised_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # The archive says nothing about the machine that built it.
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mode = 0o755 if member.isdir() else 0o644
    return member


def _write_archive(package_dir: Path, archive: Path) -> None:
    # Level 1: bf16 weights barely compress. On 128 MB of bf16 weights level 6 gave a 0.795 ratio against level 1's
    # 0.802 for three times the time. At Qwen3-4B size (8 GB) the rehearsal's deployment_package, compressing at
    # level 6, had not finished after 6.5 minutes (docs/gpu-run.md).
    with publishing_file(archive) as staging, tarfile.open(staging, "w:gz", compresslevel=1) as tar:
        tar.add(package_dir, arcname=package_dir.name, recursive=False, filter=_normalised_member)
        for path in sorted(package_dir.rglob("*")):
            arcname = f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}"
            tar.add(path, arcname=arcname, recursive=False, filter=_normalised_member)


def build_package(
    model_dir: Path, out_dir: Path, *, metadata: Mapping[str, Any], model_card: ModelCardInfo
) -> Path:
    """Package the model in `model_dir` as the folder `out_dir` and the archive `archive_path(out_dir)`.

    The folder holds the safetensors weights and model config, the tokenizer with Qwen3-Thinking-2507's chat
    template, a generation config, the bilingual model card `README.md`, `qft_metadata.json` (library versions plus
    `metadata`, which must carry config, data_hash and metrics) and, written last, `MANIFEST.sha256` over every
    other file. A previous package at `out_dir` is replaced; anything else there is refused. Returns `out_dir`.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_inputs(model_dir, out_dir, metadata, model_card)
    with publishing_folder(out_dir) as staging:
        _copy_model_files(model_dir, staging)
        _ensure_generation_config(staging, _write_tokenizer(staging))
        package_metadata = _package_metadata(staging, metadata, model_card)
        _write_json(staging / METADATA_FILE, package_metadata)
        (staging / MODEL_CARD_FILE).write_text(render_model_card(model_card, package_metadata), encoding="utf-8")
        write_manifest(staging)
    _write_archive(out_dir, archive_path(out_dir))
    return out_dir


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why `member` must not be extracted, or None."""
    name = member.name
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}; packages hold no links"
    if member.issparse():
        return "is a sparse file; packages hold none"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder"
    if name.startswith("/") or "\\" in name or PureWindowsPath(name).drive:
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "leaves the target folder ('..')"
    return None


class _UnpackBudget:
    """The members of one read of an archive, each checked as its header is read (before its data is), against
    the safety rules and the export.unpack_* limits."""

    def __init__(self, archive: Path, limits: ExportConfig) -> None:
        self.archive, self.limits = archive, limits
        self.archive_bytes = max(1, archive.stat().st_size)
        self.entries = 0
        self.total_bytes = 0

    def refuse(self, reason: str) -> PackageError:
        return PackageError(f"{self.archive}: {reason}; refusing to unpack anything")

    def admit(self, member: tarfile.TarInfo) -> None:
        reason = _unsafe_member(member)
        if reason is not None:
            raise self.refuse(f"member {member.name!r} {reason}")
        limits = self.limits
        self.entries += 1
        if self.entries > limits.unpack_max_entries:
            raise self.refuse(f"more than {limits.unpack_max_entries:,} entries (export.unpack_max_entries)")
        if member.size > limits.unpack_max_file_bytes:
            raise self.refuse(
                f"member {member.name!r} is {member.size:,} bytes, over {limits.unpack_max_file_bytes:,} "
                "(export.unpack_max_file_bytes)"
            )
        self.total_bytes += member.size
        if self.total_bytes > limits.unpack_max_total_bytes:
            raise self.refuse(
                f"unpacks to more than {limits.unpack_max_total_bytes:,} bytes (export.unpack_max_total_bytes)"
            )
        if self.total_bytes > RATIO_GRACE_BYTES and self.total_bytes > limits.unpack_max_ratio * self.archive_bytes:
            raise self.refuse(
                f"unpacks to more than {limits.unpack_max_ratio:g} times its own {self.archive_bytes:,} bytes "
                f"({self.total_bytes:,} bytes by member {member.name!r}; export.unpack_max_ratio)"
            )

    def check_stream_end(self, tar: tarfile.TarFile) -> None:
        """Read the compressed stream past the tar end marker to its end, which makes gzip check the CRC and
        length of everything decompressed (tarfile stops at the marker and never would)."""
        trailing = 0
        while chunk := tar.fileobj.read(1 << 20):
            trailing += len(chunk)
            if trailing > MAX_TRAILING_BYTES:
                raise self.refuse(f"more than {MAX_TRAILING_BYTES:,} bytes follow the end of the tar archive")


def _package_folder(archive: Path, members: list[tarfile.TarInfo]) -> str:
    """The one top-level folder every member of a package archive lies in."""
    paths = [PurePosixPath(member.name).parts for member in members]
    tops = sorted({parts[0] for parts in paths if parts})
    loose_files = [member.name for member, parts in zip(members, paths) if len(parts) == 1 and not member.isdir()]
    if len(tops) != 1 or loose_files:
        raise PackageError(f"{archive}: a package archive holds exactly one top-level folder, found {tops}")
    return tops[0]


def _read_checked(archive: Path, limits: ExportConfig) -> list[tarfile.TarInfo]:
    """Every member of `archive`, all checked, and the whole gzip stream verified; nothing is written."""
    budget = _UnpackBudget(archive, limits)
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for member in tar:
            budget.admit(member)
            members.append(member)
        budget.check_stream_end(tar)
    return members


def _extract_checked(archive: Path, limits: ExportConfig, into: Path) -> None:
    """Extract `archive` into `into`, checking every member again (the file may have changed since it was
    read) and the gzip stream to its end."""
    budget = _UnpackBudget(archive, limits)

    def admitted(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        budget.admit(member)
        return tarfile.data_filter(member, path)

    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter=admitted)
        budget.check_stream_end(tar)


def unpack_package(archive: Path, dest: Path, limits: ExportConfig | None = None) -> Path:
    """Extract a package archive into `dest` and return the package folder inside it.

    The archive is read twice. First every member is checked and nothing is written: links, special and sparse
    files and paths that would leave `dest` (absolute, `..`) are refused with an error naming the member, and so
    is an archive over a limit of `limits` (export.unpack_*: entries, single file, total, ratio to the archive's
    size); the gzip stream is then read to its end, so a damaged byte anywhere fails its CRC. Then it is
    extracted into a hidden staging folder in `dest` (the same checks again, and tarfile's `data` filter) and
    moved into place: a failed unpack leaves nothing behind. An existing package folder of the same name in
    `dest` is never overwritten.
    """
    archive, dest = Path(archive), Path(dest)
    limits = limits or ExportConfig()
    created = [parent for parent in (dest, *dest.parents) if not parent.exists()]
    staging = None
    try:
        folder = _package_folder(archive, _read_checked(archive, limits))
        target = dest / folder
        if target.exists():
            raise PackageError(f"{target}: already exists; unpack into another folder")
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder}.unpacking-", dir=dest))
        _extract_checked(archive, limits, staging)
        (staging / folder).rename(target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        _remove_unpacked(staging, created)
        raise PackageError(f"{archive}: cannot unpack: {error}") from None
    except BaseException:
        _remove_unpacked(staging, created)
        raise
    shutil.rmtree(staging)
    return target


def _remove_unpacked(staging: Path | None, created: list[Path]) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # innermost first: only the folders this unpack made, and only while empty
        try:
            folder.rmdir()
        except OSError:
            break


def unpack_cached(archive: Path, cache_dir: Path, limits: ExportConfig | None = None) -> Path:
    """The package folder of `archive` unpacked (by `unpack_package`) under `cache_dir/<sha256 of the archive>/`,
    unpacked on first use and reused while the archive's content stays the same."""
    archive = Path(archive)
    if not archive.is_file():
        raise PackageError(f"{archive}: no such package archive")
    digest = hashlib.sha256()
    with archive.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    dest = Path(cache_dir) / digest.hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two servers started on one archive at once unpack it once.
    with FileLock(dest.parent / f"{dest.name}.lock"):
        unpacked = [path for path in dest.iterdir() if not path.name.startswith(".")] if dest.is_dir() else []
        if len(unpacked) == 1 and unpacked[0].is_dir():
            return unpacked[0]
        shutil.rmtree(dest, ignore_errors=True)
        return unpack_package(archive, dest, limits)


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_package` checked and what the model said."""

    source: Path
    package_name: str
    files_checked: int
    total_bytes: int
    quantization: str | None
    device: str
    prompt_tokens: int
    completion_tokens: int
    sample_question: str
    sample_completion: str
    # The note of a random-weight base model (`registry.stand_in_note`), None for a pretrained one.
    stand_in: str | None = None
    # Why the sample completion is degenerate (`degenerate.degeneration`), None when it is not.
    degenerate: str | None = None

    def summary(self) -> str:
        generation = f"DEGENERATE ({self.degenerate})" if self.degenerate else "ok"
        return "\n".join(
            [
                *([self.stand_in] if self.stand_in else []),
                f"package        {self.package_name} ({self.source})",
                f"manifest       ok: {self.files_checked} files, {self.total_bytes / 1e6:.1f} MB match MANIFEST.sha256",
                f"weights        {self.quantization or 'full precision'} on {self.device}",
                "chat template  ok: the generation prompt ends with <|im_start|>assistant\\n<think>\\n",
                f"generation     {generation}: {self.completion_tokens} token(s) after a {self.prompt_tokens}-token "
                "prompt",
                f"  question     {self.sample_question}",
                f"  completion   {self.sample_completion!r}",
            ]
        )


def _verify_folder(package_dir: Path, source: Path, device: str) -> VerifyReport:
    manifest = check_manifest(package_dir)
    metadata = read_package_metadata(package_dir)
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise PackageError(f"{package_dir / METADATA_FILE}: lacks {', '.join(missing)}")
    served = ServedModel.load(package_dir, device=device)
    prompt_ids = served.prompt_ids([{"role": "user", "content": VERIFY_QUESTION}])
    completion = served.generate(prompt_ids, SamplingParams(max_tokens=VERIFY_MAX_TOKENS, temperature=0.0))
    return VerifyReport(
        source=source,
        package_name=served.model_id,
        files_checked=manifest.files,
        total_bytes=manifest.total_bytes,
        quantization=served.quantization,
        device=served.model.device.type,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        sample_question=VERIFY_QUESTION,
        sample_completion=completion.text,
        stand_in=stand_in_note(str(metadata.get("base_model", ""))),
        degenerate=degenerate.detail if (degenerate := degeneration(completion.text)) else None,
    )


def verify_package(path: Path, *, device: str = "auto", limits: ExportConfig | None = None) -> VerifyReport:
    """Check a package folder or archive: every file against the manifest (`ManifestError` names any missing,
    extra or changed file), the metadata, the chat template's `<think>` prompt, and that the model loads and
    generates a few greedy tokens on `device` (auto, cpu or cuda: the config's `device`). An archive is unpacked
    (`unpack_package`, within `limits`) into a temporary folder first."""
    path = Path(path)
    if path.is_dir():
        return _verify_folder(path, path, device)
    if not path.is_file():
        raise PackageError(f"{path}: no such package folder or archive")
    with tempfile.TemporaryDirectory(prefix="qft-verify-") as scratch:
        return _verify_folder(unpack_package(path, Path(scratch), limits), path, device)
