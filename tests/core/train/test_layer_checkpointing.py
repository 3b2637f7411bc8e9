"""Checkpointing the first k decoder layers (the plan's checkpoint_layers) through the engine's own model on
qwen3-tiny: exactly those layers recompute, and loss and gradients equal those of no checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qft_core.config import ModelConfig, PathsConfig
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.train.engine import Trainer
from qft_core.train.layer_checkpointing import CheckpointLayersError, checkpoint_first_layers
from qft_core.train.loss import causal_lm
from qft_core.train.parallel import Runtime
from qft_core.train.plan import LoraSettings
from tiny_run import TARGETS, cpu_plan, make_job, write_synthetic_split


class QuietReporter:
    def log(self, message: str) -> None:
        pass

    def metrics(self, step_record: dict) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpointing-inputs")
    return {
        "model": ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig())),
        "train": write_synthetic_split(root / "train.safetensors", count=8, seed=1),
        "root": root,
    }


def _trainer(inputs: dict[str, Path], checkpoint_layers: int) -> Trainer:
    """The engine's model for a plan checkpointing `checkpoint_layers` layers, LoRA dropout 0.1 (the recompute
    must draw the same masks), and LoRA B drawn non-zero so that every adapter weight gets a gradient."""
    plan = cpu_plan().model_copy(
        update={
            "checkpoint_layers": checkpoint_layers,
            "lora": LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=TARGETS),
        }
    )
    output = inputs["root"] / f"run-{checkpoint_layers}"
    trainer = Trainer(make_job(inputs["model"], inputs["train"], None, output, plan), Runtime.single(), QuietReporter())
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in trainer.peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    trainer.model.train()  # as Trainer.run does: checkpointing and dropout act in training mode only
    return trainer


def _loss_and_gradients(trainer: Trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = trainer._micro_batch([trainer.train_data[index] for index in range(4)])
    torch.manual_seed(11)
    loss_sum, count = trainer.model(**batch.inputs)
    loss = loss_sum / count
    loss.backward()
    gradients = {
        name: parameter.grad.clone() for name, parameter in trainer.peft_model.named_parameters() if parameter.requires_grad
    }
    return loss.detach(), gradients


def _mlp_starts(trainer: Trainer) -> list[int]:
    """A counter of how often each decoder layer's MLP starts: twice in a step where the layer recomputes (the
    recompute stops once it has what backward needs, inside the MLP, so a forward hook would not see it)."""
    layers = causal_lm(trainer.peft_model).get_decoder().layers
    starts = [0] * len(layers)
    for index, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda *_, index=index: starts.__setitem__(index, starts[index] + 1))
    return starts


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _loss_and_gradients(_trainer(inputs, 0))


@pytest.mark.parametrize(("checkpoint_layers", "starts"), [(1, [2, 1]), (2, [2, 2])])
def test_first_k_layers_recompute_and_give_the_loss_and_gradients_of_no_checkpointing(
    inputs: dict[str, Path],
    reference: tuple[torch.Tensor, dict[str, torch.Tensor]],
    checkpoint_layers: int,
    starts: list[int],
) -> None:
    trainer = _trainer(inputs, checkpoint_layers)
    counted = _mlp_starts(trainer)

    loss, gradients = _loss_and_gradients(trainer)

    assert counted == starts
    reference_loss, reference_gradients = reference
    torch.testing.assert_close(loss, reference_loss)
    assert gradients.keys() == reference_gradients.keys()
    assert len(gradients) == 2 * 2 * len(TARGETS)  # A and B of 3 projections in each of qwen3-tiny's 2 layers
    for name, gradient in gradients.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradient, reference_gradients[name], msg=name)


def test_without_checkpointing_every_layer_runs_once(inputs: dict[str, Path]) -> None:
    trainer = _trainer(inputs, 0)
    counted = _mlp_starts(trainer)

    _loss_and_gradients(trainer)

    assert counted == [1, 1]


def test_a_checkpointed_layer_runs_once_without_gradients(inputs: dict[str, Path]) -> None:
    trainer = _trainer(inputs, 2)
    counted = _mlp_starts(trainer)
    batch = trainer._micro_batch([trainer.train_data[0]])

    with torch.no_grad():
        trainer.model(**batch.inputs)

    assert counted == [1, 1]


def test_checkpoint_wraps_a_compiled_layer_from_outside(
    inputs: dict[str, Path], reference: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    """The fast path compiles each layer (`Module.compile`) on CUDA; on CPU the aot_eager backend runs the same
    autograd graph capture, and the checkpoint around it must still recompute it and give the same gradients."""
    trainer = _trainer(inputs, 0)
    layers = causal_lm(trainer.peft_model).get_decoder().layers
    checkpoint_first_layers(layers, 1)
    torch._dynamo.reset()
    for layer in layers:
        layer.compile(backend="aot_eager")

    loss, gradients = _loss_and_gradients(trainer)
    reference_loss, reference_gradients = reference

    torch.testing.assert_close(loss, reference_loss)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], msg=name)


def test_more_checkpointed_layers_than_the_model_has_names_both_counts(inputs: dict[str, Path]) -> None:
    with pytest.raises(CheckpointLayersError, match="checkpoint_layers 3: the model has 2 decoder layers"):
        _trainer(inputs, 3)
