"""Security: weights load from safetensors only, model code shipped with weights never runs unless the config
asks, checkpoints unpickle no code, packages are verified before they load, archives cannot write outside their
target, YAML runs no code, and no field of an HTTP request ever reaches the filesystem.

Each malicious file here carries a live payload (it creates a marker folder when it runs); a control shows the
payload does run when loaded unsafely, so the refusals are not vacuous."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import uvicorn
from starlette.testclient import TestClient

from qft_core.cli import main
from qft_core.config import ConfigError, ModelConfig, PathsConfig, QftConfig, QuantConfig, load_config
from qft_core.data.parse import parse_text
from qft_core.model import registry
from qft_core.model.registry import ModelNotAvailableError, ensure_model_dir, has_weights, load_model, resolve_model
from qft_core.package import compare, merge
from qft_core.package.bundle import build_package, unpack_package
from qft_core.package.layout import PackageError
from qft_core.package.manifest import MANIFEST_FILE, ManifestError, check_manifest, file_sha256, write_manifest
from qft_core.package.model_card import ModelCardInfo
from qft_core.serve.served_model import ServedModel
from qft_core.serve.server import ServerSettings, create_app, serve_package
from qft_core.train import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_NAME = "qft-security-test"
QUESTION = [{"role": "user", "content": "SM2 是什么？"}]

# Every file any thread opens while `_opened` is a list: Python's audit hook sees builtins.open, io.open and
# os.open alike. Hooks cannot be removed, so this one is installed once and records only while asked to.
_opened: list[str] | None = None


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None:
        _opened.append(os.fsdecode(args[0]) if isinstance(args[0], str | bytes | os.PathLike) else repr(args[0]))


sys.addaudithook(_record_open)


@contextmanager
def files_opened() -> Iterator[list[str]]:
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def test_the_open_recorder_sees_opens_of_every_kind_in_every_thread(tmp_path: Path) -> None:
    """What the filesystem assertions below rely on: no way of opening a file escapes the recorder."""
    target = tmp_path / "seen.txt"
    target.write_text("x", encoding="utf-8")
    thread_done = []

    def open_in_a_thread() -> None:
        thread_done.append(target.read_text(encoding="utf-8"))

    with files_opened() as opened:
        open(target, encoding="utf-8").close()  # noqa: SIM115 — the builtin itself is what is checked
        os.close(os.open(target, os.O_RDONLY))
        worker = threading.Thread(target=open_in_a_thread)
        worker.start()
        worker.join()

    assert opened == [str(target)] * 3 and thread_done == ["x"]


class MakesMarker:
    """Unpickling it runs `os.mkdir(marker)`: the shape of every malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def assert_payload_is_live(path: Path, marker: Path) -> None:
    """The control: an unsafe load of `path` does run its code."""
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.is_dir()


REMOTE_CODE = """from pathlib import Path
Path({marker!r}).mkdir()
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
class EvilConfig(Qwen3Config):
    pass
class EvilModel(Qwen3ForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def add_remote_code(model_dir: Path, marker: Path) -> None:
    """Ship `evil.py` with the model and point config and tokenizer at it, as a hostile checkpoint would."""
    (model_dir / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)), encoding="utf-8")
    for name, auto_map in (
        ("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}),
        ("tokenizer_config.json", {"AutoTokenizer": [None, "evil.EvilTokenizer"]}),
    ):
        values = json.loads((model_dir / name).read_text(encoding="utf-8"))
        values["auto_map"] = auto_map
        (model_dir / name).write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    # The project's model cache: qwen3-tiny is built there once (atomically, under a lock) and reused.
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))


@pytest.fixture(scope="module")
def package_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = {"config": QftConfig().model_dump(mode="json"), "data_hash": "test", "metrics": {}}
    out = tmp_path_factory.mktemp("packages") / PACKAGE_NAME
    return build_package(tiny_model_dir, out, metadata=metadata, model_card=ModelCardInfo(PACKAGE_NAME, "qwen3-tiny"))


@pytest.fixture
def package_copy(package_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / PACKAGE_NAME))


# --- (a) weights: safetensors only ------------------------------------------------------------------------------


def test_model_dir_with_only_pickled_weights_is_refused_and_never_unpickled(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir, marker = tmp_path / "pickled", tmp_path / "marker"
    model_dir.mkdir()
    shutil.copy(tiny_model_dir / "config.json", model_dir / "config.json")
    torch.save({"model.embed_tokens.weight": MakesMarker(marker)}, model_dir / "pytorch_model.bin")
    spec = resolve_model(ModelConfig(name=str(model_dir)), PathsConfig())

    assert not has_weights(model_dir)
    with pytest.raises(ModelNotAvailableError, match=r"has no config.json with \*.safetensors weights"):
        load_model(spec)
    with pytest.raises(ModelNotAvailableError, match=r"has no config.json with \*.safetensors weights"):
        registry.load_tokenizer(spec)
    assert not marker.exists()
    assert_payload_is_live(model_dir / "pytorch_model.bin", marker)


def test_safetensors_are_loaded_and_a_pickled_checkpoint_beside_them_is_ignored(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir, marker = Path(shutil.copytree(tiny_model_dir, tmp_path / "both")), tmp_path / "marker"
    torch.save({"model.embed_tokens.weight": MakesMarker(marker)}, model_dir / "pytorch_model.bin")

    model = load_model(resolve_model(ModelConfig(name=str(model_dir)), PathsConfig()))

    reference = load_model(resolve_model(ModelConfig(name=str(tiny_model_dir)), PathsConfig()))
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    assert not marker.exists()


# --- (b) remote code: never unless the config asks ------------------------------------------------------------


@pytest.mark.parametrize("trust", [False, True])
def test_registry_passes_trust_remote_code_only_as_configured(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, trust: bool
) -> None:
    calls = []

    def from_pretrained(directory, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(to=lambda device: None, chat_template=None)

    monkeypatch.setattr(registry.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(registry.AutoTokenizer, "from_pretrained", from_pretrained)
    # Untrusted: the default, not set at all; trusted: asked for in the config.
    config = ModelConfig(name=str(tiny_model_dir), **({"trust_remote_code": True} if trust else {}))

    load_model(resolve_model(config, PathsConfig()))
    registry.load_tokenizer(resolve_model(config, PathsConfig()))

    assert [call["trust_remote_code"] for call in calls] == [trust, trust]
    assert calls[0]["use_safetensors"] is True
    assert all(call["local_files_only"] is True for call in calls)


def test_code_shipped_with_a_model_never_runs_by_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir, marker = Path(shutil.copytree(tiny_model_dir, tmp_path / "hostile")), tmp_path / "marker"
    add_remote_code(model_dir, marker)
    spec = resolve_model(ModelConfig(name=str(model_dir)), PathsConfig())

    model = load_model(spec)
    tokenizer = registry.load_tokenizer(spec)

    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert type(tokenizer).__name__ != "EvilTokenizer"
    assert not marker.exists()


class ModelLoaded(Exception):
    """Stops package verification once its model is loaded: what it does next is not about loading."""


def test_merge_and_package_verification_say_trust_remote_code_false_and_run_no_shipped_code(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, marker = Path(shutil.copytree(tiny_model_dir, tmp_path / "hostile")), tmp_path / "marker"
    add_remote_code(model_dir, marker)
    calls: list[dict] = []
    models, tokenizers = [], []
    load_model_, load_tokenizer = compare.AutoModelForCausalLM.from_pretrained, compare.AutoTokenizer.from_pretrained

    def recorded_model(directory, **kwargs):
        calls.append(kwargs)
        models.append(load_model_(directory, **kwargs))
        raise ModelLoaded

    def recorded_tokenizer(directory, **kwargs):
        calls.append(kwargs)
        tokenizers.append(load_tokenizer(directory, **kwargs))
        return tokenizers[-1]

    monkeypatch.setattr(compare.AutoModelForCausalLM, "from_pretrained", recorded_model)
    monkeypatch.setattr(compare.AutoTokenizer, "from_pretrained", recorded_tokenizer)
    # The merged model is reloaded to compare its logits; verification loads the unquantized reference to measure
    # it (and never reaches its verification set here).
    with pytest.raises(ModelLoaded):
        merge._load_merged(model_dir, torch.float32, "cpu")
    with pytest.raises(ModelLoaded):
        compare.evaluate_directory(model_dir, verification=None, config=QuantConfig())

    assert [call["trust_remote_code"] for call in calls] == [False, False, False]
    assert [type(model).__name__ for model in models] == ["Qwen3ForCausalLM", "Qwen3ForCausalLM"]
    assert len(tokenizers) == 1 and type(tokenizers[0]).__name__ != "EvilTokenizer"
    assert not marker.exists()


TRUSTED_LOAD = """
import sys
from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.registry import load_model, resolve_model
print(type(load_model(resolve_model(ModelConfig(name=sys.argv[1], trust_remote_code=True), PathsConfig()))).__name__)
"""


@pytest.mark.slow
def test_code_shipped_with_a_model_runs_when_the_config_trusts_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The control for the test above: the same hostile directory runs its code once trusted."""
    model_dir, marker = Path(shutil.copytree(tiny_model_dir, tmp_path / "hostile")), tmp_path / "marker"
    add_remote_code(model_dir, marker)
    # A separate process with its own module cache: the trusted code must not land in the user's cache.
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    done = subprocess.run(
        [sys.executable, "-c", TRUSTED_LOAD, str(model_dir)], cwd=REPO_ROOT, env=environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "EvilModel"
    assert marker.is_dir()


# --- (c) checkpoints: unpickled with weights_only ----------------------------------------------------------------


def test_checkpoint_loader_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    checkpoints, marker = tmp_path / "checkpoints", tmp_path / "marker"
    staging = ckpt.start_staging(checkpoints, 10)
    torch.save({"optimizer": MakesMarker(marker), "scheduler": {}}, staging / ckpt.OPTIMIZER_STATE)
    ckpt.rng_file(staging, 0).parent.mkdir()
    torch.save({"torch": MakesMarker(marker)}, ckpt.rng_file(staging, 0))
    ckpt.write_trainer_state(staging, {"step": 10})
    # Sealed by its own manifest, as someone who can write the run folder could do: the hashes match.
    ckpt.seal(staging, keep_last=2)
    warnings: list[str] = []
    checkpoint = ckpt.latest_valid(checkpoints, warn=warnings.append)
    assert checkpoint == ckpt.checkpoint_path(checkpoints, 10) and warnings == []

    loads = {
        checkpoint / ckpt.OPTIMIZER_STATE: lambda: ckpt.load_optimizer_state(checkpoint),
        ckpt.rng_file(checkpoint, 0): lambda: ckpt.load_rng(checkpoint, 0),
    }
    for path, load in loads.items():
        with pytest.raises(ckpt.CheckpointError) as failure:
            load()
        message = str(failure.value)
        assert message.startswith(f"{path}: not a weights-only checkpoint file (") and "posix.mkdir" in message
        assert message.endswith("); refusing to unpickle it")
    assert not marker.exists()
    assert_payload_is_live(checkpoint / ckpt.OPTIMIZER_STATE, marker)


# --- (d) packages: verified before they load ---------------------------------------------------------------------


def test_server_start_refuses_a_tampered_package_before_loading_it(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    loaded, served = [], []
    monkeypatch.setattr(ServedModel, "load", classmethod(lambda cls, *args, **kwargs: loaded.append(args)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: served.append(self))
    with (package_copy / "config.json").open("a", encoding="utf-8") as handle:
        handle.write(" ")

    with pytest.raises(ManifestError, match="changed: config.json"):
        serve_package(package_copy, ServerSettings(), host="127.0.0.1", port=8000)
    assert main(["serve", str(package_copy), "--port", "8000"]) == 1

    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("qft serve: ") and "changed: config.json" in error[0]
    assert loaded == [] and served == []


def test_a_resealed_package_with_shipped_code_serves_without_running_it(package_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    add_remote_code(package_copy, marker)
    write_manifest(package_copy)

    check_manifest(package_copy)
    served = ServedModel.load(package_copy, device="cpu")

    assert type(served.model).__name__ == "Qwen3ForCausalLM"
    assert type(served.tokenizer).__name__ != "EvilTokenizer"
    assert not marker.exists()


def test_paths_written_in_a_manifest_are_never_opened(package_copy: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for packages", encoding="utf-8")
    for listed in ("../secret.txt", str(secret)):
        manifest = (package_copy / MANIFEST_FILE).read_text(encoding="utf-8")
        (package_copy / MANIFEST_FILE).write_text(f"{manifest}{file_sha256(secret)}  {listed}\n", encoding="utf-8")

        with files_opened() as opened, pytest.raises(ManifestError, match="leaves the package folder"):
            check_manifest(package_copy)

        assert [path for path in opened if "secret" in path] == []
        (package_copy / MANIFEST_FILE).write_text(manifest, encoding="utf-8")


# --- (e) archives: the data filter and no way out ----------------------------------------------------------------
# Links, '..' and absolute names are refused in tests/core/package/test_bundle.py
# (test_unpack_refuses_escaping_members_before_writing_anything); these are the remaining member kinds.


def write_archive(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def archive_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", mode: int = 0o644):
    member = tarfile.TarInfo(name)
    member.type, member.mode = kind, mode
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    return member, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (archive_member("pkg/fifo", tarfile.FIFOTYPE), "is not a regular file or folder"),
        (archive_member("pkg/tty", tarfile.CHRTYPE), "is not a regular file or folder"),
        (archive_member("pkg/disk", tarfile.BLKTYPE), "is not a regular file or folder"),
        (archive_member("pkg\\..\\..\\evil"), "is an absolute path"),
        (archive_member("C:/evil"), "is an absolute path"),
    ],
    ids=["fifo", "char-device", "block-device", "backslashes", "drive"],
)
def test_unpack_refuses_special_files_and_windows_paths(tmp_path: Path, member, reason: str) -> None:
    archive = write_archive(tmp_path / "evil.tar.gz", archive_member("pkg/config.json", data=b"{}"), member)

    with pytest.raises(PackageError, match=reason):
        unpack_package(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_strips_setuid_and_world_writable_modes(tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path / "modes.tar.gz",
        archive_member("pkg/config.json", data=b"{}"),
        archive_member("pkg/run.sh", data=b"#!/bin/sh\n", mode=0o6777),
    )

    folder = unpack_package(archive, tmp_path / "out")

    mode = stat.S_IMODE((folder / "run.sh").stat().st_mode)
    assert mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH) == 0


# --- YAML: safe-loaded wherever it is read -------------------------------------------------------------------------


def test_yaml_front_matter_and_config_files_run_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    front_matter = f"---\ncategory: !!python/object/apply:os.mkdir ['{marker}']\n---\nQ: 安全吗？\nA: 安全。\n"
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(f"paths: !!python/object/apply:os.mkdir ['{marker}']\n", encoding="utf-8")

    result = parse_text(front_matter, "yaml.md", QftConfig().data)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file)

    assert [example.question for example in result.examples] == ["安全吗？"]
    assert [warning.split(": ")[1] for warning in result.warnings] == ["front_matter"]
    assert not marker.exists()


# --- (f) the server: no request field reaches the filesystem ------------------------------------------------------


@pytest.fixture(scope="module")
def server(package_dir: Path) -> Iterator[TestClient]:
    settings = ServerSettings(max_request_bytes=100_000, max_tokens_limit=4)
    with TestClient(create_app(ServedModel.load(package_dir, device="cpu"), settings)) as client:
        yield client


def test_model_names_that_look_like_paths_are_404_and_open_nothing(server: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients", encoding="utf-8")
    names = ["../../etc/passwd", str(secret), f"{PACKAGE_NAME}/../../{secret.name}", "file:///etc/passwd"]

    with files_opened() as opened:
        responses = [
            server.post("/v1/chat/completions", json={"model": name, "messages": QUESTION, "max_tokens": 1})
            for name in names
        ]

    assert [(response.status_code, response.json()["error"]["code"]) for response in responses] == [
        (404, "model_not_found")
    ] * len(names)
    assert opened == []


def test_paths_in_any_request_field_are_text_and_open_nothing(server: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients", encoding="utf-8")
    body = {
        "model": PACKAGE_NAME,
        "messages": [
            {"role": "system", "content": str(secret)},
            {"role": "user", "content": [{"type": "text", "text": "../../etc/passwd"}]},
        ],
        "max_tokens": 1,
        "temperature": 0,
        "stop": [str(secret), "/etc/passwd"],
        "user": str(secret),
        "stream": False,
    }

    with files_opened() as opened:
        completion = server.post("/v1/chat/completions", json=body)
        paths = [server.get(path) for path in ("/v1/models/..%2F..%2Fetc%2Fpasswd", "/../../etc/passwd", "/etc/passwd")]

    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] == 1
    assert [(response.status_code, response.json()["error"]["code"]) for response in paths] == [(404, "not_found")] * 3
    assert [path for path in opened if "secret" in path or "passwd" in path] == []
