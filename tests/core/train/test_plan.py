from dataclasses import replace

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.config import QftConfig
from qft_core.device import DeviceUnavailableError
from qft_core.train.fast_path import choose_fast_path
from qft_core.train.hardware import GIB, GpuInfo, HardwareProfile, profile_hardware
from qft_core.train.plan import (
    QWEN3_4B,
    MemorySetting,
    ModelShape,
    PlanError,
    allocated_bytes,
    backward_bytes_per_token,
    estimate_memory,
    layer_activation_bytes_per_token,
    layer_activation_terms,
    loss_chunk_bytes,
    plan_training,
)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Hand arithmetic for Qwen3-4B (h 2560, 36 layers, 32 heads × 128 = q 4096, 8 KV heads × 128 = kv 1024,
# intermediate 9728, vocab 151,936, tied) in bf16 (2 bytes) at r=16 on all 7 projections.
QWEN3_4B_PARAMS = (
    151_936 * 2560  # tied embedding: 388,956,160
    + 36 * (2 * 2560 * 4096 + 2 * 2560 * 1024 + 2 * 128 + 3 * 2560 * 9728 + 2 * 2560)  # 36 × 100,930,816
    + 2560  # final norm
)
# r·(in+out): q 16·6656 + k 16·3584 + v 16·3584 + o 16·6656 + gate/up/down 3 · 16·12288 = 917,504 per layer
QWEN3_4B_LORA_R16 = 36 * (106_496 + 57_344 + 57_344 + 106_496 + 196_608 + 196_608 + 196_608)
WEIGHTS = 4_022_468_096 * 2
LORA_STATES = 33_030_144 * 16  # fp32 weight 4 + fp32 grad 4 + AdamW moments 8
CONTEXT = 3 * GIB // 4  # CUDA context, one rank
# A compiled layer with LoRA dropout 0.05 and flex attention keeps per token: norm inputs 2·(2·2560 + 4), q/k norm
# inputs 2·5120 + 4·40, roped q, k and v 2·(4096 + 2·1024), attention output and log-sum-exp 2·4096 + 4·32,
# gate and up 2·2·9728, each adapter's dropped-out input and mask 3·(5·2560 + 4096 + 9728), lora_A outputs
# 7·2·2·16.
LAYER = 10_248 + 10_400 + 12_288 + 8_320 + 38_912 + 79_872 + 448
OUTSIDE_LAYERS = 4 * 2560 + 2 * 2560  # final norm's fp32 input, gradient of the hidden states
ROW_1024 = 1024 * (36 * LAYER + OUTSIDE_LAYERS)
# one 1024-token loss chunk, compiled: bf16 logits, fp32 buffer, gradient, previous gradient (2 + 4 + 2 + 2)
LOGIT_CHUNK = 1024 * 151_936 * 10
SCORED_HIDDEN_PER_ROW = 1024 * 2 * 2560  # the copy of the scored hidden states the chunks are cut from


def gpu_profile(count: int, memory_gib: float, capability: str = "9.0", fast_path: bool = True) -> HardwareProfile:
    gpus = [GpuInfo(index=i, name="fake", memory_gib=memory_gib, compute_capability=capability) for i in range(count)]
    return HardwareProfile(
        hostname="fake",
        gpus=gpus,
        physical_cores=32,
        logical_cores=64,
        ram_gib=256,
        torch_version="2.5",
        bf16_supported=capability >= "8.0",
        compiled_kernels=fast_path,
        flex_attention=fast_path,
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
    return int(int(memory_gib * GIB) * 0.95)


def planned_total(allocated: int, context: int = CONTEXT) -> int:
    """What the plan compares with its budget: the allocator's peak, 10% slack on it, the CUDA context."""
    return allocated + -(-allocated // 10) + context


def setting(**changes) -> MemorySetting:
    """One H200 running the benchmark's engine path: bf16, r 16 on every projection, dropout 0, full rows."""
    base = MemorySetting(
        device="cuda",
        dtype="bfloat16",
        world_size=1,
        sharded=False,
        micro_batch=4,
        seq_len=2048,
        checkpointing=False,
        lora_r=16,
        lora_targets=tuple(ALL_TARGETS),
        lora_dropout=0.0,
        loss_chunk_tokens=1024,
        rows="full",
        compiled_kernels=True,
        flex_attention=True,
    )
    return replace(base, **changes)


TINY = ModelShape.from_dims(
    hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=256, vocab=512, tied_embeddings=True
)
QWEN3_4B_8_LAYERS = ModelShape.from_dims(
    hidden=2560, layers=8, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151_936, tied_embeddings=True
)


def tiny_setting(**changes) -> MemorySetting:
    """The tiny shape (h 128, q 128, kv 64, i 256, vocab 512, 2 layers) at r 8 on every projection, 2 × 64 tokens."""
    return setting(**({"micro_batch": 2, "seq_len": 64, "lora_r": 8, "loss_chunk_tokens": 32} | changes))


# Peaks measured on GPUs (torch.cuda.max_memory_allocated), copied from docs/performance.md: "Results (2026-11-26)"
# (one H200, Qwen3-4B shape, LoRA r 16 on all projections, dropout 0, bf16, loss chunk 1024), "The levers" (same
# runs), the DDP table (four H200s, 2048 × 4 per GPU) and "Engine end to end on GPU" (one H100, 2026-11-26: 8 layers,
# r 8, dropout 0.05, packed, micro-batch 8 of at most 2048 tokens).
MEASURED_PEAKS = [
    ("engine 2048x4", QWEN3_4B, setting(), 39.9),
    ("engine 2048x8 checkpointed", QWEN3_4B, setting(micro_batch=8, checkpointing=True), 14.0),
    ("engine 4096x4 checkpointed", QWEN3_4B, setting(seq_len=4096, checkpointing=True), 14.0),
    ("engine 16384x1 checkpointed", QWEN3_4B, setting(micro_batch=1, seq_len=16384, checkpointing=True), 14.0),
    ("engine 2048x4 packed, flex", QWEN3_4B, setting(rows="packed"), 39.9),
    ("engine 2048x4 packed, sdpa dense mask", QWEN3_4B, setting(rows="packed", flex_attention=False), 43.3),
    # engine-nocompile: eager layers; its loss kernel was still compiled, which the eager plan counts eagerly too
    ("engine 2048x4 eager layers", QWEN3_4B, setting(compiled_kernels=False), 50.8),
    ("engine DDP 2 GPUs 2048x4", QWEN3_4B, setting(world_size=2), 45.3),
    ("engine DDP 4 GPUs 2048x4", QWEN3_4B, setting(world_size=4), 45.3),
    (
        "engine smoke, 8 layers",
        QWEN3_4B_8_LAYERS,
        setting(micro_batch=8, rows="packed", lora_r=8, lora_dropout=0.05),
        23.3,
    ),
]


@pytest.mark.parametrize(
    ("shape", "measured_setting", "measured_gib"),
    [row[1:] for row in MEASURED_PEAKS],
    ids=[row[0] for row in MEASURED_PEAKS],
)
def test_allocated_estimate_is_within_15_percent_above_or_10_below_the_measured_peak(
    shape, measured_setting, measured_gib
):
    predicted_gib = allocated_bytes(estimate_memory(shape, measured_setting)) / GIB

    assert -0.10 <= predicted_gib / measured_gib - 1 <= 0.15, f"predicted {predicted_gib:.2f} GiB"


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


def test_compiled_layer_terms_on_a_tiny_shape():
    terms = layer_activation_terms(TINY, tiny_setting())

    assert terms == {
        "norm_inputs": 2 * (2 * 128 + 4),  # bf16 inputs and fp32 1/rms of both norms
        "qk_norm_inputs": 2 * (128 + 64) + 4 * (4 + 2),
        "attention_inputs": 2 * (128 + 2 * 64),  # roped q and k, v
        "attention_output": 2 * 128 + 4 * 4,  # output and fp32 log-sum-exp per head
        "attention_mask": 0,
        "mlp": 2 * 2 * 256,  # gate and up; SiLU recomputed
        "adapter_inputs": 2 * (128 + 128 + 256),  # first norm's output, second norm's, SiLU(gate)·up
        "adapter_outputs": 7 * 2 * 2 * 8,
        "ddp_graph_split": 0,
    }
    assert layer_activation_bytes_per_token(TINY, tiny_setting()) == 3_984


def test_eager_layer_with_dropout_and_padding_mask_on_a_tiny_shape():
    eager = tiny_setting(compiled_kernels=False, lora_dropout=0.1, rows="padded", world_size=2)

    terms = layer_activation_terms(TINY, eager)

    assert eager.attention == "padding_mask"
    assert terms == {
        "norm_inputs": 2 * (4 * 128 + 4),  # fp32 upcasts kept
        "qk_norm_inputs": 4 * (128 + 64) + 4 * (4 + 2),
        "attention_inputs": 2 * (128 + 2 * 128),  # k and v repeated to all 4 query heads
        "attention_output": 2 * 128 + 4 * 4,
        "attention_mask": 2 * 64,  # the additive mask made in every layer: seq² per row over seq tokens
        "mlp": 3 * 2 * 256,  # gate, SiLU(gate), up
        "adapter_inputs": 3 * (5 * 128 + 128 + 256),  # each dropped-out input (2 bytes) and its mask (1 byte)
        "adapter_outputs": 7 * 2 * 2 * 8,
        "ddp_graph_split": 0,  # eager layers are not split
    }


def test_ddp_splits_compiled_layers_only_when_their_adapters_fill_the_first_bucket():
    # tiny: 16,384 adapter parameters per layer × 4 bytes < 1 MiB; Qwen3-4B r 16: 917,504 × 4 bytes > 1 MiB
    assert layer_activation_terms(TINY, tiny_setting(world_size=2))["ddp_graph_split"] == 0
    assert layer_activation_terms(QWEN3_4B, setting(world_size=2))["ddp_graph_split"] == 2 * 9728
    assert layer_activation_terms(QWEN3_4B, setting(world_size=2, sharded=True))["ddp_graph_split"] == 0


def test_attention_kernel_follows_rows_device_and_fast_path():
    assert setting(rows="full").attention == "flash"
    assert setting(rows="padded", micro_batch=1).attention == "flash"  # an all-ones mask is dropped
    assert setting(rows="padded", micro_batch=2).attention == "padding_mask"
    assert setting(rows="packed").attention == "flex"
    assert setting(rows="packed", flex_attention=False).attention == "dense_mask"
    assert setting(device="cpu", dtype="float32").attention == "math"


def test_layers_are_compiled_as_choose_fast_path_decides():
    assert setting(world_size=4).compiled_layers  # DDP
    assert not setting(world_size=4, sharded=True).compiled_layers  # FSDP2 across ranks stays eager
    assert setting(world_size=1, sharded=True).compiled_layers  # a lone rank is never wrapped
    assert not setting(compiled_kernels=False).compiled_layers


def test_backward_and_loss_transients_on_a_tiny_shape():
    compiled, eager = tiny_setting(), tiny_setting(compiled_kernels=False)

    assert backward_bytes_per_token(TINY, compiled) == 2 * (4 * 256 + 2 * 128)
    assert backward_bytes_per_token(TINY, eager) == 2 * (2 * 256 + 2 * 128)
    # 32-token chunk × 512 logits × (3·2 + 4) compiled or 16 eager, plus the 128 scored hidden states in bf16
    assert loss_chunk_bytes(TINY, compiled) == 32 * 512 * 10 + 128 * 2 * 128
    assert loss_chunk_bytes(TINY, eager) == 32 * 512 * 16 + 128 * 2 * 128
    assert loss_chunk_bytes(TINY, tiny_setting(loss_chunk_tokens=None)) == 128 * 512 * 10 + 128 * 2 * 128


def test_estimate_memory_terms_on_a_tiny_shape():
    tokens = 2 * 64
    params = 512 * 128 + 2 * (2 * 128 * 128 + 2 * 128 * 64 + 2 * 32 + 3 * 128 * 256 + 2 * 128) + 128
    adapter = 32_768
    logits = 32 * 512 * 10 + tokens * 2 * 128

    plain = estimate_memory(TINY, tiny_setting())
    checkpointed = estimate_memory(TINY, tiny_setting(checkpointing=True))

    assert plain["base_weights"] == params * 2 == 722_432
    assert plain["lora_weights"] == plain["lora_grads"] == 4 * adapter
    assert plain["optimizer_states"] == 8 * adapter
    assert plain["activations"] == tokens * (2 * 3_984 + 4 * 128 + 2 * 128)
    assert plain["logits"] == logits
    assert plain["backward_working_set"] == tokens * 2 * (4 * 256 + 2 * 128) - logits
    assert plain["attention_mask"] == plain["attention_scores"] == plain["ddp_grad_buckets"] == 0
    assert allocated_bytes(plain) == 2_692_608
    assert plain["cuda_context"] == CONTEXT
    assert plain["allocator_slack"] == 269_261  # 10% of 2,692,608, rounded up
    # checkpointed: each layer keeps its input; the backward adds the recomputed layer to its gradients
    assert checkpointed["activations"] == tokens * (2 * 2 * 128 + 4 * 128 + 2 * 128)
    assert checkpointed["backward_working_set"] == tokens * (3_984 + 2 * (4 * 256 + 2 * 128)) - logits


def test_distributed_ranks_add_nccl_buffers_and_cpu_has_no_cuda_context():
    assert estimate_memory(TINY, tiny_setting(world_size=2))["cuda_context"] == CONTEXT + 11 * GIB // 20
    assert estimate_memory(TINY, tiny_setting(device="cpu", dtype="float32"))["cuda_context"] == 0


def test_80gib_h100_fits_micro_batch_8_without_checkpointing():
    def allocated(micro: int) -> int:
        return WEIGHTS + LORA_STATES + LOGIT_CHUNK + micro * (ROW_1024 + SCORED_HIDDEN_PER_ROW)

    assert planned_total(allocated(8)) <= budget(80) < planned_total(allocated(16))  # 64.2e9 ≤ 81.6e9 < 116.4e9

    plan = plan_training(config(training={"global_batch_size": 16}), gpu_profile(1, 80), QWEN3_4B)

    assert (plan.strategy, plan.dtype, plan.gradient_checkpointing) == ("ddp", "bfloat16", False)
    assert (plan.compiled_layers, plan.attention) == (True, "flex")
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.global_batch_size) == (8, 2, 16)
    assert plan.memory_gib["base_weights"] * GIB == WEIGHTS
    assert plan.memory_gib["activations"] * GIB == pytest.approx(8 * ROW_1024)
    assert plan.memory_gib["allocated"] * GIB == pytest.approx(allocated(8))
    assert plan.memory_gib["total"] * GIB == pytest.approx(planned_total(allocated(8)))
    assert plan.tokens_per_step == 16 * 1024
    assert plan.fits


def test_without_compiled_kernels_the_same_gpu_fits_only_micro_batch_4():
    plan = plan_training(config(training={"global_batch_size": 16}), gpu_profile(1, 80, fast_path=False), QWEN3_4B)

    assert (plan.compiled_layers, plan.attention) == (False, "dense_mask")
    assert (plan.micro_batch_size, plan.grad_accum_steps) == (4, 4)
    assert any("torch.compile cannot build kernels here" in text for text in plan.explanations)


def test_24gib_card_fits_only_micro_batch_1_and_accumulates_16():
    def allocated(micro: int) -> int:
        return WEIGHTS + LORA_STATES + LOGIT_CHUNK + micro * (ROW_1024 + SCORED_HIDDEN_PER_ROW)

    assert planned_total(allocated(1)) <= budget(24) < planned_total(allocated(2))  # 18.5e9 ≤ 24.5e9 < 25.0e9

    plan = plan_training(config(training={"global_batch_size": 16}), gpu_profile(1, 24, "8.6"), QWEN3_4B)

    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.gradient_checkpointing) == (1, 16, False)


def test_long_sequences_on_24gib_turn_checkpointing_on():
    tokens = 4096
    fixed = WEIGHTS + LORA_STATES
    assert planned_total(fixed + LOGIT_CHUNK + tokens * (36 * LAYER + OUTSIDE_LAYERS)) > budget(24)

    def checkpointed(micro: int) -> int:
        kept = micro * tokens * (36 * 2 * 2560 + OUTSIDE_LAYERS)  # each layer's input
        logits = LOGIT_CHUNK + micro * tokens * 2 * 2560
        # backward: the recomputed layer plus the compiled gradients of gate/up/SiLU/product and input/residual
        backward = micro * tokens * (LAYER + 2 * (4 * 9728 + 2 * 2560))
        return fixed + kept + max(logits, backward)

    assert planned_total(checkpointed(4)) <= budget(24) < planned_total(checkpointed(8))  # 18.3e9 ≤ 24.5e9 < 26.4e9

    plan = plan_training(
        config(model={"max_length": 4096}, training={"global_batch_size": 16}), gpu_profile(1, 24, "8.6"), QWEN3_4B
    )

    assert (plan.gradient_checkpointing, plan.micro_batch_size, plan.grad_accum_steps) == (True, 4, 4)
    assert any("gradient checkpointing on: without it" in text for text in plan.explanations)


def test_fsdp_is_chosen_when_a_replica_does_not_fit_one_gpu():
    # weights, LoRA states and one loss chunk alone, with slack and context, exceed an 8 GiB card's budget
    assert planned_total(WEIGHTS + LORA_STATES + LOGIT_CHUNK) > budget(8)

    plan = plan_training(config(training={"nproc": 4, "global_batch_size": 16}), gpu_profile(4, 8), QWEN3_4B)

    assert plan.strategy == "fsdp"
    assert plan.memory_gib["base_weights"] * GIB == WEIGHTS / 4
    assert plan.memory_gib["ddp_grad_buckets"] == 0
    assert plan.memory_gib["cuda_context"] * GIB == CONTEXT + 11 * GIB // 20  # NCCL buffers across 4 ranks
    assert not plan.compiled_layers  # the engine keeps layers eager under FSDP2 across ranks
    assert plan.fits
    assert any(text.startswith("strategy FSDP:") for text in plan.explanations)
    assert plan.micro_batch_size * plan.grad_accum_steps * plan.world_size == 16


def test_configured_sharding_overrides_the_memory_rule():
    plan = plan_training(config(training={"nproc": 2, "sharding": "fsdp"}), gpu_profile(2, 80), QWEN3_4B)

    assert plan.strategy == "fsdp"
    assert any("as configured (training.sharding=fsdp)" in text for text in plan.explanations)


def test_lora_rank_is_halved_when_even_micro_batch_1_does_not_fit():
    lora_r256 = 33_030_144 * 16 * 16  # r=256 is 16× the r=16 adapter, 16 bytes per parameter
    assert planned_total(WEIGHTS + lora_r256 + LOGIT_CHUNK) > budget(18)  # nothing else even fits
    checkpointed_row = 1024 * (36 * 2 * 2560 + OUTSIDE_LAYERS)
    assert planned_total(WEIGHTS + lora_r256 // 2 + LOGIT_CHUNK + SCORED_HIDDEN_PER_ROW + checkpointed_row) < budget(18)

    plan = plan_training(config(lora={"r": 256}), gpu_profile(1, 18), QWEN3_4B)

    assert (plan.lora_r, plan.lora_targets) == (128, ALL_TARGETS)
    assert plan.gradient_checkpointing
    assert any("LoRA reduced from r=256" in text for text in plan.explanations)


def test_model_that_fits_no_gpu_gets_tensor_parallel_recommendation():
    # micro-batch 1 checkpointed on one rank: 1.1 × 10.34e9 + 0.81e9 = 12.18e9 over an 8 GiB budget of 8.16e9 → 2
    needed = planned_total(
        WEIGHTS + LORA_STATES + LOGIT_CHUNK + SCORED_HIDDEN_PER_ROW + 1024 * (36 * 2 * 2560 + OUTSIDE_LAYERS)
    )
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


@pytest.mark.parametrize("launcher", ["slurm", "kubernetes"])
def test_a_cluster_launcher_places_the_rendezvous_itself_so_the_loopback_master_is_not_used(launcher: str):
    plan = plan_training(config(training={"nnodes": 2, "nproc": 4, "launcher": launcher}), gpu_profile(4, 80), QWEN3_4B)

    assert plan.torchrun_args == [
        "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=<first node>:29511", "--rdzv-id=qft"
    ]  # fmt: skip
    assert (
        f"2 nodes started by the {launcher} launcher: the same torchrun command on every node, the c10d rendezvous on"
        " its first node at port 29511 (training.master_addr is not used)."
    ) in plan.explanations


def test_cpu_plan_uses_gloo_float32_and_counts_attention_scores():
    plan = plan_training(config(model={"max_length": 256}, training={"nproc": 2}), cpu_profile(), TINY)

    assert (plan.device, plan.backend, plan.dtype, plan.world_size) == ("cpu", "gloo", "float32", 2)
    assert (plan.compiled_layers, plan.attention) == (False, "math")
    assert plan.torchrun_args[:2] == ["--nnodes=1", "--nproc-per-node=2"]
    # the math kernel keeps fp32 softmax probabilities: micro × heads 4 × 256² × 4 bytes × 2 layers
    assert plan.memory_gib["attention_scores"] * GIB == plan.micro_batch_size * 4 * 256 * 256 * 4 * 2
    assert plan.memory_gib["base_weights"] * GIB == TINY.params * 4
    assert plan.memory_gib["cuda_context"] == 0


def test_plan_assumes_the_kernels_the_engine_picks_on_this_machine():
    """On the machine running the tests, the profile's fast-path fields and the plan agree with choose_fast_path."""
    profile = profile_hardware()
    device = torch.device("cuda" if profile.gpus else "cpu")
    fast = choose_fast_path(device, torch.bfloat16 if profile.gpus else torch.float32, packing=True)

    plan = plan_training(config(model={"max_length": 256}), profile, TINY)

    assert plan.compiled_layers == fast.compile_layers
    assert (plan.attention == "flex") == (fast.attention == "flex_attention")


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
        "Fast path",
        "Estimated",
    ):
        assert decision in text
    markdown = plan.to_markdown()
    assert "| strategy | ddp |" in markdown and "### Why" in markdown
    assert "| decoder layers / attention (memory estimate) | compiled / flex |" in markdown


def test_unknown_lora_target_names_the_config_key():
    with pytest.raises(PlanError, match=r"lora\.target_modules"):
        plan_training(config(lora={"target_modules": ["qkv"]}), gpu_profile(1, 80), QWEN3_4B)


def test_model_device_cpu_plans_for_the_cpu_on_a_gpu_machine_and_says_so():
    plan = plan_training(config(model={"device": "cpu"}), gpu_profile(2, 80), QWEN3_4B)
    assert (plan.device, plan.backend, plan.dtype) == ("cpu", "gloo", "float32")
    idle = "device cpu: as configured (model.device); the 2 GPU(s) stay idle."
    assert idle in plan.explanations
    assert plan_training(config(), gpu_profile(2, 80), QWEN3_4B).device == "cuda"


def test_model_device_cuda_on_a_profile_without_gpus_is_the_one_line_device_error():
    with pytest.raises(DeviceUnavailableError, match="model.device"):
        plan_training(config(model={"device": "cuda"}), cpu_profile(), QWEN3_4B)
