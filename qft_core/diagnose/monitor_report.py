"""What the run monitor reports, and the thresholds it judges by: the status, findings and statistics that
findings.py reads off metrics.jsonl and that the run report, the advice and the diagnosis asset are made from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["no_data", "warming_up", "improving", "converged", "diverging", "overfitting", "not_learning"]
Severity = Literal["info", "warning", "critical"]
FindingKind = Literal[
    "gradient_explosion",
    "divergence",
    "overfitting",
    "plateau",
    "noisy_loss",
    "skipped_steps",
    "oom",
    "load_imbalance",
    "communication_bound",
    "metric_regression",
    "reasoning_loss_dominates",
    "not_learning",
]


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds of the monitor's judgements. Window and smoothing scale with the number of steps logged."""

    # Trailing mean of the train loss over this share of the logged steps, within [min, max] steps.
    smoothing_fraction: float = 0.05
    min_smoothing: int = 3
    max_smoothing: int = 50
    # Trend window (convergence, plateau, noise) as a share of the logged steps, within [min, max] steps.
    window_fraction: float = 0.2
    min_window: int = 5
    max_window: int = 200
    # Below this relative drop of the smoothed loss over a window, the loss is flat.
    converged_improvement: float = 0.01
    # A plateau that begins in the first half of the run after less than this relative drop is "slow".
    slow_plateau_drop: float = 0.1
    # Smoothed loss this far above its minimum, for at least half a window, is divergence.
    divergence_rise: float = 0.1
    # Grad norm above this multiple of the running median of accepted steps is a spike (the engine skips steps
    # only above training.anomaly_spike_factor, 10 by default; smaller spikes still say the run is on edge).
    spike_factor: float = 5.0
    spike_history: int = 50
    spike_min_history: int = 5
    # Validation loss this far above its best, with this many validations after the best, is overfitting.
    overfit_margin: float = 0.02
    overfit_points: int = 2
    # Per-step loss noise (std of step-to-step changes / √2, relative to the loss) above this is noisy.
    noisy_loss: float = 0.1
    # Slowest rank's total step time over the fastest's above this is imbalance.
    imbalance_ratio: float = 1.15
    # Share of step time spent in collectives above this is communication-bound.
    comm_share: float = 0.25
    # ETA from the mean time of this many most recent steps.
    eta_steps: int = 20
    # A Chinese accuracy this far (absolute) below its best, or a loss part this far (relative) above, regressed.
    metric_drop: float = 0.02
    # Validation loss per reasoning token this many times that per answer token: reasoning dominates the loss.
    reasoning_dominance: float = 1.5
    # A best loss (validation, else smoothed train) above this share of ln(vocabulary), the loss of guessing
    # uniformly, is a run that learned nothing: a random-weight model on a few steps stays at about 0.99.
    not_learning_share: float = 0.9


class Finding(BaseModel):
    """One thing the monitor noticed: what, how serious, at which step, and the numbers that show it."""

    model_config = ConfigDict(extra="forbid")

    kind: FindingKind
    severity: Severity
    step: int | None
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class RunStats(BaseModel):
    """The numbers behind the report; None where the metrics do not say."""

    model_config = ConfigDict(extra="forbid")

    steps_logged: int = 0
    last_step: int | None = None
    total_steps: int | None = None
    last_epoch: float | None = None
    smoothing_steps: int | None = None
    window_steps: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    smoothed_loss: float | None = None
    best_smoothed_loss: float | None = None
    best_smoothed_step: int | None = None
    # Relative drop of the smoothed loss over the last window (negative: it rose).
    tail_improvement: float | None = None
    loss_noise: float | None = None
    first_val_loss: float | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    best_val_step: int | None = None
    best_val_epoch: float | None = None
    last_lr: float | None = None
    median_grad_norm: float | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_gib: float | None = None
    skipped_steps: int = 0
    skipped_by_reason: dict[str, int] = Field(default_factory=dict)
    oom_events: int = 0
    micro_batch_first: int | None = None
    micro_batch_last: int | None = None
    restarts: int = 0
    world_size: int | None = None
    comm_share: float | None = None
    load_balance_ratio: float | None = None
    worst_step_balance_ratio: float | None = None
    # Per Chinese metric: last, best and the step of the best.
    chinese: dict[str, dict[str, float]] = Field(default_factory=dict)


class MonitorReport(BaseModel):
    """The monitor's verdict on a run: its status, ETA, findings and the numbers behind them."""

    model_config = ConfigDict(extra="forbid")

    status: Status
    eta_s: float | None
    findings: list[Finding]
    stats: RunStats
    # The metrics file read, so the curves can be drawn later.
    source: str | None = None

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [finding for finding in self.findings if finding.kind == kind]
