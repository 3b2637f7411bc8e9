"""The memory model: each term by hand on tiny shapes, and the allocated estimate against peaks measured on GPUs."""

import pytest

from qft_core.model.shape import QWEN3_4B
from qft_core.train.hardware import GIB
from qft_core.train.memory import (
    allocated_bytes,
    backward_bytes_per_token,
    estimate_memory,
    layer_activation_bytes_per_token,
    layer_activation_terms,
    loss_chunk_bytes,
)
from tests.core.train.memory_arithmetic import CONTEXT, QWEN3_4B_8_LAYERS, TINY, setting, tiny_setting

# Peaks measured on GPUs (torch.cuda.max_memory_allocated), copied from docs/performance.md: "Results (2026-11-26)"
# (one H200, Qwen3-4B shape, LoRA r 16 on all projections, dropout 0, bf16, loss chunk 1024), "The levers" (same
# runs), the DDP table (four H200s, 2048 × 4 per GPU) and "Engine end to end on GPU" (one H100, 2026-11-26: 8 layers,
# r 8, dropout 0.05, packed, micro-batch 8 of at most 2048 tokens).
MEASURED_PEAKS = [
    ("engine 2048x4", QWEN3_4B, setting(), 39.9),
    ("engine 2048x8 checkpointed", QWEN3_4B, setting(micro_batch=8, checkpoint_layers=36), 14.0),
    ("engine 4096x4 checkpointed", QWEN3_4B, setting(seq_len=4096, checkpoint_layers=36), 14.0),
    ("engine 16384x1 checkpointed", QWEN3_4B, setting(micro_batch=1, seq_len=16384, checkpoint_layers=36), 14.0),
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
    checkpointed = estimate_memory(TINY, tiny_setting(checkpoint_layers=2))

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


def test_first_k_checkpointed_layers_keep_their_input_and_the_rest_everything():
    tokens = 2 * 64
    logits = 32 * 512 * 10 + tokens * 2 * 128
    gradients = tokens * 2 * (4 * 256 + 2 * 128)  # a compiled layer's backward in flight

    one_of_two = estimate_memory(TINY, tiny_setting(checkpoint_layers=1))

    # layer 0 keeps its bf16 input, layer 1 its 3,984 bytes a token; final norm input and hidden-state gradient
    assert one_of_two["activations"] == tokens * (2 * 128 + 3_984 + 4 * 128 + 2 * 128)
    # backward meets layer 1 whole first and has freed it before layer 0 recomputes: no recomputed layer on top
    assert one_of_two["backward_working_set"] == gradients - logits
    assert allocated_bytes(one_of_two) == allocated_bytes(estimate_memory(TINY, tiny_setting())) - tokens * (
        3_984 - 2 * 128
    )


def test_qwen3_4b_at_16k_tokens_saves_a_layers_kept_set_less_its_input_per_checkpointed_layer():
    tokens = 16_384
    whole = allocated_bytes(estimate_memory(QWEN3_4B, setting(micro_batch=8, checkpoint_layers=0)))
    first_30 = allocated_bytes(estimate_memory(QWEN3_4B, setting(micro_batch=8, checkpoint_layers=30)))

    assert whole - first_30 == 30 * tokens * (110_312 - 5_120)  # 110,312 bytes a token kept, measured to the byte


def test_more_checkpointed_layers_than_the_model_has_is_an_error():
    with pytest.raises(ValueError, match="checkpoint_layers 3: the model has 2 decoder layers"):
        estimate_memory(TINY, tiny_setting(checkpoint_layers=3))
