"""The ready recipes in configs/: every file validates, the production recipe fits the corpus' longest example
and takes Qwen's sampling from the model, and the rehearsal is that recipe on the random-weight shape model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qft_core.config import REPO_ROOT, DataConfig, ModelConfig, PathsConfig, load_config
from qft_core.data.parse import parse_paths
from qft_core.model.chat import encode_example
from qft_core.model.registry import REGISTRY, load_tokenizer, resolve_model

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
RECIPE = REPO_ROOT / "configs" / "qwen3-4b-thinking.yaml"
REHEARSAL = REPO_ROOT / "configs" / "rehearsal-qwen3-4b-shape.yaml"


def test_the_recipes_are_there():
    assert RECIPE in CONFIGS and REHEARSAL in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_config_validates(path: Path):
    config = load_config(path)
    assert config.eval.thinking_budget < config.eval.max_new_tokens


def test_the_recipe_trains_qwen3_4b_thinking_from_a_local_folder_on_the_gpu_when_there_is_one():
    config = load_config(RECIPE)
    spec = resolve_model(config.model, config.paths)
    assert spec.name == "qwen3-4b-thinking-2507"
    assert spec.local_dir == REPO_ROOT / "models" / "Qwen3-4B-Thinking-2507"
    assert (config.model.device, config.model.dtype) == ("auto", "auto")
    # Sampling left to the model's generation_config.json; budgets far beyond the 96 tokens of the CPU default.
    assert (config.eval.temperature, config.eval.top_p, config.eval.top_k) == (None, None, None)
    assert config.eval.thinking_budget >= 8192


def test_the_recipe_length_fits_the_longest_corpus_example_in_the_chat_format(tmp_path: Path):
    config = load_config(RECIPE)
    examples = parse_paths([config.paths.resolve(config.paths.corpus_dir)], DataConfig()).examples
    # qwen3-tiny carries the offline Qwen3 tokenizer and chat template, the same as the real model's.
    tokenizer = load_tokenizer(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig(model_cache_dir=str(tmp_path))))
    longest = max(len(encode_example(example, tokenizer).input_ids) for example in examples)
    assert len(examples) >= 200
    assert longest <= config.model.max_length


def test_the_rehearsal_is_the_recipe_on_the_random_weight_shape_model():
    recipe, rehearsal = load_config(RECIPE), load_config(REHEARSAL)
    assert rehearsal.model.name == "qwen3-4b-shape" and REGISTRY["qwen3-4b-shape"].random_weights
    assert rehearsal.model.device == "cuda"
    assert rehearsal.training.max_steps >= 50
    assert rehearsal.model.max_length == recipe.model.max_length
    assert rehearsal.lora == recipe.lora
    same = ("global_batch_size", "learning_rate", "warmup_ratio", "schedule", "packing", "weight_decay")
    assert {key: getattr(rehearsal.training, key) for key in same} == {key: getattr(recipe.training, key) for key in same}
    assert rehearsal.eval.max_examples is recipe.eval.max_examples is None  # the whole test split
