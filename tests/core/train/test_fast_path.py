"""The fast path's choices and fallbacks per device, and its pieces against the plain ones on a tiny model."""

import pytest
import torch
import torch.utils._triton
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.train import attention, compiler, fast_path
from qft_core.train.attention import FLEX, SDPA, choose_attention, packed_model_inputs
from qft_core.train.fast_path import (
    FastPath,
    apply_fast_path,
    build_optimizer,
    choose_fast_path,
    compile_decoder_layers,
    compute_adapters_in_input_dtype,
)
from qft_core.train.fused_lora import FusedLoraLinear
from qft_core.train.loss import TokenLossSum, causal_lm
from qft_core.train.packing import collate_packed

CUDA = torch.device("cuda", 0)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_config(attn: str = "sdpa") -> Qwen3Config:
    return Qwen3Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attn_implementation=attn,
    )


def _tiny_lora_model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(_tiny_config()).to(dtype)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)  # so the adapters take part in the loss
    return peft_model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    return input_ids, input_ids.clone()


@pytest.fixture
def kernels_available(monkeypatch):
    """A CUDA device on which compile and flex attention would work (nothing runs on it in these tests)."""
    monkeypatch.setattr(compiler, "compile_unavailable_reason", lambda device: None)
    monkeypatch.setattr(attention, "compile_unavailable_reason", lambda device: None)
    monkeypatch.setattr("qft_core.train.fast_path.compile_unavailable_reason", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


# -- choices and fallbacks -------------------------------------------------------------------------------------


def test_cpu_keeps_the_plain_pieces_and_says_why() -> None:
    fast = choose_fast_path(torch.device("cpu"), torch.float32, packing=True)
    assert (fast.attention, fast.compile_layers, fast.adapter_compute_dtype, fast.fused_optimizer) == (
        SDPA, False, None, False
    )
    assert [reason.split(":")[0] for reason in fast.fallbacks] == ["attention", "decoder layers", "adapters", "optimizer"]
    assert "CUDA only" in fast.fallbacks[1]


def test_capable_gpu_gets_every_piece(kernels_available) -> None:
    fast = choose_fast_path(CUDA, torch.bfloat16, packing=True)
    assert fast == FastPath(
        attention=FLEX, compile_layers=True, adapter_compute_dtype=torch.bfloat16, fused_optimizer=True, fallbacks=()
    )


def test_fsdp_sharding_keeps_layers_eager_and_the_other_pieces(kernels_available) -> None:
    fast = choose_fast_path(CUDA, torch.bfloat16, packing=True, sharded=True)
    assert (fast.attention, fast.compile_layers, fast.adapter_compute_dtype, fast.fused_optimizer) == (
        FLEX, False, torch.bfloat16, True
    )
    assert fast.fallbacks == (
        "decoder layers: eager, since compiled layers under FSDP2 sharding are not benchmarked yet (DDP and one GPU are)",
    )


def test_round_two_levers_stay_off_until_measured(kernels_available) -> None:
    for device, dtype in ((CUDA, torch.bfloat16), (torch.device("cpu"), torch.float32)):
        fast = choose_fast_path(device, dtype, packing=False)
        assert (fast.fused_lora, fast.compile_mode, fast.ddp_graph_split) == (False, None, True)


def test_measured_levers_become_the_choice_and_the_mode_needs_compiled_layers(kernels_available, monkeypatch) -> None:
    monkeypatch.setattr(fast_path, "FUSE_LORA_PRODUCTS", True)
    monkeypatch.setattr(fast_path, "COMPILE_MODE", "max-autotune-no-cudagraphs")
    monkeypatch.setattr(fast_path, "SPLIT_GRAPHS_AT_DDP_BUCKETS", False)
    fast = choose_fast_path(CUDA, torch.bfloat16, packing=False)
    assert (fast.fused_lora, fast.compile_mode, fast.ddp_graph_split) == (True, "max-autotune-no-cudagraphs", False)
    assert fast.fallbacks == ()
    eager = choose_fast_path(CUDA, torch.bfloat16, packing=False, sharded=True)
    assert (eager.compile_layers, eager.compile_mode, eager.fused_lora) == (False, None, True)


def test_compiling_under_fsdp_once_measured_keeps_the_sharded_layers_compiled(kernels_available, monkeypatch) -> None:
    monkeypatch.setattr(fast_path, "COMPILE_UNDER_FSDP", True)
    fast = choose_fast_path(CUDA, torch.bfloat16, packing=True, sharded=True)
    assert (fast.attention, fast.compile_layers, fast.fallbacks) == (FLEX, True, ())


def test_unpacked_rows_keep_sdpa_without_a_fallback_note(kernels_available) -> None:
    assert choose_attention(CUDA, packing=False) == (SDPA, None)
    assert choose_fast_path(CUDA, torch.bfloat16, packing=False).fallbacks == ()


def test_missing_triton_falls_back_to_eager_layers_and_sdpa(monkeypatch) -> None:
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    fast = choose_fast_path(CUDA, torch.bfloat16, packing=True)
    assert (fast.attention, fast.compile_layers, fast.adapter_compute_dtype, fast.fused_optimizer) == (
        SDPA, False, torch.bfloat16, True
    )
    assert all("Triton is missing" in reason for reason in fast.fallbacks)
    assert len(fast.fallbacks) == 2


def test_unsupported_python_for_dynamo_falls_back_to_eager(monkeypatch) -> None:
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert compiler.compile_unavailable_reason(CUDA) == "torch.compile does not support this Python version"
    assert compiler.compiled_or_eager(len, CUDA) is len


def test_pre_ampere_gpu_trains_packed_rows_with_sdpa(kernels_available, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    name, reason = choose_attention(CUDA, packing=True)
    assert name == SDPA
    assert reason == "flex attention needs compute capability (8, 0), this GPU has (7, 5)"


def test_float16_model_computes_adapters_in_float16_and_float32_model_leaves_them(kernels_available) -> None:
    assert choose_fast_path(CUDA, torch.float16, packing=False).adapter_compute_dtype == torch.float16
    fast = choose_fast_path(CUDA, torch.float32, packing=False)
    assert fast.adapter_compute_dtype is None
    assert fast.fallbacks == ("adapters: computed in torch.float32, the model's own dtype, so nothing to change",)


def test_optimizer_is_fused_only_when_the_fast_path_says_so() -> None:
    parameter = torch.nn.Parameter(torch.zeros(3))
    assert build_optimizer([parameter], lr=0.1, weight_decay=0.0, fast=FastPath(fused_optimizer=True)).defaults["fused"]
    assert not build_optimizer([parameter], lr=0.1, weight_decay=0.0, fast=FastPath.plain()).defaults["fused"]


# -- the pieces against the plain path -------------------------------------------------------------------------


def test_plain_path_leaves_the_model_untouched() -> None:
    peft_model = _tiny_lora_model(torch.float32)
    apply_fast_path(peft_model, FastPath.plain())
    lora_layers = [m for m in peft_model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert len(lora_layers) == 2 * len(TARGETS)
    assert all(layer.cast_input_dtype_enabled for layer in lora_layers)
    assert all(layer._compiled_call_impl is None for layer in causal_lm(peft_model).get_decoder().layers)


def test_fast_path_fuses_lora_layers_and_sets_the_ddp_split_before_compiling() -> None:
    input_ids, labels = _batch()
    model = _tiny_lora_model(torch.float32)
    expected, _ = TokenLossSum(model)(input_ids, labels)
    with torch._dynamo.config.patch(optimize_ddp=True):
        apply_fast_path(model, FastPath(compile_layers=True, fused_lora=True, ddp_graph_split=False), backend="eager")
        assert torch._dynamo.config.optimize_ddp is False
    fused, _ = TokenLossSum(model)(input_ids, labels)
    assert sum(isinstance(module, FusedLoraLinear) for module in model.modules()) == 2 * len(TARGETS)
    torch.testing.assert_close(fused, expected)


def test_adapters_in_bf16_match_peft_float32_adapter_compute() -> None:
    input_ids, labels = _batch()
    plain_model, fast_model = _tiny_lora_model(torch.bfloat16), _tiny_lora_model(torch.bfloat16)
    adapter_outputs: list[torch.dtype] = []
    for name, module in fast_model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda _m, _i, output: adapter_outputs.append(output.dtype))

    plain_sum, plain_count = TokenLossSum(plain_model)(input_ids, labels)
    (plain_sum / plain_count).backward()
    assert compute_adapters_in_input_dtype(fast_model) == 2 * len(TARGETS)
    fast_sum, fast_count = TokenLossSum(fast_model, compute_dtype=torch.bfloat16)(input_ids, labels)
    (fast_sum / fast_count).backward()

    # Every adapter product ran in bf16; PEFT's own path would have run all 14 in float32.
    assert adapter_outputs == [torch.bfloat16] * (2 * len(TARGETS))
    assert plain_count == fast_count == 2 * 15
    torch.testing.assert_close(fast_sum / fast_count, plain_sum / plain_count, rtol=1e-2, atol=0.0)
    plain_grads = dict(plain_model.named_parameters())
    for name, parameter in fast_model.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == parameter.grad.dtype == torch.float32, name
            reference = plain_grads[name].grad
            assert (parameter.grad - reference).norm() <= 0.05 * reference.norm(), name


def test_compiled_layers_keep_parameter_names_and_outputs() -> None:
    input_ids, labels = _batch()
    model = _tiny_lora_model(torch.float32)
    names = [name for name, _ in model.named_parameters()]
    expected, _ = TokenLossSum(model)(input_ids, labels)

    compile_decoder_layers(causal_lm(model).get_decoder().layers, backend="eager")
    compiled, _ = TokenLossSum(model)(input_ids, labels)

    assert [name for name, _ in model.named_parameters()] == names
    assert all(layer._compiled_call_impl is not None for layer in causal_lm(model).get_decoder().layers)
    torch.testing.assert_close(compiled, expected)


def _packed_batch():
    generator = torch.Generator().manual_seed(2)
    documents = [torch.randint(0, 128, (length,), generator=generator) for length in (5, 9, 3, 12, 7)]
    items = [{"input_ids": ids, "labels": ids} for ids in documents]
    return collate_packed([items[:3], items[3:]], row_length=20)


def test_flex_inputs_carry_restarting_positions_and_no_dense_mask() -> None:
    batch = _packed_batch()
    flex = packed_model_inputs(batch, FLEX, torch.float32)
    dense = packed_model_inputs(batch, SDPA, torch.float32)
    assert set(flex) == {"input_ids", "labels", "position_ids"}
    assert flex["position_ids"][0].tolist() == [*range(5), *range(9), *range(3), *range(3)]
    assert dense["attention_mask"].shape == (2, 1, 20, 20)


@pytest.mark.slow
def test_flex_document_mask_gives_the_dense_mask_loss_on_packed_rows() -> None:
    # Flex attention has no CPU backward, and its CPU forward compiles with the C++ compiler (about 30 s).
    torch.manual_seed(0)
    dense_model = Qwen3ForCausalLM(_tiny_config(SDPA))
    flex_model = Qwen3ForCausalLM(_tiny_config(FLEX))
    flex_model.load_state_dict(dense_model.state_dict())
    batch = _packed_batch()
    with torch.no_grad():
        dense, dense_count = TokenLossSum(dense_model)(**packed_model_inputs(batch, SDPA, torch.float32))
        flex, flex_count = TokenLossSum(flex_model)(**packed_model_inputs(batch, FLEX, torch.float32))
    assert dense_count == flex_count == (4 + 8 + 2) + (11 + 6)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
