"""Deployment packages: every file sealed by the manifest, tampering detected by name, archives that cannot write
outside their target, the `<think>` chat template whatever the model directory carried, and `qft package`."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer

from qft_core.cli import run
from qft_core.cli.package import add_package_commands
from qft_core.config import ModelConfig, PathsConfig, QftConfig, QuantConfig
from qft_core.model.chat import generation_prompt_ids
from qft_core.model.registry import ensure_model_dir, resolve_model, stand_in_note
from qft_core.package.bundle import (
    VERIFY_MAX_TOKENS,
    VERIFY_QUESTION,
    archive_path,
    build_package,
    unpack_package,
    verify_package,
)
from qft_core.package.layout import PackageError
from qft_core.package.manifest import MANIFEST_FILE, ManifestError, check_manifest
from qft_core.package.model_card import ModelCardInfo
from qft_core.package.quantize import quantize

PACKAGE_NAME = "qft-crypto-zh-test"
DATA_HASH = "sha256:" + "ab" * 32
METADATA = {
    "config": QftConfig().model_dump(mode="json"),
    "data_hash": DATA_HASH,
    "metrics": {"test": {"term_f1": 0.512345, "perplexity": 12.5}},
    "data": {
        "examples": {"train": 206, "validation": 26, "test": 26},
        "reasoning_origins": {"expert": 240, "model": 12, "template": 6, "none": 0, "rejected": 3},
    },
}
CARD = ModelCardInfo(model_name=PACKAGE_NAME, base_model="qwen3-tiny")
GENERATION_PROMPT_END = "<|im_start|>assistant\n<think>\n"
# A chat template without Qwen3-Thinking's `<think>` opening, as a merged or quantized model might carry.
PLAIN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "README.md",
    "qft_metadata.json",
    MANIFEST_FILE,
}


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    # The project's model cache: qwen3-tiny is built there once (atomically, under a lock) and reused.
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))


@pytest.fixture(scope="module")
def package_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(
        tiny_model_dir, tmp_path_factory.mktemp("packages") / PACKAGE_NAME, metadata=METADATA, model_card=CARD
    )


@pytest.fixture
def package_copy(package_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / PACKAGE_NAME))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_entries(package: Path) -> dict[str, str]:
    lines = (package / MANIFEST_FILE).read_text(encoding="utf-8").splitlines()
    return {path: digest for digest, path in (line.split("  ", 1) for line in lines)}


def reply_prompt(tokenizer) -> str:
    """What a tokenizer's chat template renders to ask for a reply to one question."""
    return tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False, add_generation_prompt=True)


def test_package_holds_model_tokenizer_card_metadata_and_manifest(package_dir: Path) -> None:
    files = {path.relative_to(package_dir).as_posix() for path in package_dir.rglob("*") if path.is_file()}
    assert files == EXPECTED_FILES


def test_manifest_lists_every_other_file_with_its_sha256(package_dir: Path) -> None:
    entries = manifest_entries(package_dir)
    assert set(entries) == EXPECTED_FILES - {MANIFEST_FILE}
    assert entries == {name: sha256(package_dir / name) for name in entries}


def test_archive_holds_the_same_files_with_the_same_bytes(package_dir: Path) -> None:
    archive = archive_path(package_dir)
    assert archive.name == f"{PACKAGE_NAME}.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert set(members) == {PACKAGE_NAME} | {f"{PACKAGE_NAME}/{name}" for name in EXPECTED_FILES}
        assert members[PACKAGE_NAME].isdir()
        for name in EXPECTED_FILES:
            member = members[f"{PACKAGE_NAME}/{name}"]
            assert member.isfile() and member.uid == 0 and member.uname == ""
            digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            assert digest == sha256(package_dir / name), name


def test_metadata_records_versions_config_data_hash_and_metrics(package_dir: Path) -> None:
    metadata = json.loads((package_dir / "qft_metadata.json").read_text(encoding="utf-8"))
    assert metadata["package_name"] == PACKAGE_NAME
    assert metadata["base_model"] == "qwen3-tiny"
    assert metadata["versions"]["torch"] == torch.__version__
    assert metadata["versions"]["transformers"] == transformers.__version__
    assert metadata["versions"]["peft"] == peft.__version__
    assert metadata["versions"]["qft"] == "0.1.0"
    assert metadata["config"] == METADATA["config"]
    assert metadata["data_hash"] == DATA_HASH
    assert metadata["metrics"] == METADATA["metrics"]
    assert metadata["weights"]["files"] == ["model.safetensors"]


def test_model_card_is_chinese_and_english_and_filled_from_metadata(package_dir: Path) -> None:
    card = (package_dir / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage:\n- zh\n- en\n")
    for heading in ("## 中文", "### 训练数据", "### 训练配置", "### 评估指标", "### 预期用途", "### 局限性"):
        assert heading in card
    for heading in ("## English", "### Training data", "### Training configuration", "### Evaluation metrics"):
        assert heading in card
    assert "### Intended use" in card and "### Limitations" in card
    assert card.count(DATA_HASH) == 2
    assert card.count("| `test.term_f1` | 0.5123 |") == 2
    assert card.count("| `lora.r` | 8 |") == 2
    assert card.count("| `examples.train` | 206 |") == 2
    # Reasoning a model wrote is marked as such, in both languages.
    assert "推理来源：专家撰写 240 条，模型生成 12 条（通过质量与答案一致性检查，数据中标为 `model`），模板生成 6 条" in card
    assert "Reasoning: 240 written by experts, 12 written by a model (kept after the quality and" in card
    assert card.index("## 中文") < card.index("## English")
    # qwen3-tiny has random weights: the card says so, in both languages, before the first section.
    assert card.index("替身模型") < card.index(stand_in_note("qwen3-tiny")) < card.index("## 中文")


def test_package_template_renders_the_think_generation_prompt(package_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(package_dir, local_files_only=True)
    messages = [{"role": "system", "content": "你是密码学专家。"}, {"role": "user", "content": "什么是AES？"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(GENERATION_PROMPT_END)
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == generation_prompt_ids(
        "什么是AES？", tokenizer, system="你是密码学专家。"
    )


def test_any_model_template_is_replaced_by_the_think_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "merged"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (model_dir / name).symlink_to(tiny_model_dir / name)
    # Packaging never loads the weights; a stand-in keeps the test fast.
    save_file({"stand_in": torch.zeros(1)}, model_dir / "model.safetensors")
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer_config, "chat_template": PLAIN_TEMPLATE}), encoding="utf-8"
    )
    (model_dir / "chat_template.jinja").write_text(PLAIN_TEMPLATE, encoding="utf-8")
    assert not reply_prompt(AutoTokenizer.from_pretrained(model_dir)).endswith(GENERATION_PROMPT_END)

    package = build_package(model_dir, tmp_path / "out" / "pkg", metadata=METADATA, model_card=CARD)

    tokenizer = AutoTokenizer.from_pretrained(package, local_files_only=True)
    prompt = reply_prompt(tokenizer)
    assert prompt.endswith(GENERATION_PROMPT_END)
    # Without a generation config of its own, the package gets Qwen3-Thinking's recommended sampling.
    generation = json.loads((package / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (0.6, 0.95, 20)
    assert generation["eos_token_id"] == [151645, 151643]
    assert not any(path.is_symlink() for path in package.rglob("*"))


@pytest.mark.slow
def test_quantized_model_package_verifies_and_keeps_the_think_template(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    quantized = quantize(tiny_model_dir, "int8", tmp_path / "int8", QuantConfig())

    package = build_package(quantized.directory, tmp_path / "pkg-int8", metadata=METADATA, model_card=CARD)

    metadata = json.loads((package / "qft_metadata.json").read_text(encoding="utf-8"))
    assert metadata["quantization"] == quantized.metadata()
    report = verify_package(package)
    assert report.quantization == "int8"
    assert 1 <= report.completion_tokens <= VERIFY_MAX_TOKENS
    tokenizer = AutoTokenizer.from_pretrained(package, local_files_only=True)
    prompt = reply_prompt(tokenizer)
    assert prompt.endswith(GENERATION_PROMPT_END)


def test_verify_checks_manifest_template_and_generates(package_dir: Path, tiny_model_dir: Path) -> None:
    report = verify_package(package_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert report.files_checked == len(EXPECTED_FILES) - 1
    assert report.package_name == PACKAGE_NAME
    assert report.prompt_tokens == len(generation_prompt_ids(VERIFY_QUESTION, tokenizer))
    assert 1 <= report.completion_tokens <= VERIFY_MAX_TOKENS
    assert report.quantization is None
    assert report.stand_in == stand_in_note("qwen3-tiny")
    assert report.summary().splitlines()[0] == report.stand_in


def test_verify_reports_a_model_that_repeats_one_token_as_degenerate(tiny_model_dir: Path, tmp_path: Path) -> None:
    """qwen3-tiny with its final norm zeroed: every logit is 0, so greedy decoding picks token 0 ('!') each step."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(tmp_path / "flat")
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "flat")
    shutil.copy(tiny_model_dir / "tokenizer_config.json", tmp_path / "flat")
    card = ModelCardInfo(model_name=PACKAGE_NAME, base_model="some-pretrained-model")
    package = build_package(tmp_path / "flat", tmp_path / "pkg", metadata=METADATA, model_card=card)

    report = verify_package(package)

    assert report.sample_completion == "!" * VERIFY_MAX_TOKENS
    assert report.degenerate == f"'!' repeated {VERIFY_MAX_TOKENS} times"
    assert report.stand_in is None
    summary = report.summary().splitlines()
    assert summary[0].startswith("package ")
    assert summary[4].startswith(f"generation     DEGENERATE ('!' repeated {VERIFY_MAX_TOKENS} times): 16 token(s)")


def test_verify_accepts_the_archive(package_dir: Path) -> None:
    report = verify_package(archive_path(package_dir))
    assert report.source == archive_path(package_dir)
    assert report.files_checked == len(EXPECTED_FILES) - 1


def test_one_changed_byte_fails_verification_naming_the_file(package_copy: Path) -> None:
    weights = package_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(ManifestError, match="changed: model.safetensors") as caught:
        verify_package(package_copy)
    assert (caught.value.changed, caught.value.missing, caught.value.extra) == (("model.safetensors",), (), ())


def test_added_file_fails_verification_naming_the_file(package_copy: Path) -> None:
    (package_copy / "notes.txt").write_text("not part of the package", encoding="utf-8")

    with pytest.raises(ManifestError, match="not in the manifest: notes.txt") as caught:
        verify_package(package_copy)
    assert caught.value.extra == ("notes.txt",)


def test_deleted_file_fails_verification_naming_the_file(package_copy: Path) -> None:
    (package_copy / "tokenizer_config.json").unlink()

    with pytest.raises(ManifestError, match="missing: tokenizer_config.json") as caught:
        verify_package(package_copy)
    assert caught.value.missing == ("tokenizer_config.json",)


def test_link_in_package_fails_verification(package_copy: Path) -> None:
    (package_copy / "config.json").unlink()
    (package_copy / "config.json").symlink_to("/etc/hostname")

    with pytest.raises(ManifestError, match="links: config.json"):
        check_manifest(package_copy)


def test_unpacked_archive_matches_its_manifest(package_dir: Path, tmp_path: Path) -> None:
    unpacked = unpack_package(archive_path(package_dir), tmp_path / "deploy")
    assert unpacked == tmp_path / "deploy" / PACKAGE_NAME
    assert check_manifest(unpacked).files == len(EXPECTED_FILES) - 1
    with pytest.raises(PackageError, match="already exists"):
        unpack_package(archive_path(package_dir), tmp_path / "deploy")


def _crafted_archive(path: Path, evil: tarfile.TarInfo) -> Path:
    """A package archive with one good file, then `evil`."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("pkg/config.json")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"{}"))
        tar.addfile(evil, io.BytesIO(b"owned") if evil.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    member.size = len(b"owned") if kind == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize(
    ("evil", "reason"),
    [
        (_member("pkg/../../evil"), "leaves the target folder"),
        (_member("/tmp/qft-unpack-evil"), "absolute path"),
        (_member("pkg/link", tarfile.SYMTYPE, "../../evil"), "symbolic link"),
        (_member("pkg/hard", tarfile.LNKTYPE, "pkg/config.json"), "hard link"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_unpack_refuses_escaping_members_before_writing_anything(
    tmp_path: Path, evil: tarfile.TarInfo, reason: str
) -> None:
    archive = _crafted_archive(tmp_path / "evil.tar.gz", evil)
    target = tmp_path / "a" / "b"

    with pytest.raises(PackageError, match=reason) as caught:
        unpack_package(archive, target)
    assert repr(evil.name) in str(caught.value)
    assert not target.exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/qft-unpack-evil").exists()


def test_unpack_refuses_archive_without_one_top_folder(tmp_path: Path) -> None:
    archive = _crafted_archive(tmp_path / "two.tar.gz", _member("other/file"))

    with pytest.raises(PackageError, match=r"one top-level folder, found \['other', 'pkg'\]"):
        unpack_package(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_refuses_pickled_checkpoints(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}", encoding="utf-8")
    (model_dir / "model.safetensors").write_bytes(b"")
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")

    with pytest.raises(PackageError, match="pytorch_model.bin: pickled checkpoints are never packaged"):
        build_package(model_dir, tmp_path / "out" / "pkg", metadata=METADATA, model_card=CARD)
    assert list((tmp_path / "out").iterdir()) == []


def test_build_refuses_incomplete_metadata_and_foreign_out_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="lacks data_hash, metrics"):
        build_package(tiny_model_dir, tmp_path / "pkg", metadata={"config": {}}, model_card=CARD)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(PackageError, match="exists and is not a qft package"):
        build_package(tiny_model_dir, tmp_path / "home", metadata=METADATA, model_card=CARD)
    assert (tmp_path / "home" / "precious.txt").read_text(encoding="utf-8") == "keep"


def _qft(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qft")
    parser.add_argument("--config")
    parser.add_argument("--device")
    add_package_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)


def test_cli_verify_prints_the_report_and_fails_on_tampering(
    package_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _qft(["package", "verify", str(package_copy)]) == 0
    assert f"manifest       ok: {len(EXPECTED_FILES) - 1} files" in capsys.readouterr().out

    (package_copy / "README.md").write_text("edited", encoding="utf-8")
    assert _qft(["package", "verify", str(package_copy)]) == 1
    assert "changed: README.md" in capsys.readouterr().err


def test_cli_unpack_prints_the_package_folder(package_dir: Path, tmp_path: Path, capsys) -> None:
    assert _qft(["package", "unpack", str(archive_path(package_dir)), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / PACKAGE_NAME)
