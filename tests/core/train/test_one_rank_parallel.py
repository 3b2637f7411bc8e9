"""DDP and FSDP2 on a one-rank gloo group with compiled decoder layers, on qwen3-tiny's architecture: the step-1
loss and gradient equal the unwrapped model's, and DDP's graph split is what the fast path says."""

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch._dynamo.testing import CompileCounter
from transformers import Qwen3ForCausalLM

from qft_core.model.registry import tiny_qwen3_config
from qft_core.train.fast_path import FastPath, apply_fast_path
from qft_core.train.loss import TokenLossSum, causal_lm
from qft_core.train.parallel import full_tensor, replicate_with_ddp, shard_with_fsdp2

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU = torch.device("cpu")


@pytest.fixture
def one_rank_group():
    torch._dynamo.reset()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    with torch._dynamo.config.patch(optimize_ddp=True):  # apply_fast_path sets it; restored after the test
        yield
    dist.destroy_process_group()
    torch._dynamo.reset()


def _tiny_lora_model() -> torch.nn.Module:
    """qwen3-tiny with random weights and r 128 adapters: each layer's 1.2 MB of LoRA weights pass DDP's 1 MiB
    first bucket, so dynamo's DDP optimizer splits a compiled layer as it does Qwen3-4B's at r 16."""
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config())
    peft_model = get_peft_model(model, LoraConfig(r=128, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    return peft_model


def _step(model: torch.nn.Module, peft_model: torch.nn.Module) -> tuple[float, float]:
    input_ids = torch.randint(0, 151_936, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_sum, count = model(input_ids, input_ids)
    (loss_sum / count).backward()
    grads = [full_tensor(p.grad).norm() for p in peft_model.parameters() if p.requires_grad]
    return float(loss_sum / count), float(torch.linalg.vector_norm(torch.stack(grads)))


def _unwrapped_step() -> tuple[float, float]:
    peft_model = _tiny_lora_model()
    return _step(TokenLossSum(peft_model), peft_model)


@pytest.mark.parametrize(("split", "graphs"), [(True, 4), (False, 2)])
def test_ddp_splits_compiled_layers_only_when_the_fast_path_says(one_rank_group, split: bool, graphs: int) -> None:
    expected = _unwrapped_step()
    peft_model = _tiny_lora_model()
    counter = CompileCounter()
    apply_fast_path(peft_model, FastPath(compile_layers=True, ddp_graph_split=split), backend=counter)
    assert torch._dynamo.config.optimize_ddp is split

    result = _step(replicate_with_ddp(TokenLossSum(peft_model), CPU), peft_model)

    # Two layer graphs (layer 0's input needs no gradient, layer 1's does), each split in two at the bucket or whole.
    assert counter.frame_count == graphs
    assert result == pytest.approx(expected, rel=1e-6)


def test_fsdp2_with_compiled_layers_gives_the_unsharded_loss(one_rank_group) -> None:
    expected = _unwrapped_step()
    peft_model = _tiny_lora_model()
    apply_fast_path(peft_model, FastPath(compile_layers=True), backend="aot_eager")
    objective = TokenLossSum(peft_model)
    model = shard_with_fsdp2(objective, causal_lm(peft_model).get_decoder().layers, CPU, 1, torch.float32)

    result = _step(model, peft_model)

    assert all(layer._compiled_call_impl is not None for layer in causal_lm(peft_model).get_decoder().layers)
    assert result == pytest.approx(expected, rel=1e-5)
