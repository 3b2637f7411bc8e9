import pytest
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.config import QftConfig
from qft_core.train.hardware import GIB, GpuInfo, HardwareProfile
from qft_core.train.plan import (
    QWEN3_4B,
    MemorySetting,
    ModelShape,
    PlanError,
    layer_activation_bytes_per_token,
    plan_training,
)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Hand arithmetic for Qwen3-4B (h 2560, 36 layers, 32 heads × 128 = q 4096, 8 KV heads × 128 = kv 1024,
# intermediate 9728, vocab 151,936, tied) in bf16 (2 bytes) at r=16 on all 7 projections, dropout 0.05.
QWEN3_4B_PARAMS = (
    151_936 * 2560  # tied embedding: 388,956,160
    + 36 * (2 * 2560 * 4096 + 2 * 2560 * 1024 + 2 * 128 + 3 * 2560 * 9728 + 2 * 2560)  # 36 × 100,930,816
    + 2560  # final norm
)
# r·(in+out): q 16·6656 + k 16·3584 + v 16·3584 + o 16·6656 + gate/up/down 3 · 16·12288 = 917,504 per layer
QWEN3_4B_LORA_R16 = 36 * (106_496 + 57_344 + 57_344 + 106_496 + 196_608 + 196_608 + 196_608)
# Per token per layer: 2·(4·2560 + 4·4096 + 3·1024 + 4·9728) + 4·32 = 137,344 for the layer itself, plus
# each LoRA branch's fp32 input copy (4 bytes) and dropout mask (1 byte) over the in-features
# (5·2560 + 4096 + 9728 = 26,624 → 133,120) and its fp32 r-wide lora_A output (7 · 16 · 4 = 448).
LAYER_BYTES_PER_TOKEN = 137_344 + 133_120 + 448
WEIGHTS = 4_022_468_096 * 2
LORA_STATES = 33_030_144 * 16  # fp32 weight 4 + fp32 grad 4 + AdamW moments 8
# one 1024-token loss chunk: fp32 logits, softmax and scaled gradient (3 · 4) + the gradient in bf16 (2)
LOGITS = 1024 * 151_936 * 14
FIXED = WEIGHTS + LORA_STATES + LOGITS  # 10,751,572,992
FINAL_NORM = 2 * 2 * 2560
ROW_1024 = 1024 * (36 * LAYER_BYTES_PER_TOKEN + FINAL_NORM) + 1024 * 1024 * 2  # + packing mask
ROW_1024_CHECKPOINTED = 1024 * (36 * 2 * 2560 + FINAL_NORM) + 1024 * 1024 * 2  # layer inputs only


def gpu_profile(count: int, memory_gib: float, capability: str = "9.0") -> HardwareProfile:
    gpus = [GpuInfo(index=i, name="fake", memory_gib=memory_gib, compute_capability=capability) for i in range(count)]
    return HardwareProfile(
        hostname="fake",
        gpus=gpus,
        physical_cores=32,
        logical_cores=64,
        ram_gib=256,
        torch_version="2.5",
        bf16_supported=capability >= "8.0",
    )


def cpu_profile(ram_gib: float = 24) -> HardwareProfile:
    return HardwareProfile(hostname="cpu", physical_cores=2, logical_cores=2, ram_gib=ram_gib, torch_version="2.5")


def config(**sections) -> QftConfig:
    """The hand arithmetic assumes r=16 on all projections, dropout 0.05, 1024 tokens, 1024-token loss chunks."""
    sections["lora"] = {"r": 16, "dropout": 0.05, "target_modules": ALL_TARGETS} | sections.get("lora", {})
    sections["training"] = {"loss_chunk_tokens": 1024} | sections.get("training", {})
    sections["model"] = {"max_length": 1024} | sections.get("model", {})
    return QftConfig.model_validate(sections)


def budget(memory_gib: float) -> int:
    return int(int(memory_gib * GIB) * 0.85)


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

    assert shape.params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, PeftLoraConfig(r=8, target_modules=ALL_TARGETS))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # 2 layers × 8 × [(128+128) + 2·(128+64) + (128+128) + 2·(128+256) + (256+128)] = 16 × 2048
    assert shape.lora_params(8, ALL_TARGETS) == trainable == 32_768


def test_layer_activation_bytes_follow_the_documented_formula():
    setting = MemorySetting(
        device="cuda",
        dtype="bfloat16",
        world_size=1,
        sharded=False,
        micro_batch=1,
        seq_len=1024,
        checkpointing=False,
        lora_r=16,
        lora_targets=tuple(ALL_TARGETS),
        lora_dropout=0.05,
        loss_chunk_tokens=1024,
    )

    assert layer_activation_bytes_per_token(QWEN3_4B, setting) == LAYER_BYTES_PER_TOKEN == 270_912


def test_80gib_h100_fits_micro_batch_4_without_checkpointing():
    # (budget − weights − LoRA states − logits) // row = (73,014,444,032 − 10,751,572,992) // 10,001,481,728 = 6
    assert (budget(80) - FIXED) // ROW_1024 == 6

    plan = plan_training(config(training={"global_batch_size": 16}), gpu_profile(1, 80), QWEN3_4B)

    assert (plan.strategy, plan.dtype, plan.gradient_checkpointing) == ("ddp", "bfloat16", False)
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.global_batch_size) == (4, 4, 16)
    assert plan.memory_gib["base_weights"] * GIB == WEIGHTS
    assert plan.memory_gib["activations"] * GIB + plan.memory_gib["attention_mask"] * GIB == pytest.approx(4 * ROW_1024)
    assert plan.tokens_per_step == 16 * 1024
    assert plan.fits


def test_24gib_card_fits_only_micro_batch_1_and_accumulates_16():
    # (21,904,333,209 − 10,751,572,992) // 10,001,481,728 = 1
    assert (budget(24) - FIXED) // ROW_1024 == 1

    plan = plan_training(config(training={"global_batch_size": 16}), gpu_profile(1, 24, "8.6"), QWEN3_4B)

    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.gradient_checkpointing) == (1, 16, False)


def test_long_sequences_on_24gib_turn_checkpointing_on():
    room = budget(24) - FIXED  # 11,152,760,217
    assert 4096 * (36 * LAYER_BYTES_PER_TOKEN + FINAL_NORM) > room  # one uncheckpointed row: 39,989,542,912
    checkpoint_row = 4096 * (36 * 2 * 2560 + FINAL_NORM) + 4096 * 4096 * 2  # 830,472,192

    def checkpointed(micro: int) -> int:
        # backward: the recomputed layer plus gate/up/product gradients (3 · 2 · 9728 per token), counted
        # only beyond the loss buffers, which are freed by then
        backward = micro * 4096 * (LAYER_BYTES_PER_TOKEN + 3 * 2 * 9728)
        return micro * checkpoint_row + max(0, backward - LOGITS)

    assert checkpointed(4) <= room < checkpointed(8)  # 6,538,657,792 ≤ room < 15,255,470,080

    plan = plan_training(
        config(model={"max_length": 4096}, training={"global_batch_size": 16}), gpu_profile(1, 24, "8.6"), QWEN3_4B
    )

    assert (plan.gradient_checkpointing, plan.micro_batch_size, plan.grad_accum_steps) == (True, 4, 4)
    assert any("gradient checkpointing on: without it" in text for text in plan.explanations)


def test_fsdp_is_chosen_when_weights_do_not_fit_one_gpu():
    assert WEIGHTS > budget(8)  # 8,044,936,192 > 7,301,444,403: no replica fits

    plan = plan_training(config(training={"nproc": 4, "global_batch_size": 16}), gpu_profile(4, 8), QWEN3_4B)

    assert plan.strategy == "fsdp"
    assert plan.memory_gib["base_weights"] * GIB == WEIGHTS / 4
    assert plan.memory_gib["ddp_grad_buckets"] == 0
    assert plan.fits
    assert any(text.startswith("strategy FSDP:") for text in plan.explanations)
    assert plan.micro_batch_size * plan.grad_accum_steps * plan.world_size == 16


def test_configured_sharding_overrides_the_memory_rule():
    plan = plan_training(config(training={"nproc": 2, "sharding": "fsdp"}), gpu_profile(2, 80), QWEN3_4B)

    assert plan.strategy == "fsdp"
    assert any("as configured (training.sharding=fsdp)" in text for text in plan.explanations)


def test_lora_rank_is_halved_when_even_micro_batch_1_does_not_fit():
    lora_r256 = 33_030_144 * 16 * 16  # r=256 is 16× the r=16 adapter, 16 bytes per parameter
    assert WEIGHTS + lora_r256 + LOGITS > budget(18)  # nothing else even fits
    assert WEIGHTS + lora_r256 // 2 + LOGITS + ROW_1024_CHECKPOINTED < budget(18)  # r=128 fits micro-batch 1

    plan = plan_training(config(lora={"r": 256}), gpu_profile(1, 18), QWEN3_4B)

    assert (plan.lora_r, plan.lora_targets) == (128, ALL_TARGETS)
    assert plan.gradient_checkpointing
    assert any("LoRA reduced from r=256" in text for text in plan.explanations)


def test_model_that_fits_no_gpu_gets_tensor_parallel_recommendation():
    # micro-batch 1 checkpointed needs 10,952,899,584 bytes; the 8 GiB budget is 7,301,444,403 → 2 devices
    needed = FIXED + ROW_1024_CHECKPOINTED
    assert -(-needed // budget(8)) == 2

    plan = plan_training(config(), gpu_profile(1, 8), QWEN3_4B)

    assert not plan.fits
    assert (plan.recommended_tp, plan.recommended_pp) == (2, 1)
    assert any("DOES NOT FIT" in text for text in plan.explanations)


def test_indivisible_global_batch_becomes_the_nearest_exact_one_and_says_so():
    plan = plan_training(config(training={"nproc": 3, "global_batch_size": 8}), gpu_profile(3, 80), QWEN3_4B)

    # micro 2 → 2×1×3 = 6 (off by 2); micro 1 → 1×3×3 = 9 (off by 1)
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.global_batch_size) == (1, 3, 9)
    assert plan.requested_global_batch_size == 8
    assert any("effective global batch is 9" in text for text in plan.explanations)


def test_divisible_global_batch_lowers_micro_batch_to_stay_exact():
    plan = plan_training(config(training={"nproc": 2, "global_batch_size": 12}), gpu_profile(2, 80), QWEN3_4B)

    # 12 // 2 ranks caps micro at 4, but 4 × 2 = 8 does not divide 12; micro 2 gives 2 × 3 × 2 = 12
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.global_batch_size) == (2, 3, 12)


def test_multi_node_plan_uses_c10d_rendezvous():
    plan = plan_training(
        config(training={"nnodes": 2, "nproc": 4, "master_addr": "10.0.0.1", "global_batch_size": 64}),
        gpu_profile(4, 80),
        QWEN3_4B,
    )

    assert (plan.world_size, plan.nproc_per_node, plan.nnodes) == (8, 4, 2)
    assert plan.torchrun_args == [
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29511",
        "--rdzv-id=qft",
    ]


def test_multi_node_with_loopback_master_is_rejected():
    with pytest.raises(PlanError, match=r"training\.master_addr"):
        plan_training(config(training={"nnodes": 2}), gpu_profile(1, 80), QWEN3_4B)


def test_cpu_plan_uses_gloo_float32_and_counts_attention_scores():
    tiny = ModelShape.from_dims(
        hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=256, vocab=512, tied_embeddings=True
    )

    plan = plan_training(config(model={"max_length": 256}, training={"nproc": 2}), cpu_profile(), tiny)

    assert (plan.device, plan.backend, plan.dtype, plan.world_size) == ("cpu", "gloo", "float32", 2)
    assert plan.torchrun_args[:2] == ["--nnodes=1", "--nproc-per-node=2"]
    # eager/math attention keeps fp32 softmax probabilities: micro × heads 4 × 256² × 4 bytes × 2 layers
    assert plan.memory_gib["attention_scores"] * GIB == plan.micro_batch_size * 4 * 256 * 256 * 4 * 2
    # base weights in fp32 on CPU
    assert plan.memory_gib["base_weights"] * GIB == tiny.params * 4


def test_explanations_cover_every_decision():
    plan = plan_training(config(), gpu_profile(1, 80), QWEN3_4B)

    text = "\n".join(plan.explanations)
    for decision in (
        "dtype",
        "process(es) per node",
        "Memory budget",
        "strategy",
        "micro-batch",
        "gradient accumulation",
        "gradient checkpointing",
        "Estimated",
    ):
        assert decision in text
    markdown = plan.to_markdown()
    assert "| strategy | ddp |" in markdown and "### Why" in markdown


def test_unknown_lora_target_names_the_config_key():
    with pytest.raises(PlanError, match=r"lora\.target_modules"):
        plan_training(config(lora={"target_modules": ["qkv"]}), gpu_profile(1, 80), QWEN3_4B)
