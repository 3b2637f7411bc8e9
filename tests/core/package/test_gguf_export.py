"""GGUF export: llama.cpp's names and metadata keys as gguf-py reads them, the files read back by transformers' GGUF
loader against the model they came from, the Ollama Modelfile, the one-line errors and the package's gguf/ folder.

Reading a GGUF of the full Qwen3 vocabulary (151,936 tokens, 294,166 merges) takes gguf-py's reader tens of seconds
on two busy cores, and transformers reads the file three times per load: the read-back tests are marked slow."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest

from qft_core.cli import main as qft
from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.model.tokenizer import qwen3_thinking_chat_template
from qft_core.package.bundle import build_package
from qft_core.package.gguf import (
    GgufExportError,
    architecture_refusal,
    export_gguf,
    gguf_file_name,
    ollama_modelfile,
    qwen3_gguf_name,
)
from qft_core.package.gguf_verify import RELATIVE_TOLERANCE, verify_gguf
from qft_core.package.manifest import check_manifest
from qft_core.package.model_card import ModelCardInfo

NAME = "qft-test"
# qwen3-tiny: 2 layers of 11 tensors, the embedding and the final norm; the tied lm_head is not written.
TENSORS = 2 * 11 + 2
QWEN3_VOCAB = 151_936
QWEN3_TOKENS = 151_669
QWEN3_MERGES = 294_166


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))


@pytest.fixture(scope="module")
def gguf_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf")
    for gguf_type in ("f16", "q8_0"):
        written = export_gguf(tiny_model_dir, out / gguf_file_name(NAME, gguf_type), gguf_type, model_name=NAME)
        assert written.tensors == TENSORS
    return out


@pytest.fixture(scope="module")
def q8_reader(gguf_dir: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(gguf_dir / "qft-test-Q8_0.gguf")


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_qwen3_tensors_take_llama_cpp_names() -> None:
    assert qwen3_gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert qwen3_gguf_name("model.layers.17.self_attn.k_norm.weight") == "blk.17.attn_k_norm.weight"
    assert qwen3_gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert qwen3_gguf_name("model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    with pytest.raises(GgufExportError, match="'model.layers.0.self_attn.q_proj.bias'"):
        qwen3_gguf_name("model.layers.0.self_attn.q_proj.bias")


def test_files_are_named_by_model_and_type(gguf_dir: Path) -> None:
    assert sorted(path.name for path in gguf_dir.iterdir()) == ["qft-test-F16.gguf", "qft-test-Q8_0.gguf"]


def test_metadata_carries_architecture_for_llama_cpp(q8_reader: gguf.GGUFReader) -> None:
    assert field(q8_reader, "general.architecture") == "qwen3"
    assert field(q8_reader, "general.name") == NAME
    assert field(q8_reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    expected = {
        "context_length": 4096, "embedding_length": 128, "block_count": 2, "feed_forward_length": 384,
        "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
        "attention.value_length": 32,
    }
    assert {key: field(q8_reader, f"qwen3.{key}") for key in expected} == expected
    assert field(q8_reader, "qwen3.rope.freq_base") == 10_000.0
    assert field(q8_reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)


def test_metadata_carries_the_bpe_tokenizer_and_the_thinking_template(q8_reader: gguf.GGUFReader) -> None:
    assert field(q8_reader, "tokenizer.ggml.model") == "gpt2"
    assert field(q8_reader, "tokenizer.ggml.pre") == "qwen2"
    tokens = field(q8_reader, "tokenizer.ggml.tokens")
    types = field(q8_reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == QWEN3_VOCAB
    assert [tokens[i] for i in (0, 151_643, 151_645, 151_668)] == ["!", "<|endoftext|>", "<|im_end|>", "</think>"]
    assert (types[0], types[151_644], types[151_667]) == (
        gguf.TokenType.NORMAL, gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED
    )
    # The embedding's rows past the tokenizer's last id are padding.
    assert types[QWEN3_TOKENS:] == [gguf.TokenType.UNUSED] * (QWEN3_VOCAB - QWEN3_TOKENS)
    merges = field(q8_reader, "tokenizer.ggml.merges")
    assert len(merges) == QWEN3_MERGES and merges[0] == "Ġ Ġ"
    assert field(q8_reader, "tokenizer.ggml.eos_token_id") == 151_645
    assert field(q8_reader, "tokenizer.ggml.padding_token_id") == 151_643
    assert field(q8_reader, "tokenizer.ggml.add_bos_token") is False
    assert field(q8_reader, "tokenizer.chat_template") == qwen3_thinking_chat_template()


def test_q8_0_quantizes_matrices_and_keeps_norms_f32(q8_reader: gguf.GGUFReader) -> None:
    types = {tensor.name: tensor.tensor_type for tensor in q8_reader.tensors}
    assert len(types) == TENSORS and "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == types["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == types["blk.0.attn_q_norm.weight"] == gguf.GGMLQuantizationType.F32
    # ggml lists dimensions innermost first: attn_k maps 128 inputs to 2 heads x 32.
    shapes = {tensor.name: tensor.shape.tolist() for tensor in q8_reader.tensors}
    assert shapes["blk.0.attn_k.weight"] == [128, 64]


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_transformers_reads_back_the_merged_models_logits_and_greedy_tokens(
    gguf_dir: Path, tiny_model_dir: Path, gguf_type: str
) -> None:
    check = verify_gguf(gguf_dir / gguf_file_name(NAME, gguf_type), tiny_model_dir, gguf_type)
    assert check.same_prompt_ids and check.chat_template_kept
    assert check.max_abs_logit_diff <= RELATIVE_TOLERANCE[gguf_type] * check.max_abs_reference_logit
    assert check.greedy_steps == 3 * 8
    # f16 chooses every greedy token the float32 model chooses; q8_0 may differ only where the random-weight
    # model's two best logits lie within twice the rounding error.
    if gguf_type == "f16":
        assert check.same_greedy_tokens
    assert check.passed, check


def test_modelfile_names_the_file_and_opens_the_reply_in_think(tiny_model_dir: Path) -> None:
    text = ollama_modelfile("qft-test-Q8_0.gguf", tiny_model_dir)
    assert text.startswith("FROM ./qft-test-Q8_0.gguf\n")
    assert '}}<|im_start|>assistant\n<think>\n"""\n' in text
    assert '{{ $m.Content }}<|im_end|>' in text
    parameters = [line for line in text.splitlines() if line.startswith("PARAMETER")]
    # qwen3-tiny's generation config does not sample: greedy.
    assert parameters == [
        'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"', "PARAMETER num_ctx 4096",
        "PARAMETER temperature 0.0",
    ]


def _model_copy(tiny_model_dir: Path, target: Path, leave_out: str = "") -> Path:
    target.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.name != leave_out:
            (target / path.name).symlink_to(path)
    return target


def test_unsupported_architecture_is_a_one_line_error_naming_config_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _model_copy(tiny_model_dir, tmp_path / "llama", leave_out="config.json")
    config = (tiny_model_dir / "config.json").read_text(encoding="utf-8").replace('"qwen3"', '"llama"')
    (model / "config.json").write_text(config, encoding="utf-8")
    with pytest.raises(GgufExportError) as error:
        export_gguf(model, tmp_path / "out.gguf", "q8_0", model_name=NAME)
    assert str(error.value) == (
        f"{model / 'config.json'}: model_type 'llama' has no GGUF mapping in qft (supported: qwen3)"
    )
    assert not any((tmp_path).glob("*.gguf*"))
    assert architecture_refusal(model) == str(error.value)
    assert architecture_refusal(tiny_model_dir) is None


def test_qft_package_gguf_on_an_unsupported_model_is_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = _model_copy(tiny_model_dir, tmp_path / "gemma", leave_out="config.json")
    config = (tiny_model_dir / "config.json").read_text(encoding="utf-8").replace('"qwen3"', '"gemma3_text"')
    (model / "config.json").write_text(config, encoding="utf-8")

    assert qft(["package", "gguf", str(model), "--out", str(tmp_path / "out"), "--no-verify"]) == 1

    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"qft package: {model / 'config.json'}: model_type 'gemma3_text' has no GGUF mapping in qft (supported: qwen3)"
    )
    assert captured.out == ""


def test_missing_tokenizer_is_a_one_line_error_and_leaves_no_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _model_copy(tiny_model_dir, tmp_path / "no-tokenizer", leave_out="tokenizer.json")
    with pytest.raises(GgufExportError) as error:
        export_gguf(model, tmp_path / "out" / "m.gguf", "f16", model_name=NAME)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{model / 'tokenizer.json'}: missing")
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_type_is_refused_with_the_choices(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GgufExportError, match=r"GGUF type 'q4_k_m' is not exported \(choose from f16, bf16, q8_0\)"):
        export_gguf(tiny_model_dir, tmp_path / "m.gguf", "q4_k_m", model_name=NAME)


def test_package_carries_the_gguf_folder_under_its_manifest(
    gguf_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "gguf"
    folder.mkdir()
    shutil.copy(gguf_dir / "qft-test-Q8_0.gguf", folder)
    (folder / "qft-test-Q8_0.Modelfile").write_text(ollama_modelfile("qft-test-Q8_0.gguf", tiny_model_dir))
    metadata = {"config": {}, "data_hash": "sha256:" + "0" * 64, "metrics": {}}
    package = build_package(
        tiny_model_dir, tmp_path / NAME, metadata=metadata,
        model_card=ModelCardInfo(model_name=NAME, base_model="qwen3-tiny"), extra_folders={"gguf": folder},
    )
    digests = check_manifest(package).digests
    assert {"gguf/qft-test-Q8_0.gguf", "gguf/qft-test-Q8_0.Modelfile"} <= set(digests)
