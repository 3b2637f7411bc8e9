"""The planner: processes, sharding, micro-batch, accumulation, checkpointing, precision and the effective LoRA
settings that fit the memory model on a given (fake or real) machine, each explained."""

import pytest
import torch

from qft_core.device import DeviceUnavailableError
from qft_core.model.shape import QWEN3_4B
from qft_core.train.fast_path import choose_fast_path
from qft_core.train.hardware import GIB, profile_hardware
from qft_core.train.plan import PlanError, plan_training
from tests.core.train.memory_arithmetic import (
    ALL_TARGETS,
    CONTEXT,
    LAYER,
    LOGIT_CHUNK,
    LORA_STATES,
    OUTSIDE_LAYERS,
    ROW_1024,
    SCORED_HIDDEN_PER_ROW,
    TINY,
    WEIGHTS,
    budget,
    config,
    cpu_profile,
    gpu_profile,
    planned_total,
)


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


def test_long_sequences_on_24gib_checkpoint_the_fewest_layers_that_fit():
    tokens = 4096
    fixed = WEIGHTS + LORA_STATES
    assert planned_total(fixed + LOGIT_CHUNK + tokens * (36 * LAYER + OUTSIDE_LAYERS)) > budget(24)

    def first_checkpointed(layers: int, micro: int = 1) -> int:
        """The first `layers` keep their input (2·2560 bytes a token), the others everything (LAYER); one loss
        chunk and the scored hidden states' copy outweigh a layer's backward, which recomputes nothing while a
        layer is kept whole."""
        row = micro * tokens
        assert row * 2 * (4 * 9728 + 2 * 2560) < LOGIT_CHUNK
        kept = row * (layers * 2 * 2560 + (36 - layers) * LAYER + OUTSIDE_LAYERS)
        return fixed + kept + LOGIT_CHUNK + row * 2 * 2560

    # 20 layers at micro-batch 1: 19 need 24.77e9 > 24.48e9, 20 need 24.07e9. Larger micro-batches need more
    # layers (29 at 2, 33 at 4), so micro-batch 1 recomputes the least.
    assert planned_total(first_checkpointed(19)) > budget(24) >= planned_total(first_checkpointed(20))
    assert planned_total(first_checkpointed(28, micro=2)) > budget(24)

    plan = plan_training(
        config(model={"max_length": 4096}, training={"global_batch_size": 16}), gpu_profile(1, 24, "8.6"), QWEN3_4B
    )

    assert (plan.checkpoint_layers, plan.micro_batch_size, plan.grad_accum_steps) == (20, 1, 16)
    assert plan.memory_gib["activations"] * GIB == tokens * (20 * 2 * 2560 + 16 * LAYER + OUTSIDE_LAYERS)
    assert any(text.startswith("gradient checkpointing of the first 20 of 36") for text in plan.explanations)
    assert "| gradient checkpointing | the first 20 decoder layer(s)" in plan.to_markdown()


def test_checkpointing_configured_on_checkpoints_every_layer_at_the_largest_micro_batch():
    tokens = 4096
    fixed = WEIGHTS + LORA_STATES

    def checkpointed(micro: int) -> int:
        kept = micro * tokens * (36 * 2 * 2560 + OUTSIDE_LAYERS)  # each layer's input
        logits = LOGIT_CHUNK + micro * tokens * 2 * 2560
        # backward: the recomputed layer plus the compiled gradients of gate/up/SiLU/product and input/residual
        backward = micro * tokens * (LAYER + 2 * (4 * 9728 + 2 * 2560))
        return fixed + kept + max(logits, backward)

    assert planned_total(checkpointed(4)) <= budget(24) < planned_total(checkpointed(8))  # 18.3e9 ≤ 24.5e9 < 26.4e9

    plan = plan_training(
        config(model={"max_length": 4096}, training={"global_batch_size": 16, "gradient_checkpointing": True}),
        gpu_profile(1, 24, "8.6"),
        QWEN3_4B,
    )

    assert (plan.checkpoint_layers, plan.micro_batch_size, plan.grad_accum_steps) == (36, 4, 4)
    assert any("gradient checkpointing on, all 36 decoder layers: as configured" in text for text in plan.explanations)


def test_checkpointing_configured_off_keeps_every_layer_whole():
    plan = plan_training(
        config(model={"max_length": 4096}, training={"global_batch_size": 16, "gradient_checkpointing": False}),
        gpu_profile(1, 24, "8.6"),
        QWEN3_4B,
    )

    assert plan.checkpoint_layers == 0
    assert not plan.fits  # 4096 tokens without checkpointing exceed the 24 GiB card (first test above)


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


def test_lora_rank_is_halved_with_its_alpha_when_even_micro_batch_1_does_not_fit():
    lora_r256 = 33_030_144 * 16 * 16  # r=256 is 16× the r=16 adapter, 16 bytes per parameter
    assert planned_total(WEIGHTS + lora_r256 + LOGIT_CHUNK) > budget(18)  # nothing else even fits
    checkpointed_row = 1024 * (36 * 2 * 2560 + OUTSIDE_LAYERS)
    assert planned_total(WEIGHTS + lora_r256 // 2 + LOGIT_CHUNK + SCORED_HIDDEN_PER_ROW + checkpointed_row) < budget(18)

    plan = plan_training(config(lora={"r": 256, "alpha": 512, "dropout": 0.1}), gpu_profile(1, 18), QWEN3_4B)

    assert (plan.lora.r, plan.lora.target_modules) == (128, ALL_TARGETS)
    # PEFT scales the adapter by alpha/r: 512/256 = 2 as configured, so alpha halves with r to 256.
    assert (plan.lora.alpha, plan.lora.scale, plan.lora.dropout) == (256, 2.0, 0.1)
    assert any("lora.alpha 512 becomes 256, so the adapter's scale alpha/r stays 2" in text for text in plan.explanations)
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


def test_cpu_budget_comes_from_the_ram_available_when_profiled():
    busy = cpu_profile(ram_gib=24).model_copy(update={"ram_available_gib": 6.0})
    plan = plan_training(config(model={"max_length": 256}, training={"nproc": 2}), busy, TINY)
    # 85 % of 6 GiB shared by two processes (2.55 GiB each), not of the 24 GiB installed.
    assert (
        "Memory budget 2.55 GiB per process: 85% of 6.0 GiB RAM available (of 24.0 GiB) shared by 2 process(es)"
        in plan.explanations[_budget_line(plan)]
    )
    # A profile without the figure (written before it was recorded) budgets from the installed RAM: 10.2 GiB each.
    older = plan_training(config(model={"max_length": 256}, training={"nproc": 2}), cpu_profile(ram_gib=24), TINY)
    assert "Memory budget 10.20 GiB per process: 85% of 24.0 GiB RAM shared by 2" in older.explanations[_budget_line(older)]


def _budget_line(plan) -> int:
    return next(index for index, line in enumerate(plan.explanations) if line.startswith("Memory budget"))


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
