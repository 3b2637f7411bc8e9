"""A LoRA adapter that changes what the tiny model generates, for evaluation tests."""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model


def save_random_lora_adapter(model: torch.nn.Module, directory: Path) -> Path:
    """A rank-2 LoRA adapter on q/v/o with B drawn large enough to change greedy choices (fresh LoRA is the
    identity), saved the way PEFT saves it."""
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 2.0)
    peft_model.save_pretrained(directory)
    return directory
