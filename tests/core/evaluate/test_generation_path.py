"""The generation path's choice: a static cache with compiled decoding only where the device compiles and the
model supports a static cache, every fallback with its reason."""

from __future__ import annotations

import torch

from qft_core.config import ModelConfig, PathsConfig
from qft_core.evaluate.generation_path import (
    DYNAMIC,
    STATIC,
    GenerationPath,
    choose_generation_path,
    generation_path_for,
)
from qft_core.model.registry import load_model, resolve_model


def test_a_device_that_compiles_gets_a_static_cache_and_compiled_decoding() -> None:
    path = choose_generation_path(compile_unavailable=None, static_cache_supported=True)
    assert (path.cache, path.compiled, path.fallbacks) == (STATIC, True, ())
    assert path.as_metadata() == {
        "path": "static cache, compiled decoding", "cache": STATIC, "compiled": True, "fallbacks": []
    }


def test_without_compiled_decoding_the_plain_path_runs_and_says_why() -> None:
    path = choose_generation_path(compile_unavailable="no Triton for this GPU", static_cache_supported=True)
    assert (path.cache, path.compiled) == (DYNAMIC, False)
    (reason,) = path.fallbacks
    assert "no Triton for this GPU" in reason and reason.startswith("cache: dynamic and decoding eager")


def test_a_model_without_static_cache_support_keeps_the_dynamic_cache() -> None:
    path = choose_generation_path(compile_unavailable=None, static_cache_supported=False)
    assert (path.cache, path.compiled) == (DYNAMIC, False)
    assert path.fallbacks == ("cache: dynamic, since this model class does not support a static cache",)


def test_a_model_on_the_cpu_gets_the_plain_path_with_the_cpu_reason(tmp_path) -> None:
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig(model_cache_dir=str(tmp_path)))
    path = generation_path_for(load_model(spec, dtype="float32"))
    assert (path.cache, path.compiled) == (DYNAMIC, False)
    (reason,) = path.fallbacks
    assert "torch.compile is used on CUDA only (on cpu" in reason
    assert path.name == GenerationPath.plain().name == "dynamic cache, eager decoding"


def test_the_plain_path_makes_no_cache_and_the_static_path_one_of_the_asked_length(tmp_path) -> None:
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig(model_cache_dir=str(tmp_path)))
    model = load_model(spec, dtype="float32")
    assert GenerationPath.plain().new_cache(model, 40) is None
    cache = GenerationPath(cache=STATIC).new_cache(model, 40)
    keys = torch.ones((2, model.config.num_key_value_heads, 3, model.config.head_dim))
    cache.update(keys, keys, layer_idx=0)
    assert [layer.max_cache_len for layer in cache.layers] == [40] * model.config.num_hidden_layers
    assert cache.layers[0].keys.shape == (2, model.config.num_key_value_heads, 40, model.config.head_dim)
    assert int(cache.get_seq_length()) == 3


def test_compiled_decoding_is_built_with_eager_rounding_and_the_setting_is_restored() -> None:
    import torch._inductor.config as inductor

    before = inductor.emulate_precision_casts
    with GenerationPath(cache=STATIC, compiled=True).decoding_context():
        assert inductor.emulate_precision_casts is True
    with GenerationPath.plain().decoding_context():
        assert inductor.emulate_precision_casts == before
    assert inductor.emulate_precision_casts == before
