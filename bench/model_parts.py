"""Ship a registered GGUF model to a machine that takes at most 64 MiB per call: its GGUF file and the tokenizer
converted here, as one archive cut into parts, one part per ignored folder `.carry1/`, `.carry2/` …

    uv run --extra gemma3 python bench/model_parts.py pack --model gemma3-270m --part-mib 56

Each folder holds one part and the manifest (sha256 of every part and of the whole archive); `unpack` gathers
the parts from any folders, checks every checksum and extracts `model.gguf` and `tokenizer/`. The GGUF itself
is the smallest faithful form (Gemma 3 270M: 242 MiB at Q4_K_M; its bf16 safetensors would be 536 MiB); the
tokenizer travels converted because transformers' GGUF tokenizer rebuild differs between its releases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MANIFEST_SUFFIX = ".qftparts.json"
GGUF_NAME = "model.gguf"
TOKENIZER_DIR = "tokenizer"
# What a converted model folder holds of its tokenizer (transformers 5 writes these two).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHUNK_BYTES = 1 << 20


class PartsError(ValueError):
    """Parts missing, altered or from different archives; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def pack(name: str, root: Path, part_mib: float) -> list[Path]:
    """Convert registered model `name` here (model cache), archive its GGUF and tokenizer, and write the parts
    into `root/.carry1/` …; returns the folders."""
    from qft_core.config import ModelConfig, PathsConfig
    from qft_core.model.registry import ensure_model_dir, packaged_gguf_file, resolve_model

    paths = PathsConfig()
    spec = resolve_model(ModelConfig(name=name), paths)
    converted = ensure_model_dir(spec)
    with tempfile.TemporaryDirectory(prefix="qft-parts-") as work:
        gguf_file = packaged_gguf_file(name, Path(work))
        if gguf_file is None:
            raise PartsError(f"model '{name}': its GGUF package is not installed")
        archive = Path(work) / f"{name}.tar.gz"
        # gzip shrinks the tokenizer (Gemma's tokenizer.json: 33 MB) far more than the quantized weights.
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            tar.add(gguf_file, arcname=GGUF_NAME)
            for file in TOKENIZER_FILES:
                tar.add(converted / file, arcname=f"{TOKENIZER_DIR}/{file}")
        return _split(archive, root, int(part_mib * (1 << 20)))


def _split(archive: Path, root: Path, part_bytes: int) -> list[Path]:
    size = archive.stat().st_size
    count = -(-size // part_bytes)
    parts, folders = [], []
    with archive.open("rb") as source:
        for index in range(count):
            folder = root / f".carry{index + 1}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            part = folder / f"{archive.name}.part{index:02d}"
            part.write_bytes(source.read(part_bytes))
            parts.append({"file": part.name, "bytes": part.stat().st_size, "sha256": sha256_file(part)})
            folders.append(folder)
    manifest = {"archive": archive.name, "bytes": size, "sha256": sha256_file(archive), "parts": parts}
    for folder in folders:
        (folder / (archive.name.split(".")[0] + MANIFEST_SUFFIX)).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folders


def unpack(folders: list[Path], dest: Path) -> Path:
    """Join the parts found in `folders` (checking each part's and the whole archive's sha256) and extract
    the archive into `dest`; returns `dest` (with model.gguf and tokenizer/). Done once: an extracted `dest`
    is reused."""
    if (dest / GGUF_NAME).is_file():
        return dest
    manifests = sorted({path for folder in folders for path in folder.glob(f"*{MANIFEST_SUFFIX}")})
    if not manifests:
        raise PartsError(f"no *{MANIFEST_SUFFIX} manifest in {', '.join(map(str, folders))}")
    manifest = json.loads(manifests[0].read_text(encoding="utf-8"))
    found = {path.name: path for folder in folders for path in folder.iterdir()}
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / manifest["archive"]
    with archive.open("wb") as joined:
        for part in manifest["parts"]:
            path = found.get(part["file"])
            if path is None:
                raise PartsError(f"{part['file']}: part missing (listed in {manifests[0]})")
            if sha256_file(path) != part["sha256"]:
                raise PartsError(f"{path}: sha256 differs from {manifests[0]}")
            with path.open("rb") as source:
                shutil.copyfileobj(source, joined, CHUNK_BYTES)
    if sha256_file(archive) != manifest["sha256"]:
        raise PartsError(f"{archive}: the joined archive's sha256 differs from {manifests[0]}")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write the parts into .carry1/ … under --root")
    packing.add_argument("--model", default="gemma3-270m")
    packing.add_argument("--root", type=Path, default=REPO_ROOT)
    packing.add_argument("--part-mib", type=float, default=56.0,
                         help="bytes per part; with the working tree and wheels a call carries at most 64 MiB")
    unpacking = commands.add_parser("unpack", help="join and check the parts, extract into --dest")
    unpacking.add_argument("folders", type=Path, nargs="+")
    unpacking.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "pack":
        for folder in pack(args.model, args.root, args.part_mib):
            print(f"{folder}: {sum(path.stat().st_size for path in folder.iterdir()) / (1 << 20):.1f} MiB")
    else:
        print(unpack(args.folders, args.dest))


if __name__ == "__main__":
    main()
