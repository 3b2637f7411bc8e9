"""Fold a trained LoRA adapter into its base model's weights, and prove from the saved files that the merged model
computes the logits of base + adapter."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from qft_core.config import ModelConfig, PathsConfig, QuantConfig
from qft_core.model.chat import generation_prompt_ids
from qft_core.model.registry import ModelSpec, ensure_model_dir, load_model, load_tokenizer, resolve_model, torch_dtype
from qft_core.publish import publishing_folder

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# Questions the merged model and base + adapter must answer with the same logits.
VERIFICATION_QUESTIONS: tuple[str, ...] = (
    "什么是分组密码？",
    "SM2 与 RSA 的安全性分别基于什么困难问题？",
    "请解释 HMAC 为什么能抵抗长度扩展攻击。",
)


class AdapterError(ValueError):
    """An adapter directory that is not a PEFT LoRA adapter saved as safetensors."""


class MergedLogitsError(RuntimeError):
    """The merged model's logits differ from base + adapter beyond the tolerance."""


@dataclass(frozen=True)
class MergeReport:
    """A merged model directory and the evidence that it is base + adapter."""

    out_dir: Path
    base_model: str
    adapter_dir: Path
    dtype: str
    lora_layers: int
    prompts: int
    max_abs_diff: float
    tolerance: float
    weights_bytes: int
    seconds: float

    def to_metadata(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "base_model": self.base_model,
            "adapter_dir": str(self.adapter_dir),
            "dtype": self.dtype,
            "lora_layers": self.lora_layers,
            "verification_prompts": self.prompts,
            "max_abs_logit_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "weights_bytes": self.weights_bytes,
            "seconds": round(self.seconds, 2),
        }


def base_model_spec(base: ModelSpec | str | Path) -> ModelSpec:
    """A base model given as a spec, a registered name or a model directory."""
    if isinstance(base, ModelSpec):
        return base
    name = str(Path(base).resolve()) if Path(base).exists() else str(base)
    return resolve_model(ModelConfig(name=name), PathsConfig())


def merge_tolerance(config: QuantConfig, dtype: torch.dtype) -> float:
    """The logit tolerance of a merge computed in `dtype`: `quant.merge_tolerance` in float32,
    `quant.merge_tolerance_half` in 16 bits, where the merged and the unmerged model round differently."""
    return config.merge_tolerance if dtype == torch.float32 else config.merge_tolerance_half


def weights_bytes(directory: Path) -> int:
    """Bytes of the safetensors weight files in a model directory."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*.safetensors"))


def _check_adapter(adapter_dir: Path) -> None:
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG_FILE}: missing; {adapter_dir} is not a PEFT adapter")
    if not (adapter_dir / ADAPTER_WEIGHTS_FILE).is_file():
        raise AdapterError(
            f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: missing; adapters are loaded from safetensors only "
            "(pickled adapter_model.bin files are refused)"
        )


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]) -> list[torch.Tensor]:
    return [torch.tensor([generation_prompt_ids(question, tokenizer)]) for question in questions]


@torch.no_grad()
def _logits(model: torch.nn.Module, prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # One prompt at a time: no padding, so nothing but the weights can make two models differ.
    device = next(model.parameters()).device
    return [model(input_ids=ids.to(device)).logits[0].float().cpu() for ids in prompts]


def _max_abs_diff(logits: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(logits, reference, strict=True))


def _adapted_model(spec: ModelSpec, adapter_dir: Path, dtype: torch.dtype, device: str) -> PeftModel:
    base = load_model(spec, dtype=dtype, device=device)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).eval()


def _load_merged(merged_dir: Path, dtype: torch.dtype, device: str) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        merged_dir, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
    )
    return model.to(device).eval()


def _check_tolerance(max_abs_diff: float, tolerance: float, merged_dir: Path, adapter_dir: Path) -> None:
    if not max_abs_diff <= tolerance:
        raise MergedLogitsError(
            f"{merged_dir}: logits differ from base + adapter {adapter_dir} by up to {max_abs_diff:.3g} "
            f"(tolerance {tolerance:.3g}); the merged weights are not this adapter folded into this base"
        )


def check_merged_logits(
    merged_dir: Path,
    base: ModelSpec | str | Path,
    adapter_dir: Path,
    *,
    tolerance: float = 1e-3,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    questions: Sequence[str] = VERIFICATION_QUESTIONS,
) -> float:
    """The largest logit difference between the merged model in `merged_dir` and base + adapter (PEFT, unmerged)
    on `questions`; raises `MergedLogitsError` beyond `tolerance`."""
    merged_dir, adapter_dir = Path(merged_dir), Path(adapter_dir)
    _check_adapter(adapter_dir)
    spec = base_model_spec(base)
    torch_type = torch_dtype(dtype, device, ensure_model_dir(spec))
    prompts = _prompt_ids(load_tokenizer(spec), questions)
    adapted = _adapted_model(spec, adapter_dir, torch_type, device)
    reference = _logits(adapted, prompts)
    del adapted
    gc.collect()
    merged = _load_merged(merged_dir, torch_type, device)
    max_abs_diff = _max_abs_diff(_logits(merged, prompts), reference)
    _check_tolerance(max_abs_diff, tolerance, merged_dir, adapter_dir)
    return max_abs_diff


def merge_adapter(
    base: ModelSpec | str | Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    tolerance: float = 1e-3,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    questions: Sequence[str] = VERIFICATION_QUESTIONS,
) -> MergeReport:
    """Merge the LoRA adapter in `adapter_dir` into `base` and write the merged model to `out_dir`.

    `out_dir` gets safetensors weights, config, generation config and the tokenizer with the Qwen3-Thinking-2507
    chat template. Before anything appears there the merged model is reloaded from disk and its logits on
    `questions` are compared with base + adapter (PEFT, unmerged): beyond `tolerance` the merge raises
    `MergedLogitsError` and writes nothing. Merge in float32 (the default) for an exact comparison; a
    bfloat16 merge (the model's own dtype on a GPU) rounds the folded weights and needs a looser tolerance
    (`merge_tolerance`).
    """
    started = time.perf_counter()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    _check_adapter(adapter_dir)
    spec = base_model_spec(base)
    torch_type = torch_dtype(dtype, device, ensure_model_dir(spec))
    tokenizer = load_tokenizer(spec)
    prompts = _prompt_ids(tokenizer, questions)

    adapted = _adapted_model(spec, adapter_dir, torch_type, device)
    reference = _logits(adapted, prompts)
    lora_layers = sum(1 for module in adapted.modules() if isinstance(module, LoraLayer))
    merged = adapted.merge_and_unload()

    with publishing_folder(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Base + adapter and the reloaded merged copy never need to be in memory together (16 GB each for a 4B
        # model in float32).
        del adapted, merged
        gc.collect()
        max_abs_diff = _max_abs_diff(_logits(_load_merged(staging, torch_type, device), prompts), reference)
        _check_tolerance(max_abs_diff, tolerance, out_dir, adapter_dir)
    return MergeReport(
        out_dir=out_dir,
        base_model=spec.name,
        adapter_dir=adapter_dir,
        dtype=str(torch_type).removeprefix("torch."),
        lora_layers=lora_layers,
        prompts=len(prompts),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        weights_bytes=weights_bytes(out_dir),
        seconds=time.perf_counter() - started,
    )
