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
    convert_gguf,
    ensure_model_dir,
    load_model,
    load_tokenizer,
    packaged_gguf_file,
    portable_name,
    resolve_model,
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


GGUF_MODELS = [("smollm2-135m", "llama", "smollm2"), ("gemma3-270m", "gemma3_text", "gemma3")]


@pytest.mark.parametrize(("name", "family", "extra"), GGUF_MODELS)
def test_gguf_model_without_its_package_says_how_to_install_it(name, family, extra, paths_config, tmp_path):
    if packaged_gguf_file(name, tmp_path) is not None:
        pytest.skip(f"the package of {name} is installed")
    spec = resolve_model(ModelConfig(name=name), paths_config)
    assert (spec.source, spec.family, spec.thinking_format) == ("gguf", family, False)
    with pytest.raises(ModelNotAvailableError, match=f"uv sync --extra {extra}"):
        ensure_model_dir(spec)
    assert not spec.local_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "family", "extra"), GGUF_MODELS)
def test_gguf_model_converts_once_to_a_safetensors_directory(name, family, extra, tmp_path):
    pytest.importorskip("gguf")
    if packaged_gguf_file(name, tmp_path) is None:
        pytest.skip(f"the package of {name} is not installed (uv sync --extra {extra})")
    paths = PathsConfig(model_cache_dir=str(tmp_path / "cache"))
    spec = resolve_model(ModelConfig(name=name), paths)
    directory = ensure_model_dir(spec)
    assert any(directory.glob("*.safetensors"))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == family and "quantization_config" not in config
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "path", "recorded"),
    [
        ("qwen3-4b-thinking-2507", None, "Qwen/Qwen3-4B-Thinking-2507"),
        ("qwen3-4b-thinking-2507", "/models/qwen3-4b", "Qwen/Qwen3-4B-Thinking-2507"),
        ("Qwen/Qwen3-4B-Thinking-2507", None, "Qwen/Qwen3-4B-Thinking-2507"),
        ("qwen3-tiny", None, "qwen3-tiny"),
        ("models/my-qwen", None, "models/my-qwen"),
        ("my-qwen", "../weights/my-qwen", "../weights/my-qwen"),
    ],
)
def test_portable_name_is_the_hub_id_or_the_path_as_given(name, path, recorded):
    assert portable_name(ModelConfig(name=name, path=path)) == recorded


# A Gemma 3 vocabulary small enough to write by hand: control tokens, then sentencepiece pieces.
TINY_GEMMA_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "\n", "▁", "密", "码", "密码", "加", "密加", "加密", "a", "b",
                     "ab", "▁ab"]


def write_tiny_gemma3_gguf(path: Path) -> dict[str, torch.Tensor]:
    """A one-layer Gemma 3 as an F32 GGUF laid out as llama.cpp writes one (norm weights stored as 1 + w);
    returns the Hugging Face state dict it was made from."""
    gguf = pytest.importorskip("gguf")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(TINY_GEMMA_TOKENS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128, sliding_window=64,
        query_pre_attn_scalar=16, layer_types=["full_attention"], rope_theta=1_000_000.0,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.normal_(0.0, 0.1)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(config.sliding_window)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TINY_GEMMA_TOKENS)
    writer.add_token_scores([0.0] * len(TINY_GEMMA_TOKENS))
    writer.add_token_types([gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL] * (len(TINY_GEMMA_TOKENS) - 4))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    for name, tensor in state.items():
        stored = tensor + 1.0 if name.endswith("norm.weight") else tensor
        writer.add_tensor(names.get_name(name.removesuffix(".weight")) + ".weight", stored.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def test_gemma3_gguf_converts_to_the_same_weights_and_a_tokenizer_that_opens_with_bos(tmp_path):
    state = write_tiny_gemma3_gguf(tmp_path / "tiny-gemma3.gguf")

    convert_gguf(tmp_path / "tiny-gemma3.gguf", tmp_path / "converted")

    converted = load_file(tmp_path / "converted" / "model.safetensors")
    assert sorted(converted) == sorted(state)
    for name, tensor in state.items():
        torch.testing.assert_close(converted[name], tensor, rtol=0, atol=1e-6, msg=name)
    config = json.loads((tmp_path / "converted" / "config.json").read_text(encoding="utf-8"))
    assert (config["model_type"], config["num_hidden_layers"], config["head_dim"]) == ("gemma3_text", 1, 16)
    assert "quantization_config" not in config
    spec = resolve_model(ModelConfig(name="gemma3-270m", path=str(tmp_path / "converted")), PathsConfig())
    tokenizer = load_tokenizer(spec)
    assert tokenizer("密码加密", add_special_tokens=False)["input_ids"] == [8, 11]
    # Gemma reads every document after <bos>: the chat format opens with it.
    example = ThinkingExample(
        id="x", question="ab", answer="密码", source_file="c.md", source_line=1,
        thinking=[ThinkingStructure(text="加密")],
    )
    assert encode_example(example, tokenizer).input_ids[0] == 2


def test_gguf_conversion_can_take_the_tokenizer_of_an_earlier_conversion(tmp_path):
    write_tiny_gemma3_gguf(tmp_path / "tiny-gemma3.gguf")
    convert_gguf(tmp_path / "tiny-gemma3.gguf", tmp_path / "here")
    # Mark the earlier conversion's tokenizer, so the test tells it from one rebuilt from the GGUF metadata.
    config_file = tmp_path / "here" / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_max_length": 77}))

    convert_gguf(tmp_path / "tiny-gemma3.gguf", tmp_path / "there", tokenizer_dir=tmp_path / "here")

    weights = [(tmp_path / folder / "model.safetensors").read_bytes() for folder in ("here", "there")]
    assert weights[0] == weights[1]
    assert json.loads((tmp_path / "there" / "tokenizer_config.json").read_text())["model_max_length"] == 77


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
