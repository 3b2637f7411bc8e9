"""The findings of a training run: read the engine's metrics JSONL and judge how the run went (trend, ETA,
anomalies, load balance) as a MonitorReport that the run report and the advice are made from."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from qft_core.diagnose.curves import CHINESE_ACCURACIES, CHINESE_METRICS, read_metrics, series
from qft_core.diagnose.monitor_report import Finding, MonitorReport, MonitorSettings, RunStats, Status
from qft_core.train.job import SUMMARY_FILE, TrainingSummary
from qft_core.train.metrics_log import METRICS_FILE, eta_seconds


class MonitorError(ValueError):
    """The monitor cannot find or read what it was pointed at; the message names the path."""


# -- reading ---------------------------------------------------------------------------------------------------


def monitor_run(
    run: str | Path,
    total_steps: int | None = None,
    settings: MonitorSettings | None = None,
    vocab_size: int | None = None,
) -> MonitorReport:
    """The report of a run folder (its metrics.jsonl, and training_summary.json when the run finished) or of a
    metrics file. Without `total_steps`, a finished run's summary gives them; with `vocab_size` a loss that
    stays near ln(vocab_size) is judged "not_learning"."""
    run = Path(run)
    metrics_path = run / METRICS_FILE if run.is_dir() else run
    if not metrics_path.is_file():
        raise MonitorError(f"{metrics_path}: no metrics file to monitor")
    summary_path = metrics_path.parent / SUMMARY_FILE
    summary = None
    if summary_path.is_file():
        try:
            summary = TrainingSummary.read(summary_path)
        except ValidationError as error:
            raise MonitorError(f"{summary_path}: not a training summary: {error.errors()[0]['msg']}") from None
    return monitor_records(
        read_metrics(metrics_path),
        total_steps,
        settings=settings,
        summary=summary,
        source=str(metrics_path),
        vocab_size=vocab_size,
    )


def step_records(records: Iterable[dict]) -> list[dict]:
    """The per-step records in step order, events left out; a step logged twice (a resume that re-ran it)
    keeps its last record."""
    by_step = {record["step"]: record for record in records if "event" not in record and "step" in record}
    return [by_step[step] for step in sorted(by_step)]


def trailing_mean(values: Sequence[float], span: int) -> list[float]:
    """Mean of each value with up to span − 1 values before it."""
    means, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= span:
            total -= values[index - span]
        means.append(total / min(index + 1, span))
    return means


def anomaly_category(anomaly: str) -> str:
    """The kind of the engine's anomaly text without its numbers ('non-finite loss nan' → 'non-finite loss')."""
    for category in ("non-finite loss", "non-finite gradient norm"):
        if anomaly.startswith(category):
            return category
    if anomaly.startswith("gradient norm"):
        return "gradient-norm spike"
    return anomaly


# -- judging ---------------------------------------------------------------------------------------------------


@dataclass
class _Losses:
    """The train losses of accepted steps (finite, not skipped) and their trailing mean."""

    steps: list[int]
    epochs: list[float | None]
    values: list[float]
    smoothed: list[float]

    def smoothed_at(self, step: int) -> float | None:
        """The smoothed loss of the last accepted step at or before `step`."""
        found = None
        for index, logged in enumerate(self.steps):
            if logged > step:
                break
            found = self.smoothed[index]
        return found


def monitor_records(
    records: list[dict],
    total_steps: int | None = None,
    *,
    settings: MonitorSettings | None = None,
    summary: TrainingSummary | None = None,
    source: str | None = None,
    vocab_size: int | None = None,
) -> MonitorReport:
    """The report of a run's metrics records (step records and events, as the engine writes them)."""
    settings = settings or MonitorSettings()
    steps = step_records(records)
    events = [record for record in records if "event" in record]
    if total_steps is None and summary is not None:
        total_steps = summary.steps
    stats = RunStats(total_steps=total_steps)
    if not steps:
        return MonitorReport(status="no_data", eta_s=None, findings=[], stats=stats, source=source)

    n = len(steps)
    smoothing = _clamp(round(n * settings.smoothing_fraction), settings.min_smoothing, settings.max_smoothing)
    window = _clamp(round(n * settings.window_fraction), settings.min_window, settings.max_window)
    accepted = [r for r in steps if not r.get("skipped") and r.get("loss") is not None]
    values = [float(r["loss"]) for r in accepted]
    losses = _Losses(
        steps=[r["step"] for r in accepted],
        epochs=[r.get("epoch") for r in accepted],
        values=values,
        smoothed=trailing_mean(values, smoothing),
    )
    last = steps[-1]
    stats.steps_logged = n
    stats.last_step = last["step"]
    stats.last_epoch = last.get("epoch")
    stats.smoothing_steps, stats.window_steps = smoothing, window
    _loss_stats(stats, losses, window)
    _validation_stats(stats, steps)
    _step_stats(stats, steps, settings)

    findings = [
        *_explosions(steps, settings),
        *_skipped(stats, steps),
        *_divergence(losses, steps, window, settings),
        *_overfitting(stats, steps, losses, settings),
        *_plateaus(losses, window, total_steps, settings),
        *_noise(stats, settings),
        *_oom(stats, steps, events, summary),
        *_distributed(stats, steps, settings, summary),
        *_chinese(stats, steps, settings),
        *_not_learning(stats, vocab_size, settings),
    ]
    findings.sort(key=lambda finding: (finding.step is None, finding.step or 0))

    stats.restarts = max(sum(1 for event in events if event["event"] == "resume"), summary.restarts if summary else 0)
    eta = None
    if total_steps is not None:
        recent = [r["step_time_s"] for r in steps[-settings.eta_steps :] if r.get("step_time_s") is not None]
        eta = eta_seconds(recent, total_steps - last["step"])
        eta = None if math.isnan(eta) else eta
    return MonitorReport(
        status=_status(findings, stats, losses, window, settings),
        eta_s=eta,
        findings=findings,
        stats=stats,
        source=source,
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _loss_stats(stats: RunStats, losses: _Losses, window: int) -> None:
    if not losses.values:
        return
    stats.first_loss, stats.last_loss = losses.values[0], losses.values[-1]
    stats.smoothed_loss = losses.smoothed[-1]
    best = min(range(len(losses.smoothed)), key=losses.smoothed.__getitem__)
    stats.best_smoothed_loss, stats.best_smoothed_step = losses.smoothed[best], losses.steps[best]
    if len(losses.smoothed) > window:
        before = losses.smoothed[-window - 1]
        stats.tail_improvement = (before - losses.smoothed[-1]) / abs(before) if before else None
        tail = losses.values[-window - 1 :]
        changes = [b - a for a, b in zip(tail, tail[1:])]
        level = statistics.fmean(abs(value) for value in tail)
        if len(changes) >= 2 and level > 0:
            stats.loss_noise = statistics.stdev(changes) / math.sqrt(2) / level


def _validation_stats(stats: RunStats, steps: list[dict]) -> None:
    validation = [r for r in steps if r.get("val_loss") is not None]
    if not validation:
        return
    best = min(validation, key=lambda r: r["val_loss"])
    stats.first_val_loss, stats.last_val_loss = validation[0]["val_loss"], validation[-1]["val_loss"]
    stats.best_val_loss, stats.best_val_step, stats.best_val_epoch = best["val_loss"], best["step"], best.get("epoch")


def _step_stats(stats: RunStats, steps: list[dict], settings: MonitorSettings) -> None:
    recent = steps[-settings.eta_steps :]
    stats.last_lr = steps[-1].get("lr")
    norms = [r["grad_norm"] for r in steps if r.get("grad_norm") is not None]
    stats.median_grad_norm = statistics.median(norms) if norms else None
    times = [r["step_time_s"] for r in recent if r.get("step_time_s") is not None]
    stats.step_time_s = statistics.fmean(times) if times else None
    speeds = [r["tokens_per_s"] for r in recent if r.get("tokens_per_s") is not None]
    stats.tokens_per_s = statistics.fmean(speeds) if speeds else None
    memory = [r["memory_gib"] for r in steps if r.get("memory_gib") is not None]
    stats.peak_memory_gib = max(memory) if memory else None
    micro = [r["micro_batch_size"] for r in steps if r.get("micro_batch_size") is not None]
    if micro:
        stats.micro_batch_first, stats.micro_batch_last = micro[0], micro[-1]


def _explosions(steps: list[dict], settings: MonitorSettings) -> list[Finding]:
    """Grad-norm spikes over the running median of accepted, non-spike steps; consecutive spikes are one finding."""
    history: list[float] = []
    groups: list[list[tuple[dict, float]]] = []
    previous_index = None
    for index, record in enumerate(steps):
        norm = record.get("grad_norm")
        if norm is None:
            continue
        if len(history) >= settings.spike_min_history:
            median = statistics.median(history[-settings.spike_history :])
            if median > 0 and norm > settings.spike_factor * median:
                if previous_index == index - 1 and groups:
                    groups[-1].append((record, median))
                else:
                    groups.append([(record, median)])
                previous_index = index
                continue
        if not record.get("skipped"):
            history.append(norm)
    findings = []
    for group in groups:
        first, median = group[0]
        peak = max(record["grad_norm"] for record, _ in group)
        skipped = sum(1 for record, _ in group if record.get("skipped"))
        span = f"steps {first['step']}–{group[-1][0]['step']}" if len(group) > 1 else f"step {first['step']}"
        findings.append(
            Finding(
                kind="gradient_explosion",
                severity="critical" if len(group) >= 3 else "warning",
                step=first["step"],
                message=(
                    f"gradient norm spiked to {peak:.4g} at {span}, {peak / median:.1f}× the running median "
                    f"{median:.4g} ({skipped} of {len(group)} step(s) skipped by the engine)"
                ),
                evidence={
                    "grad_norm": peak,
                    "running_median": median,
                    "factor": peak / median,
                    "steps": [record["step"] for record, _ in group],
                    "skipped": skipped,
                },
            )
        )
    return findings


def _skipped(stats: RunStats, steps: list[dict]) -> list[Finding]:
    skipped = [r for r in steps if r.get("skipped")]
    stats.skipped_steps = len(skipped)
    reasons = Counter(anomaly_category(r.get("anomaly") or "unknown") for r in skipped)
    stats.skipped_by_reason = dict(sorted(reasons.items()))
    if not skipped:
        return []
    share = len(skipped) / len(steps)
    named = ", ".join(f"{count}× {reason}" for reason, count in stats.skipped_by_reason.items())
    return [
        Finding(
            kind="skipped_steps",
            severity="critical" if share > 0.1 else "warning",
            step=skipped[0]["step"],
            message=f"{len(skipped)} of {len(steps)} steps skipped without an update ({named})",
            evidence={
                "count": len(skipped),
                "share": share,
                "by_reason": stats.skipped_by_reason,
                "steps": [r["step"] for r in skipped[:20]],
            },
        )
    ]


def _divergence(losses: _Losses, steps: list[dict], window: int, settings: MonitorSettings) -> list[Finding]:
    """The smoothed loss rose more than `divergence_rise` above its minimum and stayed there for at least half a
    window, up to the last step; or the run ends in steps skipped for a non-finite loss."""
    smoothed = losses.smoothed
    if smoothed:
        low = min(range(len(smoothed)), key=smoothed.__getitem__)
        limit = smoothed[low] + abs(smoothed[low]) * settings.divergence_rise
        above = len(smoothed)
        while above > low + 1 and smoothed[above - 1] > limit:
            above -= 1
        persisted = len(smoothed) - above
        if persisted >= max(settings.min_smoothing, window // 2):
            return [
                Finding(
                    kind="divergence",
                    severity="critical",
                    step=losses.steps[above],
                    message=(
                        f"the smoothed train loss rose from its minimum {smoothed[low]:.4g} (step "
                        f"{losses.steps[low]}) to {smoothed[-1]:.4g} and stayed over "
                        f"{1 + settings.divergence_rise:g}× the minimum from step {losses.steps[above]} on"
                    ),
                    evidence={
                        "min_smoothed_loss": smoothed[low],
                        "min_step": losses.steps[low],
                        "last_smoothed_loss": smoothed[-1],
                        "rise": smoothed[-1] / smoothed[low] - 1 if smoothed[low] else None,
                        "steps_above": persisted,
                    },
                )
            ]
    trailing = 0
    for record in reversed(steps):
        if not (record.get("skipped") and anomaly_category(record.get("anomaly") or "") == "non-finite loss"):
            break
        trailing += 1
    if trailing >= 2:
        first = steps[-trailing]["step"]
        return [
            Finding(
                kind="divergence",
                severity="critical",
                step=first,
                message=f"the loss is non-finite in the last {trailing} steps (from step {first} on)",
                evidence={"non_finite_steps": trailing},
            )
        ]
    return []


def _overfitting(stats: RunStats, steps: list[dict], losses: _Losses, settings: MonitorSettings) -> list[Finding]:
    """Validation loss rising after its best while the smoothed train loss keeps falling."""
    validation = series(steps, "val_loss")
    if stats.best_val_step is None or stats.best_val_loss is None:
        return []
    after = [(step, value) for step, value in validation if step > stats.best_val_step]
    if len(after) < settings.overfit_points or not all(value > stats.best_val_loss for _, value in after):
        return []
    last_step, last_val = after[-1]
    train_at_best, train_at_last = losses.smoothed_at(stats.best_val_step), losses.smoothed_at(last_step)
    rose = last_val > stats.best_val_loss * (1 + settings.overfit_margin)
    if not rose or train_at_best is None or train_at_last is None or train_at_last >= train_at_best:
        return []
    return [
        Finding(
            kind="overfitting",
            severity="warning",
            step=after[0][0],
            message=(
                f"validation loss was best at step {stats.best_val_step} ({stats.best_val_loss:.4g}) and rose to "
                f"{last_val:.4g} by step {last_step}, while the smoothed train loss fell from {train_at_best:.4g} "
                f"to {train_at_last:.4g}"
            ),
            evidence={
                "best_val_loss": stats.best_val_loss,
                "best_val_step": stats.best_val_step,
                "best_val_epoch": stats.best_val_epoch,
                "last_val_loss": last_val,
                "last_val_step": last_step,
                "train_loss_at_best": train_at_best,
                "train_loss_at_last": train_at_last,
            },
        )
    ]


def _plateaus(losses: _Losses, window: int, total_steps: int | None, settings: MonitorSettings) -> list[Finding]:
    """Stretches of at least a window of steps in which the smoothed loss never beat its last mark by
    `converged_improvement`; one finding each, at the step of that mark."""
    smoothed = losses.smoothed
    if not smoothed:
        return []
    segments, mark = [], 0
    for index in range(1, len(smoothed) + 1):
        improved = index < len(smoothed) and smoothed[index] < smoothed[mark] * (1 - settings.converged_improvement)
        if improved or index == len(smoothed):
            # A stretch that climbs well above its mark is a rise (divergence's business), not a plateau.
            level = smoothed[mark] + abs(smoothed[mark]) * settings.divergence_rise
            if index - 1 - mark >= window and max(smoothed[mark:index]) <= level:
                segments.append((mark, index - 1, index == len(smoothed)))
            mark = index
    horizon = total_steps or losses.steps[-1]
    findings = []
    for start, end, ongoing in segments:
        drop = (smoothed[0] - smoothed[start]) / abs(smoothed[0]) if smoothed[0] else 0.0
        slow = losses.steps[start] <= horizon / 2 and drop < settings.slow_plateau_drop
        flat_steps = losses.steps[end] - losses.steps[start]
        if slow:
            note = f"early and after only a {drop:.1%} drop from the first loss: the model learns slowly"
        elif ongoing:
            note = "to the last step: converged"
        else:
            note = "then it improved again"
        findings.append(
            Finding(
                kind="plateau",
                severity="warning" if slow else "info",
                step=losses.steps[start],
                message=(
                    f"smoothed train loss flat at {smoothed[start]:.4g} from step {losses.steps[start]} for "
                    f"{flat_steps} steps (no {settings.converged_improvement:.0%} improvement), {note}"
                ),
                evidence={
                    "start_step": losses.steps[start],
                    "end_step": losses.steps[end],
                    "start_epoch": losses.epochs[start],
                    "level": smoothed[start],
                    "drop_before": drop,
                    "ongoing": ongoing,
                    "slow": slow,
                },
            )
        )
    return findings


def _noise(stats: RunStats, settings: MonitorSettings) -> list[Finding]:
    if stats.loss_noise is None or stats.loss_noise <= settings.noisy_loss:
        return []
    return [
        Finding(
            kind="noisy_loss",
            severity="info",
            step=None,
            message=(
                f"the train loss moves {stats.loss_noise:.1%} from step to step over the last {stats.window_steps} "
                "steps: gradients of one global batch are noisy"
            ),
            evidence={"loss_noise": stats.loss_noise, "window_steps": stats.window_steps},
        )
    ]


def _oom(stats: RunStats, steps: list[dict], events: list[dict], summary: TrainingSummary | None) -> list[Finding]:
    """Out-of-memory back-offs: the engine's oom events (single process), or halvings of the micro-batch between
    step records (a multi-rank run restarts with the smaller micro-batch and logs no event)."""
    oom_events = [event for event in events if event["event"] == "oom"]
    halvings = 0
    if stats.micro_batch_first and stats.micro_batch_last and stats.micro_batch_last < stats.micro_batch_first:
        halvings = round(math.log2(stats.micro_batch_first / stats.micro_batch_last))
    stats.oom_events = max(len(oom_events), halvings, summary.oom_events if summary else 0)
    if not stats.oom_events:
        return []
    step = oom_events[0].get("step") if oom_events else None
    if step is None:
        step = next(
            (r["step"] for r in steps if r.get("micro_batch_size", stats.micro_batch_first) < stats.micro_batch_first),
            None,
        )
    return [
        Finding(
            kind="oom",
            severity="warning",
            step=step,
            message=(
                f"{stats.oom_events} out-of-memory back-off(s): micro-batch {stats.micro_batch_first} → "
                f"{stats.micro_batch_last} per rank, with accumulation raised to keep the global batch"
            ),
            evidence={
                "oom_events": stats.oom_events,
                "micro_batch_first": stats.micro_batch_first,
                "micro_batch_last": stats.micro_batch_last,
            },
        )
    ]


def _distributed(
    stats: RunStats, steps: list[dict], settings: MonitorSettings, summary: TrainingSummary | None
) -> list[Finding]:
    """Load balance from per-rank step times (slowest rank's total over the fastest's) and the share of step
    time spent communicating, per rank where logged, else from comm_s / step_time_s."""
    ranked = [r for r in steps if len(r.get("rank_step_time_s") or []) > 1]
    stats.world_size = len(ranked[0]["rank_step_time_s"]) if ranked else (summary.world_size if summary else None)
    findings = []
    if ranked:
        totals = [sum(values) for values in zip(*(r["rank_step_time_s"] for r in ranked))]
        per_step = [(max(r["rank_step_time_s"]) / min(r["rank_step_time_s"]), r["step"]) for r in ranked
                    if min(r["rank_step_time_s"]) > 0]
        if min(totals) > 0:
            stats.load_balance_ratio = max(totals) / min(totals)
        if per_step:
            worst_ratio, worst_step = max(per_step, key=lambda pair: pair[0])
            stats.worst_step_balance_ratio = worst_ratio
        if stats.load_balance_ratio is not None and stats.load_balance_ratio > settings.imbalance_ratio:
            slow, fast = totals.index(max(totals)), totals.index(min(totals))
            findings.append(
                Finding(
                    kind="load_imbalance",
                    severity="warning",
                    step=worst_step if per_step else None,
                    message=(
                        f"rank {slow} spent {stats.load_balance_ratio:.2f}× the step time of rank {fast} over "
                        f"{len(ranked)} steps: every step waits for the slowest rank"
                    ),
                    evidence={
                        "load_balance_ratio": stats.load_balance_ratio,
                        "rank_total_step_time_s": totals,
                        "worst_step_ratio": stats.worst_step_balance_ratio,
                    },
                )
            )
    with_ranks = [r for r in ranked if len(r.get("rank_comm_s") or []) == len(r["rank_step_time_s"])]
    if with_ranks:
        comm = sum(sum(r["rank_comm_s"]) for r in with_ranks)
        busy = sum(sum(r["rank_step_time_s"]) for r in with_ranks)
    else:
        timed = [r for r in steps if r.get("comm_s") is not None and r.get("step_time_s")]
        comm = sum(r["comm_s"] for r in timed)
        busy = sum(r["step_time_s"] for r in timed)
    if busy > 0:
        stats.comm_share = comm / busy
    if stats.comm_share is not None and stats.comm_share > settings.comm_share:
        findings.append(
            Finding(
                kind="communication_bound",
                severity="warning",
                step=None,
                message=f"{stats.comm_share:.0%} of step time goes to collectives (gradient sync, FSDP gathers)",
                evidence={"comm_share": stats.comm_share, "comm_s": comm, "step_time_s": busy},
            )
        )
    return findings


def _chinese(stats: RunStats, steps: list[dict], settings: MonitorSettings) -> list[Finding]:
    """Chinese validation metrics that fell back from their best by the last validation, and a reasoning loss
    that dominates the answer loss."""
    findings = []
    for key in CHINESE_METRICS:
        points = series(steps, key)
        if not points:
            continue
        higher_is_better = key in CHINESE_ACCURACIES
        best_step, best = (max if higher_is_better else min)(points, key=lambda point: point[1])
        last_step, last = points[-1]
        stats.chinese[key] = {"last": last, "best": best, "best_step": best_step}
        worse = last < best - settings.metric_drop if higher_is_better else last > best * (1 + settings.metric_drop)
        if worse:
            findings.append(
                Finding(
                    kind="metric_regression",
                    severity="warning",
                    step=last_step,
                    message=f"{key} fell back from its best {best:.4g} (step {best_step}) to {last:.4g}",
                    evidence={"metric": key, "best": best, "best_step": best_step, "last": last},
                )
            )
    reasoning, answer = stats.chinese.get("val_reasoning_loss"), stats.chinese.get("val_answer_loss")
    if reasoning and answer and answer["last"] > 0:
        ratio = reasoning["last"] / answer["last"]
        if ratio >= settings.reasoning_dominance:
            findings.append(
                Finding(
                    kind="reasoning_loss_dominates",
                    severity="info",
                    step=stats.last_step,
                    message=(
                        f"validation loss per reasoning token {reasoning['last']:.4g} is {ratio:.2f}× that per "
                        f"answer token {answer['last']:.4g}: the reasoning dominates what training optimises"
                    ),
                    evidence={
                        "val_reasoning_loss": reasoning["last"],
                        "val_answer_loss": answer["last"],
                        "ratio": ratio,
                    },
                )
            )
    return findings


def _not_learning(stats: RunStats, vocab_size: int | None, settings: MonitorSettings) -> list[Finding]:
    """A best loss that stays near ln(vocab_size): the model still guesses about uniformly over its vocabulary,
    however flat (converged-looking) the curve is."""
    best = stats.best_val_loss if stats.best_val_loss is not None else stats.best_smoothed_loss
    if vocab_size is None or best is None:
        return []
    uniform = math.log(vocab_size)
    if best < settings.not_learning_share * uniform:
        return []
    which = "validation" if stats.best_val_loss is not None else "smoothed train"
    return [
        Finding(
            kind="not_learning",
            severity="critical",
            step=stats.best_val_step if stats.best_val_loss is not None else stats.best_smoothed_step,
            message=(
                f"not learning: the best {which} loss {best:.4g} is {best / uniform:.0%} of ln({vocab_size:,}) = "
                f"{uniform:.4g}, the loss of guessing uniformly over the vocabulary"
            ),
            evidence={"best_loss": best, "uniform_loss": uniform, "vocab_size": vocab_size},
        )
    ]


def _status(
    findings: list[Finding], stats: RunStats, losses: _Losses, window: int, settings: MonitorSettings
) -> Status:
    kinds = {finding.kind for finding in findings}
    if "divergence" in kinds:
        return "diverging"
    if "not_learning" in kinds:
        return "not_learning"
    if "overfitting" in kinds:
        return "overfitting"
    if len(losses.smoothed) <= window or stats.tail_improvement is None:
        return "warming_up"
    return "improving" if stats.tail_improvement >= settings.converged_improvement else "converged"
