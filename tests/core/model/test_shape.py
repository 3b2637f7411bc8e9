"""The model shape: Qwen3-4B's parameter count and LoRA size by hand, and a shape read from a transformers config
against the model it builds."""

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.model.shape import QWEN3_4B, ModelShape
from tests.core.train.memory_arithmetic import ALL_TARGETS, QWEN3_4B_LORA_R16, QWEN3_4B_PARAMS, TINY


def test_qwen3_4b_parameter_count_matches_hand_arithmetic():
    assert QWEN3_4B.params == QWEN3_4B_PARAMS == 4_022_468_096


def test_qwen3_4b_lora_r16_on_all_projections():
    assert QWEN3_4B.lora_params(16, ALL_TARGETS) == QWEN3_4B_LORA_R16 == 33_030_144


def test_shape_from_hf_config_counts_what_the_model_holds_and_lora_matches_peft():
    hf_config = Qwen3Config(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(hf_config)
    shape = ModelShape.from_hf_config(hf_config)

    assert shape == TINY
    assert shape.params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, PeftLoraConfig(r=8, target_modules=ALL_TARGETS))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # 2 layers × 8 × [(128+128) + 2·(128+64) + (128+128) + 2·(128+256) + (256+128)] = 16 × 2048
    assert shape.lora_params(8, ALL_TARGETS) == trainable == 32_768
