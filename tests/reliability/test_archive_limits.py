"""Unpacking a package archive has limits (entries, single file, total, ratio to the archive), checks the whole
gzip stream before it reports success, and leaves nothing behind when it fails; `qft serve` and
`qft package verify` take an archive through the same path."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from qft_core.cli import main as qft
from qft_core.config import ExportConfig, ModelConfig, PathsConfig, QftConfig
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.package import bundle
from qft_core.package.bundle import archive_path, build_package, unpack_cached, unpack_package
from qft_core.package.layout import PackageError
from qft_core.package.manifest import check_manifest
from qft_core.package.model_card import ModelCardInfo

REPO = Path(__file__).resolve().parents[2]
PACKAGE_NAME = "limits-pkg"


def _tar_gz(path: Path, members: list[tuple[str, bytes]], level: int = 6) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def _refused(archive: Path, dest: Path, message: str, limits: ExportConfig | None = None) -> None:
    with pytest.raises(PackageError) as error:
        unpack_package(archive, dest, limits)
    assert str(error.value).startswith(f"{archive}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not dest.exists()  # nothing written, not even the destination folder


def test_an_archive_of_more_entries_than_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    entries = [(f"pkg/f{index:06d}", b"") for index in range(10_001)]
    archive = _tar_gz(tmp_path / "many.tar.gz", entries)
    assert archive.stat().st_size < 200_000

    _refused(archive, tmp_path / "out", "more than 10,000 entries (export.unpack_max_entries); refusing to unpack anything")
    # The limit is a setting: raised, the same archive unpacks whole.
    folder = unpack_package(archive, tmp_path / "out", ExportConfig(unpack_max_entries=10_001))
    assert len(list(folder.iterdir())) == 10_001


def test_an_archive_that_unpacks_to_far_more_than_its_size_is_refused(tmp_path: Path) -> None:
    # 64 MiB of zeros compress to about 64 KB: a ratio of about 1,000 (the 3 GB from 3 MB, smaller).
    archive = _tar_gz(tmp_path / "bomb.tar.gz", [("pkg/config.json", b"{}"), ("pkg/model.safetensors", bytes(64 * 2**20))], 9)
    assert archive.stat().st_size < 200_000

    _refused(archive, tmp_path / "out", "unpacks to more than 50 times its own")
    _refused(archive, tmp_path / "out", "'pkg/model.safetensors' is 67,108,864 bytes, over 1,048,576 (export.unpack_max_file_bytes)",
             ExportConfig(unpack_max_file_bytes=2**20))
    _refused(archive, tmp_path / "out", "unpacks to more than 1,000,000 bytes (export.unpack_max_total_bytes)",
             ExportConfig(unpack_max_total_bytes=1_000_000))


def _package_archive(tmp_path: Path) -> Path:
    """A package-shaped archive whose weights are random bytes, which deflate stores as they are: a flipped byte
    there decompresses without a deflate error, to a different file."""
    weights = os.urandom(256 * 1024)
    return _tar_gz(
        tmp_path / "package.tar.gz",
        [("pkg/config.json", b'{"architectures": ["Qwen3ForCausalLM"]}'), ("pkg/model.safetensors", weights)],
    )


def _flip_middle_byte(archive: Path) -> bytes:
    original = archive.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    archive.write_bytes(bytes(damaged))
    return original


def test_a_byte_flipped_inside_the_gzip_stream_fails_its_crc_and_writes_nothing(tmp_path: Path) -> None:
    archive = _package_archive(tmp_path)
    _flip_middle_byte(archive)
    # What the old unpack saw: tarfile reads a whole, different model.safetensors and stops at the tar end marker.
    with tarfile.open(archive, "r:gz") as tar:
        assert [member.name for member in tar] == ["pkg/config.json", "pkg/model.safetensors"]

    _refused(archive, tmp_path / "out", "cannot unpack: CRC check failed")


def test_an_archive_damaged_between_the_check_and_the_extraction_leaves_nothing_behind_and_a_retry_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _package_archive(tmp_path)
    read_checked = bundle._read_checked

    def damaged_after_reading(path: Path, limits: ExportConfig):
        members = read_checked(path, limits)
        original.append(_flip_middle_byte(path))
        return members

    original: list[bytes] = []
    monkeypatch.setattr(bundle, "_read_checked", damaged_after_reading)
    dest = tmp_path / "deploy" / "here"
    with pytest.raises(PackageError, match="CRC check failed"):
        unpack_package(archive, dest)
    assert not (tmp_path / "deploy").exists()  # the staging folder and both folders it created are gone

    monkeypatch.setattr(bundle, "_read_checked", read_checked)
    archive.write_bytes(original[0])
    folder = unpack_package(archive, dest)
    assert sorted(path.name for path in dest.iterdir()) == ["pkg"]
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_cli_unpack_and_verify_refuse_a_damaged_archive_in_one_line(tmp_path: Path, capsys) -> None:
    archive = _package_archive(tmp_path)
    _flip_middle_byte(archive)
    assert qft(["package", "unpack", str(archive), "--out", str(tmp_path / "out")]) == 1
    assert qft(["package", "verify", str(archive)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in errors] == ["qft package", "qft package"]
    assert all(": cannot unpack: CRC check failed 0x" in line for line in errors)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))
    metadata = {"config": QftConfig().model_dump(mode="json"), "data_hash": "test", "metrics": {}}
    out = tmp_path_factory.mktemp("packages") / PACKAGE_NAME
    return build_package(model_dir, out, metadata=metadata, model_card=ModelCardInfo(PACKAGE_NAME, "qwen3-tiny"))


def test_an_archive_is_unpacked_once_into_the_cache_and_reused(tiny_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = unpack_cached(archive_path(tiny_package), cache)
    assert first.name == PACKAGE_NAME and first.parent.parent == cache
    assert check_manifest(first).files == check_manifest(tiny_package).files
    marker = first / "unpacked-once"
    marker.touch()
    assert unpack_cached(archive_path(tiny_package), cache) == first and marker.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_qft_serve_serves_a_package_archive(tiny_package: Path, tmp_path: Path) -> None:
    config = tmp_path / "qft.yaml"
    config.write_text(yaml.safe_dump({"paths": {"package_cache_dir": str(tmp_path / "cache")}}), encoding="utf-8")
    port = _free_port()
    command = [sys.executable, "-m", "qft_core.cli", "--config", str(config), "serve", str(archive_path(tiny_package)),
               "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                    models = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "qft serve did not answer within 5 minutes"
                time.sleep(1)
        assert f'"id":"{PACKAGE_NAME}"' in models.replace(" ", "")
        (unpacked,) = (tmp_path / "cache").glob(f"*/{PACKAGE_NAME}")
        assert check_manifest(unpacked).files == check_manifest(tiny_package).files
    finally:
        server.terminate()
        server.wait(timeout=60)
