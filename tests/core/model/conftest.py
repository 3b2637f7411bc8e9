"""Shared fixtures for the model tests: one model cache, one tokenizer and one qwen3-tiny per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.registry import ModelSpec, ensure_model_dir, resolve_model
from qft_core.model.tokenizer import load_qwen3_tokenizer


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def paths_config(model_cache_dir: Path) -> PathsConfig:
    return PathsConfig(model_cache_dir=str(model_cache_dir))


@pytest.fixture(scope="session")
def qwen3_tokenizer(model_cache_dir: Path):
    return load_qwen3_tokenizer(model_cache_dir)


@pytest.fixture(scope="session")
def tiny_spec(paths_config: PathsConfig) -> ModelSpec:
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), paths_config)
    ensure_model_dir(spec)
    return spec
