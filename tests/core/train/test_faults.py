"""Injected faults: parsed from the environment, aimed at one rank, fired on the first attempt only."""

import pytest
import torch

from qft_core.train.faults import FaultConfigError, Faults

ENV = {"QFT_FAULT_OOM_AT_STEP": "3", "QFT_FAULT_NAN_AT_STEPS": "4, 6", "QFT_FAULT_KILL_AT_STEP": "9"}


def test_faults_are_read_for_the_chosen_rank_only() -> None:
    armed = Faults.from_env(rank=0, resumed=False, environ=ENV)
    assert (armed.oom_at_step, armed.nan_at_steps, armed.kill_at_step) == (3, frozenset({4, 6}), 9)
    assert Faults.from_env(rank=1, resumed=False, environ=ENV) == Faults()
    assert Faults.from_env(rank=1, resumed=False, environ={**ENV, "QFT_FAULT_RANK": "1"}).kill_at_step == 9


def test_a_restarted_or_resumed_attempt_runs_clean() -> None:
    assert Faults.from_env(rank=0, resumed=False, environ={**ENV, "TORCHELASTIC_RESTART_COUNT": "1"}) == Faults()
    assert Faults.from_env(rank=0, resumed=True, environ=ENV) == Faults()


def test_oom_fires_once_and_nan_poisons_only_its_steps() -> None:
    faults = Faults.from_env(rank=0, resumed=False, environ=ENV)
    faults.raise_oom_if_due(2)
    with pytest.raises(torch.OutOfMemoryError, match="injected by QFT_FAULT_OOM_AT_STEP=3"):
        faults.raise_oom_if_due(3)
    faults.raise_oom_if_due(3)  # the retry of step 3 succeeds
    loss = torch.tensor(2.0)
    assert faults.poison_loss_if_due(5, loss) is loss
    assert torch.isnan(faults.poison_loss_if_due(6, loss))


def test_malformed_fault_variables_are_named() -> None:
    with pytest.raises(FaultConfigError, match="QFT_FAULT_NAN_AT_STEPS='3;4'"):
        Faults.from_env(rank=0, resumed=False, environ={"QFT_FAULT_NAN_AT_STEPS": "3;4"})
    with pytest.raises(FaultConfigError, match="QFT_FAULT_OOM_AT_STEP='soon'"):
        Faults.from_env(rank=0, resumed=False, environ={"QFT_FAULT_OOM_AT_STEP": "soon"})
