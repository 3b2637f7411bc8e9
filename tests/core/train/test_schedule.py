"""The learning-rate schedule: warmup to the peak, then cosine, linear or constant."""

import math

import pytest
import torch

from qft_core.train.schedule import build_scheduler, lr_factor, warmup_steps


def test_warmup_climbs_linearly_to_the_peak() -> None:
    assert warmup_steps(10, 0.2) == 2
    assert warmup_steps(10, 0.05) == 1
    assert [lr_factor(step, 10, 2, "cosine") for step in (0, 1)] == [0.5, 1.0]


def test_decay_shapes_after_warmup() -> None:
    # After 2 warmup steps of 10, step s is (s - 1) ninths of the way through the decay.
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 9)))
    assert lr_factor(9, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 9)))
    assert lr_factor(2, 10, 2, "linear") == pytest.approx(8 / 9)
    assert lr_factor(9, 10, 2, "linear") == pytest.approx(1 / 9)
    assert lr_factor(9, 10, 2, "constant") == 1.0


def test_unknown_schedule_names_the_config_key() -> None:
    with pytest.raises(ValueError, match="training.schedule"):
        lr_factor(5, 10, 2, "exponential")


def test_scheduler_sets_each_steps_learning_rate() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = build_scheduler(optimizer, total_steps=4, warmup_ratio=0.5, schedule="linear")
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.2, 0.4, 0.4 * 2 / 3, 0.4 * 1 / 3])
