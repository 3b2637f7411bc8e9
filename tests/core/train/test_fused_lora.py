"""The fused base + adapter LoRA product against PEFT's own forward and backward, in float32 and bf16."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from qft_core.train.fast_path import compute_adapters_in_input_dtype
from qft_core.train.fused_lora import FusedLoraLinear, fuse_lora_linears


class _Projection(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(24, 40, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _pair(dtype: torch.dtype, bias: bool = True, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """PEFT's layer and a fused copy with the same weights (LoRA B non-zero, so the adapter counts)."""
    torch.manual_seed(0)
    peft_model = get_peft_model(
        _Projection(bias).to(dtype), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["proj"])
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1)
    fused = copy.deepcopy(peft_model)
    compute_adapters_in_input_dtype(fused)
    assert fuse_lora_linears(fused) == 1
    return peft_model, fused


def _run(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: torch.dtype | None):
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model(x)
    out.backward(grad)
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out, x.grad, grads


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 5, 24, generator=generator).to(dtype), torch.randn(3, 5, 40, generator=generator).to(dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_float32_forward_and_gradients_equal_peft(bias: bool) -> None:
    peft_model, fused = _pair(torch.float32, bias)
    x, grad = _inputs(torch.float32)
    out, x_grad, grads = _run(peft_model, x, grad, autocast=None)
    fused_out, fused_x_grad, fused_grads = _run(fused, x, grad, autocast=None)
    torch.testing.assert_close(fused_out, out)
    torch.testing.assert_close(fused_x_grad, x_grad)
    assert grads.keys() == fused_grads.keys() and len(grads) == 2
    for name, reference in grads.items():
        torch.testing.assert_close(fused_grads[name], reference, msg=name)


def test_fused_bf16_under_autocast_matches_peft_float32_adapters_to_bf16_rounding() -> None:
    # PEFT's own path on a bf16 model: adapter inputs upcast to float32; the fused one runs every product in bf16.
    peft_model, fused = _pair(torch.bfloat16)
    x, grad = _inputs(torch.bfloat16)
    out, x_grad, grads = _run(peft_model, x, grad, autocast=None)
    fused_out, fused_x_grad, fused_grads = _run(fused, x, grad, autocast=torch.bfloat16)
    assert fused_out.dtype == fused_x_grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused_out, out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_x_grad, x_grad, rtol=2e-2, atol=2e-2)
    for name, reference in grads.items():
        assert fused_grads[name].dtype == torch.float32, name
        assert (fused_grads[name] - reference).norm() <= 0.01 * reference.norm(), name


def test_fused_dropout_draws_the_same_mask_as_peft() -> None:
    peft_model, fused = _pair(torch.float32, dropout=0.5)
    x, grad = _inputs(torch.float32)
    torch.manual_seed(7)
    out, x_grad, grads = _run(peft_model, x, grad, autocast=None)
    torch.manual_seed(7)
    fused_out, fused_x_grad, fused_grads = _run(fused, x, grad, autocast=None)
    torch.testing.assert_close(fused_out, out)
    torch.testing.assert_close(fused_x_grad, x_grad)
    for name, reference in grads.items():
        torch.testing.assert_close(fused_grads[name], reference, msg=name)


def test_disabled_adapters_and_peft_upcasts_run_peft_forward() -> None:
    peft_model, fused = _pair(torch.bfloat16)
    x, _ = _inputs(torch.bfloat16)
    layer = fused.base_model.model.proj
    with fused.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(fused(x), layer.base_layer(x), rtol=0, atol=0)
    # bf16 input, float32 adapters, no autocast and PEFT's upcast on: PEFT's float32 adapter product, bit for bit.
    layer.cast_input_dtype_enabled = True
    with torch.no_grad():
        torch.testing.assert_close(fused(x), peft_model(x), rtol=0, atol=0)


@pytest.mark.parametrize(("dtype", "autocast"), [(torch.float32, None), (torch.bfloat16, torch.bfloat16)])
def test_fused_layer_compiles_forward_and_backward_as_one_graph(dtype, autocast) -> None:
    _, fused = _pair(dtype)
    x, grad = _inputs(dtype)
    eager_out, eager_x_grad, _ = _run(fused, x, grad, autocast=autocast)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    out, x_grad, _ = _run(compiled, x, grad, autocast=autocast)
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(x_grad, eager_x_grad)


def test_fusing_a_qwen3_model_changes_every_lora_linear_and_no_parameter_name() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(Qwen3ForCausalLM(config), LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    names = [name for name, _ in model.named_parameters()]
    assert fuse_lora_linears(model) == 2 * len(targets)
    assert fuse_lora_linears(model) == 0
    assert [name for name, _ in model.named_parameters()] == names
    assert sum(isinstance(m, FusedLoraLinear) for m in model.modules()) == 14
    assert sum(type(m) is PeftLoraLinear for m in model.modules()) == 0
