"""Merging a LoRA adapter: the saved merged model computes base + adapter's logits, and a merge that is not this
adapter folded into this base is refused and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.chat import generation_prompt_ids
from qft_core.model.registry import ModelSpec, ensure_model_dir, load_model, resolve_model
from qft_core.model.tokenizer import qwen3_thinking_chat_template
from qft_core.package.merge import AdapterError, MergedLogitsError, merge_adapter, check_merged_logits

# Not among the merge's own verification questions: the equality must hold for any input.
HELD_OUT_QUESTION = "ZUC 算法的密钥长度是多少？"


@pytest.fixture(scope="module")
def tiny_spec() -> ModelSpec:
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig())
    ensure_model_dir(spec)
    return spec


def make_adapter(spec: ModelSpec, directory: Path, seed: int) -> Path:
    """A LoRA adapter on qwen3-tiny whose B matrices are random (a fresh adapter's are zero and change nothing)."""
    model = get_peft_model(
        load_model(spec, dtype="float32"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapter_dir(tiny_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_spec, tmp_path_factory.mktemp("adapter"), seed=1)


@pytest.fixture(scope="module")
def other_adapter_dir(tiny_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_spec, tmp_path_factory.mktemp("other-adapter"), seed=2)


@pytest.fixture(scope="module")
def merged(tiny_spec: ModelSpec, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return merge_adapter(tiny_spec, adapter_dir, tmp_path_factory.mktemp("merge") / "merged", tolerance=1e-4)


@torch.no_grad()
def held_out_logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = torch.tensor([generation_prompt_ids(HELD_OUT_QUESTION, tokenizer)])
    return model(input_ids=ids).logits[0]


def test_merged_model_reproduces_base_plus_adapter_logits_within_1e_4(merged, tiny_spec, adapter_dir):
    assert merged.max_abs_diff <= 1e-4
    assert merged.lora_layers == 2 * 3  # two decoder layers, three adapted projections each
    tokenizer = AutoTokenizer.from_pretrained(merged.out_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(merged.out_dir, dtype=torch.float32).eval()
    base = load_model(tiny_spec, dtype="float32").eval()
    base_logits = held_out_logits(base, tokenizer)
    adapted_logits = held_out_logits(PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer)
    merged_logits = held_out_logits(reloaded, tokenizer)
    assert (merged_logits - adapted_logits).abs().max().item() <= 1e-4
    # The adapter changes the model, so the equality above is not the base agreeing with itself.
    assert (merged_logits - base_logits).abs().max().item() > 1e-2


def test_merged_directory_holds_safetensors_tokenizer_template_and_generation_config(merged, tiny_spec):
    names = {path.name for path in merged.out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not any(name.startswith("adapter") for name in names)
    assert AutoTokenizer.from_pretrained(merged.out_dir).chat_template == qwen3_thinking_chat_template()
    generation = json.loads((merged.out_dir / "generation_config.json").read_text(encoding="utf-8"))
    base_generation = json.loads((tiny_spec.local_dir / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == base_generation["eos_token_id"]
    assert merged.weights_bytes == (merged.out_dir / "model.safetensors").stat().st_size
    assert merged.to_metadata()["max_abs_logit_diff"] == merged.max_abs_diff


def test_verification_accepts_the_merged_adapter_and_rejects_a_different_one(
    merged, tiny_spec, adapter_dir, other_adapter_dir
):
    assert check_merged_logits(merged.out_dir, tiny_spec, adapter_dir, tolerance=1e-4) <= 1e-4
    with pytest.raises(MergedLogitsError, match=str(other_adapter_dir)):
        check_merged_logits(merged.out_dir, tiny_spec, other_adapter_dir, tolerance=1e-4)


def test_a_merge_that_drops_the_adapter_fails_verification_and_writes_nothing(
    tiny_spec, adapter_dir, tmp_path, monkeypatch
):
    # `unload` removes the LoRA layers without folding them in: the saved model is the bare base.
    monkeypatch.setattr(LoraModel, "merge_and_unload", LoraModel.unload)
    out_dir = tmp_path / "merged"
    with pytest.raises(MergedLogitsError, match="not this adapter folded into this base"):
        merge_adapter(tiny_spec, adapter_dir, out_dir, tolerance=1e-4)
    assert list(tmp_path.iterdir()) == []


def test_adapter_without_safetensors_weights_is_refused(tiny_spec, adapter_dir, tmp_path):
    pickled = tmp_path / "adapter"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_bytes((adapter_dir / "adapter_config.json").read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="adapter_model.safetensors: missing"):
        merge_adapter(tiny_spec, pickled, tmp_path / "merged")
    with pytest.raises(AdapterError, match="adapter_config.json: missing"):
        merge_adapter(tiny_spec, tmp_path / "nowhere", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
