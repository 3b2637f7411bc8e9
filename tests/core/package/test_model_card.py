"""The model card reports the LoRA the adapter was trained with (the plan's, read back from the adapter's own
config), not the configured one the planner may have shrunk."""

import json
from pathlib import Path

import pytest
from peft import LoraConfig as PeftLoraConfig

from qft_core.config import QftConfig
from qft_core.package.model_card import AdapterConfigError, ModelCardInfo, adapter_lora, render_model_card


def _trained_adapter(folder: Path) -> Path:
    """The adapter_config.json PEFT writes for an adapter the planner shrank from r=8 on seven projections."""
    PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["v_proj", "q_proj"]).save_pretrained(folder)
    return folder


def test_adapter_lora_is_read_from_the_adapters_own_config(tmp_path: Path) -> None:
    assert adapter_lora(_trained_adapter(tmp_path)) == {
        "r": 4,
        "alpha": 8,
        "dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
    }


def test_card_shows_the_trained_lora_not_the_configured_one(tmp_path: Path) -> None:
    config = QftConfig().model_dump(mode="json")
    assert config["lora"]["r"] == 8
    metadata = {"config": config, "lora": adapter_lora(_trained_adapter(tmp_path))}

    card = render_model_card(ModelCardInfo(model_name="pkg", base_model="qwen3-tiny"), metadata)

    assert card.count("| `lora.r` | 4 |") == 2
    assert card.count("| `lora.alpha` | 8 |") == 2
    assert card.count("| `lora.target_modules` | q_proj, v_proj |") == 2
    assert "| `lora.r` | 8 |" not in card
    # The rest of the training configuration still comes from the configuration.
    assert card.count(f"| `training.learning_rate` | {config['training']['learning_rate']:.4g} |") == 2


def test_an_adapter_config_without_lora_settings_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}), encoding="utf-8")
    with pytest.raises(AdapterConfigError, match=r"adapter_config.json: no lora_alpha, lora_dropout, target_modules"):
        adapter_lora(tmp_path)


def test_a_folder_without_an_adapter_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigError, match=r"adapter_config.json: cannot read"):
        adapter_lora(tmp_path)
