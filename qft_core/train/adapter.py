"""The LoRA adapter: put onto the base model with PEFT, gathered from whatever sharding training used, and
written as a PEFT adapter folder (`PeftModel.from_pretrained` loads it)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from qft_core.model.peft_files import ADAPTER_WEIGHTS
from qft_core.model.registry import portable_name
from qft_core.train.attention import SDPA
from qft_core.train.job import TrainingJob
from qft_core.train.layer_checkpointing import checkpoint_first_layers
from qft_core.train.parallel import full_tensor


class AdapterLoadError(RuntimeError):
    """Saved adapter weights that do not fit the model's adapter; the message names the file and keys."""


def build_lora_model(job: TrainingJob, dtype: torch.dtype, device: torch.device, attention: str = SDPA) -> nn.Module:
    """The base model in `dtype` with fresh LoRA adapters (the plan's rank and targets) on `device`, attending
    with the transformers implementation `attention`, its first `plan.checkpoint_layers` decoder layers
    checkpointed.

    LoRA's A matrices are drawn from torch's global generator: seed it identically on every rank first.
    """
    model = AutoModelForCausalLM.from_pretrained(
        job.model_dir,
        dtype=dtype,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=job.model.trust_remote_code,
        attn_implementation=attention,
    )
    model.config.use_cache = False
    checkpoint_first_layers(model.get_decoder().layers, job.plan.checkpoint_layers)
    lora = PeftLoraConfig(
        r=job.plan.lora.r,
        lora_alpha=job.plan.lora.alpha,
        lora_dropout=job.plan.lora.dropout,
        target_modules=list(job.plan.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    # PEFT would record job.model_dir, this machine's folder; tools elsewhere look the base up by this name.
    peft_model.peft_config["default"].base_model_name_or_path = portable_name(job.model)
    return peft_model.to(device)


def adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights under PEFT's saved names, as whole CPU tensors (a collective under FSDP2)."""
    full = {
        name: full_tensor(parameter).detach().to("cpu", copy=True).contiguous()
        for name, parameter in peft_model.named_parameters()
        if parameter.requires_grad
    }
    # qft never resizes the vocabulary, so no copy of the base embeddings belongs in the adapter; PEFT's default
    # ("auto") would ask the Hugging Face Hub about the base model (named by hub id) at every checkpoint.
    return get_peft_model_state_dict(peft_model, state_dict=full, save_embedding_layers=False)


def save_adapter(peft_model: nn.Module, weights: dict[str, torch.Tensor], directory: Path) -> None:
    """Write adapter_model.safetensors and adapter_config.json into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(str(directory))


def load_adapter_weights(peft_model: nn.Module, directory: Path) -> None:
    """Put saved adapter weights into an unwrapped PEFT model (before DDP or FSDP2 wraps it)."""
    path = directory / ADAPTER_WEIGHTS
    result = set_peft_model_state_dict(peft_model, load_file(str(path)))
    if result.unexpected_keys:
        raise AdapterLoadError(f"{path}: weights the model has no adapter for: {sorted(result.unexpected_keys)[:5]}")
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing:
        raise AdapterLoadError(f"{path}: adapter weights missing: {sorted(missing)[:5]}")
