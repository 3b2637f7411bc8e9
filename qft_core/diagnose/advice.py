"""Advice for the next training run: concrete setting changes read off the run's findings, the plan that ran,
the configuration and, once the adapter is evaluated, the evaluation report, each with the numbers behind it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qft_core.config import QftConfig
from qft_core.diagnose.monitor_report import Finding, MonitorReport
from qft_core.evaluate.report import EvaluationReport
from qft_core.evaluate.suggestions import MAX_UNCLOSED_RATE
from qft_core.train.plan import MIN_LORA_RANK, TrainingPlan

# Learning-rate changes: divergence is cut harder than isolated gradient spikes; a slow early plateau is pushed.
DIVERGENCE_LR_DIVISOR = 3
EXPLOSION_LR_DIVISOR = 2
SLOW_PLATEAU_LR_FACTOR = 2
# A run still improving at its last step gets this many times its epochs (or max_steps).
MORE_TRAINING_FACTOR = 1.5
# A plateau that began before this share of the run's epochs wasted the rest of them.
EARLY_CONVERGENCE_SHARE = 0.6
# LoRA ranks up to this are "low": an adapter that stops learning without overfitting gets more room.
LOW_LORA_RANK = 8
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
# Validation loss at most this far above the smoothed train loss: the adapter does not memorise.
UNDERFIT_GAP = 0.05
DROPOUT_FLOOR = 0.1
DROPOUT_STEP = 0.05
# The answer metric whose gain over the base model says whether fine-tuning helped.
ANSWER_METRIC = "rougeL_char_f1"
# The evaluation report's names of the two models compared.
FINE_TUNED, BASE = "finetuned", "base"


class SettingChange(BaseModel):
    """One change for the next run: the config key, its value in this run, the proposed value, why, and the
    numbers that motivate it."""

    model_config = ConfigDict(extra="forbid")

    setting: str
    current: Any
    proposed: Any
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


def advise(
    findings: MonitorReport,
    plan: TrainingPlan,
    config: QftConfig,
    evaluation: EvaluationReport | Mapping[str, Any] | None = None,
) -> list[SettingChange]:
    """Setting changes for the next run, in the order learning rate, epochs, batch, LoRA, reasoning loss; at most
    one per setting (the first rule that fires wins: divergence before spikes, overfitting before more epochs,
    and so on).

    Diagnosis runs after evaluation: `findings` is the trained run's report (`monitor_run` on its run folder),
    `plan` the plan it trained with, and `evaluation` the evaluation of its adapter (the `EvaluationReport` or
    report.json's content). The rules that compare the fine-tuned model with the base model (answers no better,
    reasoning left unclosed or less coherent) read the evaluation's primary set and fire only when it is given;
    without it the advice rests on the training findings alone.
    """
    context = _Context(findings, plan, config, _headlines(evaluation))
    rules = (
        _learning_rate,
        _epochs,
        _batch,
        _micro_batch,
        _packing,
        _lora_rank,
        _lora_targets,
        _lora_dropout,
        _loss_on_reasoning,
    )
    changes: list[SettingChange] = []
    for rule in rules:
        change = rule(context)
        if change is not None and all(c.setting != change.setting for c in changes):
            changes.append(change)
    return changes


def advice_markdown(changes: list[SettingChange]) -> str:
    lines = ["## Suggestions for the next run", ""]
    if not changes:
        return "\n".join([*lines, "None: nothing in this run calls for a change."]) + "\n"
    lines += ["| setting | current | proposed | why | evidence |", "|---|---|---|---|---|"]
    for s in changes:
        evidence = ", ".join(f"{key}={_show(value)}" for key, value in s.evidence.items())
        lines.append(f"| `{s.setting}` | {_show(s.current)} | {_show(s.proposed)} | {s.reason} | {evidence} |")
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_show(item) for item in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    return str(value)


def round_significant(value: float, digits: int = 3) -> float:
    """`value` to `digits` significant digits (2e-3 / 3 → 6.67e-4)."""
    return float(f"{value:.{digits}g}")


def _ceil_hundredth(value: float) -> float:
    return math.ceil(round(value * 100, 6)) / 100


class _Context:
    def __init__(
        self, report: MonitorReport, plan: TrainingPlan, config: QftConfig, headlines: dict[str, dict[str, float]]
    ) -> None:
        self.report = report
        self.stats = report.stats
        self.plan = plan
        self.config = config
        self.training = config.training
        self.fine_tuned = headlines[FINE_TUNED]
        self.base = headlines[BASE]
        self.tolerance = config.eval.regression_tolerance

    def first(self, kind: str) -> Finding | None:
        return next(iter(self.report.of_kind(kind)), None)

    def finished(self) -> bool:
        stats = self.stats
        return stats.total_steps is not None and stats.last_step is not None and stats.last_step >= stats.total_steps

    def answer_gain(self) -> float | None:
        ours, theirs = self.fine_tuned.get(ANSWER_METRIC), self.base.get(ANSWER_METRIC)
        return None if ours is None or theirs is None else ours - theirs

    def validation_gap(self) -> float | None:
        """(last validation loss − smoothed train loss) / smoothed train loss."""
        train, val = self.stats.smoothed_loss, self.stats.last_val_loss
        return None if not train or val is None else (val - train) / train

    def underfitting(self) -> dict[str, Any] | None:
        """Evidence that the adapter stopped learning without memorising: a plateau that lasts to the end with the
        validation loss within UNDERFIT_GAP of the train loss, or a fine-tuned answer metric hardly above the base
        model's."""
        if self.first("overfitting") or self.first("divergence"):
            return None
        plateau = next((f for f in self.report.of_kind("plateau") if f.evidence["ongoing"]), None)
        gap = self.validation_gap()
        if plateau is not None and gap is not None and gap <= UNDERFIT_GAP:
            return {"plateau_step": plateau.step, "plateau_loss": plateau.evidence["level"], "val_gap": gap}
        gain = self.answer_gain()
        if gain is not None and gain <= self.tolerance:
            return {f"{ANSWER_METRIC}_gain": gain, "tolerance": self.tolerance}
        return None

    def by_training_length(self, factor: float, reason: str, evidence: dict[str, Any]) -> SettingChange:
        """Scale the run's length: max_steps when set, else epochs."""
        if self.training.max_steps is not None:
            proposed = max(1, round(self.training.max_steps * factor))
            return SettingChange(
                setting="training.max_steps", current=self.training.max_steps, proposed=proposed,
                reason=reason, evidence=evidence,
            )
        return SettingChange(
            setting="training.epochs", current=self.training.epochs,
            proposed=_ceil_hundredth(self.training.epochs * factor), reason=reason, evidence=evidence,
        )

    def stop_at(self, step: int, epoch: float | None, reason: str, evidence: dict[str, Any]) -> SettingChange:
        """End the next run where this one was best: at that step (max_steps set) or that epoch."""
        if self.training.max_steps is not None or epoch is None:
            current = self.training.max_steps if self.training.max_steps is not None else self.stats.last_step
            return SettingChange(
                setting="training.max_steps", current=current, proposed=step, reason=reason, evidence=evidence
            )
        return SettingChange(
            setting="training.epochs", current=self.training.epochs, proposed=max(_ceil_hundredth(epoch), 0.01),
            reason=reason, evidence=evidence,
        )


def _headlines(evaluation: EvaluationReport | Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """{FINE_TUNED: {metric: mean}, BASE: {...}} of the evaluation's primary set: the metric means and the
    generation statistics (closed_by_model_rate, …); empty without an evaluation."""
    if evaluation is None:
        return {FINE_TUNED: {}, BASE: {}}
    data = evaluation.data if isinstance(evaluation, EvaluationReport) else evaluation
    summary = data["sets"][data["primary_set"]]
    found: dict[str, dict[str, float]] = {}
    for model in (FINE_TUNED, BASE):
        values = {}
        metrics = {name: value.get("mean") for name, value in summary["metrics"].get(model, {}).items()}
        for name, value in {**metrics, **summary.get("generation", {}).get(model, {})}.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                values[name] = float(value)
        found[model] = values
    return found


# -- the rules, one setting each ---------------------------------------------------------------------------------


def _learning_rate(c: _Context) -> SettingChange | None:
    lr = c.training.learning_rate
    divergence = c.first("divergence")
    if divergence is not None:
        return SettingChange(
            setting="training.learning_rate", current=lr, proposed=round_significant(lr / DIVERGENCE_LR_DIVISOR),
            reason=f"the loss diverged ({divergence.message}); lower the learning rate {DIVERGENCE_LR_DIVISOR}×",
            evidence={"divergence_step": divergence.step, **divergence.evidence},
        )
    spikes = c.report.of_kind("gradient_explosion")
    if spikes:
        worst = max(spikes, key=lambda f: f.evidence["factor"])
        return SettingChange(
            setting="training.learning_rate", current=lr, proposed=round_significant(lr / EXPLOSION_LR_DIVISOR),
            reason=(
                f"{len(spikes)} gradient-norm spike(s), the worst {worst.evidence['factor']:.1f}× the running median "
                f"at step {worst.step}; lower the learning rate {EXPLOSION_LR_DIVISOR}×"
            ),
            evidence={"spikes": len(spikes), "worst_step": worst.step, "worst_factor": worst.evidence["factor"]},
        )
    slow = next((f for f in c.report.of_kind("plateau") if f.evidence["slow"]), None)
    if slow is not None:
        return SettingChange(
            setting="training.learning_rate", current=lr, proposed=round_significant(lr * SLOW_PLATEAU_LR_FACTOR),
            reason=(
                f"the loss stalled early (from step {slow.step}) after only a {slow.evidence['drop_before']:.1%} drop "
                f"with no spike or divergence; raise the learning rate {SLOW_PLATEAU_LR_FACTOR}×"
            ),
            evidence={"plateau_step": slow.step, "drop_before": slow.evidence["drop_before"]},
        )
    return None


def _epochs(c: _Context) -> SettingChange | None:
    overfitting = c.first("overfitting")
    if overfitting is not None:
        evidence = overfitting.evidence
        return c.stop_at(
            evidence["best_val_step"],
            evidence["best_val_epoch"],
            reason=(
                f"validation loss was best ({evidence['best_val_loss']:.4g}) at step {evidence['best_val_step']} and "
                f"rose to {evidence['last_val_loss']:.4g} by step {evidence['last_val_step']} while the train loss "
                "kept falling: stop at the best step"
            ),
            evidence=evidence,
        )
    if c.report.status == "improving" and c.finished():
        return c.by_training_length(
            MORE_TRAINING_FACTOR,
            reason=(
                f"the smoothed loss still fell {c.stats.tail_improvement:.1%} over the last {c.stats.window_steps} "
                f"steps of the run: train {MORE_TRAINING_FACTOR:g}× longer"
            ),
            evidence={"tail_improvement": c.stats.tail_improvement, "last_step": c.stats.last_step},
        )
    plateau = next((f for f in c.report.of_kind("plateau") if f.evidence["ongoing"] and not f.evidence["slow"]), None)
    epoch, last_epoch = (plateau.evidence["start_epoch"], c.stats.last_epoch) if plateau else (None, None)
    if plateau and epoch is not None and last_epoch and epoch <= EARLY_CONVERGENCE_SHARE * last_epoch:
        return c.stop_at(
            plateau.step,
            epoch,
            reason=(
                f"the loss converged at step {plateau.step} (epoch {epoch:.2f} of {last_epoch:.2f}); later steps did "
                "not improve it: a shorter run gives the same adapter"
            ),
            evidence={"plateau_step": plateau.step, "plateau_epoch": epoch, "last_epoch": last_epoch},
        )
    return None


def _batch(c: _Context) -> SettingChange | None:
    current = c.training.global_batch_size
    noisy = c.first("noisy_loss")
    if noisy is not None:
        return SettingChange(
            setting="training.global_batch_size", current=current, proposed=current * 2,
            reason=(
                f"the loss moves {noisy.evidence['loss_noise']:.1%} from step to step; a global batch twice as large "
                "averages that noise down by about √2 (keep the learning rate, or raise it up to √2×)"
            ),
            evidence={**noisy.evidence, "effective_global_batch": c.plan.global_batch_size},
        )
    comm = c.first("communication_bound")
    if comm is not None and c.plan.world_size > 1:
        return SettingChange(
            setting="training.global_batch_size", current=current, proposed=current * 2,
            reason=(
                f"{comm.evidence['comm_share']:.0%} of step time is communication; twice the global batch doubles the "
                "accumulation between gradient syncs, halving the sync cost per token"
            ),
            evidence={**comm.evidence, "world_size": c.plan.world_size, "strategy": c.plan.strategy},
        )
    return None


def _micro_batch(c: _Context) -> SettingChange | None:
    oom = c.first("oom")
    if oom is None or c.stats.micro_batch_last is None:
        return None
    return SettingChange(
        setting="training.micro_batch_size", current=c.training.micro_batch_size, proposed=c.stats.micro_batch_last,
        reason=(
            f"the run ran out of memory {oom.evidence['oom_events']} time(s) and backed off from micro-batch "
            f"{oom.evidence['micro_batch_first']} to {c.stats.micro_batch_last}; start there (each back-off of a "
            "multi-rank run restarts it from the last checkpoint)"
        ),
        evidence={**oom.evidence, "planned_micro_batch": c.plan.micro_batch_size},
    )


def _packing(c: _Context) -> SettingChange | None:
    imbalance = c.first("load_imbalance")
    if imbalance is None or c.training.packing:
        return None
    return SettingChange(
        setting="training.packing", current=False, proposed=True,
        reason=(
            f"ranks are imbalanced ({imbalance.evidence['load_balance_ratio']:.2f}× slowest over fastest); packing "
            "fills every row to the sequence length, so ranks compute on similar token counts"
        ),
        evidence=imbalance.evidence,
    )


def _lora_rank(c: _Context) -> SettingChange | None:
    r = c.plan.lora.r
    overfitting = c.first("overfitting")
    repeated = c.stats.last_epoch is not None and c.stats.last_epoch >= 1
    if overfitting is not None and repeated and r > MIN_LORA_RANK:
        return SettingChange(
            setting="lora.r", current=r, proposed=max(MIN_LORA_RANK, r // 2),
            reason=(
                f"the adapter overfits data it saw {c.stats.last_epoch:.2f} times; half the rank leaves it less room "
                "to memorise (halve lora.alpha with it to keep alpha/r)"
            ),
            evidence={"best_val_step": overfitting.evidence["best_val_step"], "epochs_seen": c.stats.last_epoch},
        )
    underfitting = c.underfitting()
    if underfitting is not None and r <= LOW_LORA_RANK:
        note = ""
        if r < c.config.lora.r:
            note = f" (the planner lowered it from lora.r={c.config.lora.r} to fit memory: a larger rank needs more)"
        return SettingChange(
            setting="lora.r", current=r, proposed=2 * r,
            reason=(
                f"the loss stopped improving without overfitting at a low rank {r}{note}; double it (and lora.alpha "
                "with it) for more capacity"
            ),
            evidence=underfitting,
        )
    return None


def _lora_targets(c: _Context) -> SettingChange | None:
    targets = c.plan.lora.target_modules
    missing = [name for name in MLP_TARGETS if name not in targets]
    underfitting = c.underfitting()
    if not missing or underfitting is None:
        return None
    return SettingChange(
        setting="lora.target_modules", current=list(targets), proposed=[*targets, *missing],
        reason=(
            f"the loss stopped improving without overfitting and the MLP projections ({', '.join(missing)}) carry no "
            "adapter; they hold much of a model's factual knowledge"
        ),
        evidence=underfitting,
    )


def _lora_dropout(c: _Context) -> SettingChange | None:
    overfitting = c.first("overfitting")
    if overfitting is None:
        return None
    dropout = c.plan.lora.dropout
    return SettingChange(
        setting="lora.dropout", current=dropout, proposed=round(max(DROPOUT_FLOOR, dropout + DROPOUT_STEP), 4),
        reason="the adapter overfits; more dropout on its input regularises it",
        evidence={"best_val_loss": overfitting.evidence["best_val_loss"],
                  "last_val_loss": overfitting.evidence["last_val_loss"]},
    )


def _loss_on_reasoning(c: _Context) -> SettingChange | None:
    """Reasoning out of the loss when the fine-tuned reasoning got worse or dominates the loss; back in when the
    answers did not improve while reasoning was left out."""
    if c.training.loss_on_reasoning:
        evidence = _poor_thinking(c)
        dominating = c.first("reasoning_loss_dominates")
        if evidence is None and dominating is not None:
            evidence = dominating.evidence
        if evidence is None:
            return None
        return SettingChange(
            setting="training.loss_on_reasoning", current=True, proposed=False,
            reason=(
                "the reasoning is what goes wrong (worse thinking metrics than the base model, or a reasoning loss "
                "that outweighs the answer loss); train on the answers only and keep the model's own reasoning"
            ),
            evidence=evidence,
        )
    gain = c.answer_gain()
    if gain is not None and gain <= c.tolerance:
        return SettingChange(
            setting="training.loss_on_reasoning", current=False, proposed=True,
            reason=(
                f"with the reasoning left out of the loss, {ANSWER_METRIC} gained only {gain:+.3f} over the base "
                "model; learning the expert reasoning gives the answers their path"
            ),
            evidence={f"{ANSWER_METRIC}_gain": gain, "tolerance": c.tolerance},
        )
    return None


def _poor_thinking(c: _Context) -> dict[str, Any] | None:
    """Evaluation evidence that the fine-tuned model reasons worse: it leaves reasoning unclosed more than
    MAX_UNCLOSED_RATE, or its closing rate or coherence falls below the base model's by more than the tolerance."""
    found = {}
    # The share of completions whose `</think>` the model wrote itself (the evaluation's generation statistic).
    ours, theirs = c.fine_tuned.get("closed_by_model_rate"), c.base.get("closed_by_model_rate")
    if ours is not None and (ours < 1 - MAX_UNCLOSED_RATE or (theirs is not None and ours < theirs - c.tolerance)):
        found.update({"closed_by_model_rate_fine_tuned": ours, "closed_by_model_rate_base": theirs})
    ours, theirs = c.fine_tuned.get("thinking_coherence"), c.base.get("thinking_coherence")
    if ours is not None and theirs is not None and ours < theirs - c.tolerance:
        found.update({"thinking_coherence_fine_tuned": ours, "thinking_coherence_base": theirs})
    return found or None
