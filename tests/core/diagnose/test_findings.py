"""The run's findings from hand-made metrics: trends, anomalies, ETA, load balance."""

from pathlib import Path

import pytest

from qft_core.diagnose.findings import MonitorError, monitor_records, monitor_run, trailing_mean
from qft_core.train.job import TrainingSummary
from tests.core.train.step_records import falling, step, write_metrics


def test_trailing_mean_averages_up_to_span_values() -> None:
    assert trailing_mean([3.0, 1.0, 2.0, 6.0], 3) == [3.0, 2.0, 2.0, 3.0]


def test_steadily_falling_loss_is_improving_without_findings() -> None:
    report = monitor_records(falling())

    assert report.status == "improving"
    assert report.findings == []
    # 50 steps: 3-step smoothing, 10-step window; the smoothed loss falls 0.4 from 1.48 over the last window.
    assert report.stats.smoothing_steps == 3 and report.stats.window_steps == 10
    assert report.stats.tail_improvement == pytest.approx(0.4 / 1.48)
    assert report.stats.loss_noise == pytest.approx(0.0, abs=1e-12)


def test_flat_tail_is_converged_with_a_plateau_from_the_step_the_smoothed_loss_reached_it() -> None:
    # 3.0 → 1.0 linearly over steps 1..25, then 1.0: the 3-step mean first reaches 1.0 at step 27.
    records = [step(n, 3.0 - 2.0 / 24 * (n - 1) if n <= 25 else 1.0) for n in range(1, 51)]

    report = monitor_records(records)

    assert report.status == "converged"
    assert report.stats.tail_improvement == 0.0
    (plateau,) = report.findings
    assert plateau.kind == "plateau" and plateau.step == 27
    assert plateau.evidence["ongoing"] is True and plateau.evidence["slow"] is False
    assert plateau.evidence["end_step"] == 50 and plateau.evidence["level"] == pytest.approx(1.0)


def test_flat_loss_from_the_start_is_a_slow_plateau() -> None:
    report = monitor_records([step(n, 2.0) for n in range(1, 41)], total_steps=100)

    (plateau,) = report.of_kind("plateau")
    assert plateau.step == 1 and plateau.evidence["slow"] is True and plateau.severity == "warning"


def test_grad_norm_spike_at_step_k_is_an_explosion_at_k_and_a_counted_skip() -> None:
    records = falling()
    for record in records:
        record["grad_norm"] = 1.0 + 0.1 * (record["step"] % 3)
    records[29].update(grad_norm=20.0, skipped=True, anomaly="gradient norm 20 > 10 x running median 1.1")

    report = monitor_records(records)

    (explosion,) = report.of_kind("gradient_explosion")
    assert explosion.step == 30
    assert explosion.evidence["steps"] == [30] and explosion.evidence["running_median"] == pytest.approx(1.1)
    assert explosion.evidence["factor"] == pytest.approx(20.0 / 1.1)
    (skipped,) = report.of_kind("skipped_steps")
    assert skipped.step == 30 and skipped.evidence["by_reason"] == {"gradient-norm spike": 1}
    assert report.stats.skipped_steps == 1


def test_consecutive_spikes_are_one_critical_finding() -> None:
    records = falling()
    for number in (20, 21, 22):
        records[number - 1]["grad_norm"] = 50.0

    (explosion,) = monitor_records(records).of_kind("gradient_explosion")
    assert explosion.step == 20 and explosion.evidence["steps"] == [20, 21, 22] and explosion.severity == "critical"


def test_skipped_steps_are_counted_by_reason() -> None:
    records = falling(30)
    records[9].update(loss=None, grad_norm=None, skipped=True, anomaly="non-finite loss nan")
    records[14].update(loss=None, grad_norm=None, skipped=True, anomaly="non-finite loss inf")
    records[19].update(grad_norm=None, skipped=True, anomaly="non-finite gradient norm inf")

    report = monitor_records(records)

    assert report.stats.skipped_by_reason == {"non-finite gradient norm": 1, "non-finite loss": 2}
    (skipped,) = report.of_kind("skipped_steps")
    assert skipped.evidence["steps"] == [10, 15, 20] and skipped.evidence["count"] == 3
    # 3 of 30 steps is 10%: a warning; more than 10% would be critical.
    assert skipped.severity == "warning"


def test_val_loss_rising_while_train_falls_is_overfitting_from_the_first_rise() -> None:
    records = falling(60)
    for number, value in zip((10, 20, 30, 40, 50, 60), (2.0, 1.8, 1.7, 1.75, 1.85, 1.95)):
        records[number - 1]["val_loss"] = value

    report = monitor_records(records)

    assert report.status == "overfitting"
    (overfitting,) = report.of_kind("overfitting")
    assert overfitting.step == 40
    assert overfitting.evidence["best_val_step"] == 30 and overfitting.evidence["best_val_epoch"] == 1.5
    assert overfitting.evidence["last_val_loss"] == 1.95
    assert report.stats.best_val_loss == 1.7 and report.stats.last_val_loss == 1.95
    assert report.stats.first_val_loss == 2.0


def test_val_loss_rising_with_one_validation_after_the_best_is_not_yet_overfitting() -> None:
    records = falling(40)
    for number, value in zip((10, 20, 30, 40), (2.0, 1.8, 1.7, 1.9)):
        records[number - 1]["val_loss"] = value

    assert monitor_records(records).of_kind("overfitting") == []


def test_diverging_loss_is_found_where_the_smoothed_loss_left_its_minimum_by_ten_percent() -> None:
    # 3.0 → 1.0 over steps 1..30, then +0.075 per step. The 3-step mean is lowest at step 31 (1.0483) and first
    # exceeds 1.1 × that at step 34 (mean of 1.15, 1.225, 1.3 = 1.225).
    records = [step(n, 3.0 - 2.0 * (n - 1) / 29 if n <= 30 else 1.0 + 0.075 * (n - 30)) for n in range(1, 51)]

    report = monitor_records(records)

    assert report.status == "diverging"
    assert [finding.kind for finding in report.findings] == ["divergence"]
    divergence = report.findings[0]
    assert divergence.step == 34 and divergence.evidence["min_step"] == 31
    assert divergence.evidence["min_smoothed_loss"] == pytest.approx((31 / 29 + 1.0 + 1.075) / 3)


def test_a_run_ending_in_non_finite_losses_is_diverging() -> None:
    records = falling(20)
    for record in records[-3:]:
        record.update(loss=None, skipped=True, anomaly="non-finite loss nan")

    report = monitor_records(records)

    assert report.status == "diverging"
    (divergence,) = report.of_kind("divergence")
    assert divergence.step == 18 and divergence.evidence["non_finite_steps"] == 3


def test_eta_is_the_mean_of_the_last_20_step_times_times_the_steps_left() -> None:
    # Steps 1..10 took 10 s (outside the window); steps 11..30 alternate 1 s and 3 s: mean 2 s × 70 steps left.
    records = [step(n, 2.0, step_time_s=10.0 if n <= 10 else (1.0 if n % 2 else 3.0)) for n in range(1, 31)]

    assert monitor_records(records, total_steps=100).eta_s == pytest.approx(140.0)
    assert monitor_records(records).eta_s is None
    assert monitor_records(records, total_steps=30).eta_s == 0.0


def test_load_balance_is_slowest_over_fastest_rank_total_and_comm_share_is_per_rank() -> None:
    # Rank totals 1.0 + 1.0 + 2.0 = 4.0 and 1.5 + 1.5 + 2.0 = 5.0: ratio 1.25; worst single step 1.5.
    # Communication 0.6 + 0.1 + 0.6 + 0.1 + 0.2 + 0.2 = 1.8 of 9.0 rank-seconds: 20%.
    times = ([1.0, 1.5], [1.0, 1.5], [2.0, 2.0])
    comms = ([0.6, 0.1], [0.6, 0.1], [0.2, 0.2])
    records = [step(n + 1, 2.0, rank_step_time_s=t, rank_comm_s=c) for n, (t, c) in enumerate(zip(times, comms))]

    report = monitor_records(records)

    assert report.stats.world_size == 2
    assert report.stats.load_balance_ratio == pytest.approx(1.25)
    assert report.stats.worst_step_balance_ratio == pytest.approx(1.5)
    assert report.stats.comm_share == pytest.approx(0.2)
    (imbalance,) = report.of_kind("load_imbalance")
    assert imbalance.step == 1 and imbalance.evidence["rank_total_step_time_s"] == [4.0, 5.0]
    assert report.of_kind("communication_bound") == []


def test_comm_share_without_rank_timings_is_comm_over_step_time() -> None:
    records = [step(n, 2.0, comm_s=1.0, step_time_s=2.0 if n % 2 else 6.0) for n in range(1, 5)]

    report = monitor_records(records)

    # (4 × 1.0) / (2 + 6 + 2 + 6) = 0.25: at the threshold, not over it.
    assert report.stats.comm_share == pytest.approx(0.25) and report.stats.load_balance_ratio is None
    assert report.of_kind("communication_bound") == []
    records[0]["comm_s"] = 2.0
    (comm,) = monitor_records(records).of_kind("communication_bound")
    assert comm.evidence["comm_share"] == pytest.approx(5.0 / 16)


def test_oom_back_off_is_found_from_events_and_micro_batch_halvings() -> None:
    records = falling(20)
    for record in records[5:]:
        record.update(micro_batch_size=1, grad_accum_steps=4)
    event = {"event": "oom", "step": 6, "rank": 0, "micro_batch_size": 1, "grad_accum_steps": 4}

    with_event = monitor_records([*records[:5], event, *records[5:]])
    without_event = monitor_records(records)

    for report in (with_event, without_event):
        (oom,) = report.of_kind("oom")
        assert oom.step == 6 and oom.evidence == {"oom_events": 1, "micro_batch_first": 2, "micro_batch_last": 1}


def test_chinese_metrics_falling_back_and_reasoning_dominance_are_found() -> None:
    records = falling(40)
    for number, char, term in ((20, 0.50, 0.40), (40, 0.55, 0.30)):
        records[number - 1].update(
            val_loss=1.5, val_char_accuracy=char, val_term_accuracy=term, val_reasoning_loss=2.0,
            val_answer_loss=1.0,
        )

    report = monitor_records(records)

    (regression,) = report.of_kind("metric_regression")
    assert regression.evidence == {"metric": "val_term_accuracy", "best": 0.4, "best_step": 20, "last": 0.3}
    (dominance,) = report.of_kind("reasoning_loss_dominates")
    assert dominance.evidence["ratio"] == 2.0
    assert report.stats.chinese["val_char_accuracy"] == {"last": 0.55, "best": 0.55, "best_step": 40}


def test_resumed_steps_keep_their_last_record_and_events_are_not_steps() -> None:
    records = [*falling(10), {"event": "resume", "step": 8, "checkpoint": "step-00000008"}, step(9, 0.5), step(10, 0.4)]

    report = monitor_records(records)

    assert report.stats.steps_logged == 10 and report.stats.last_loss == 0.4 and report.stats.restarts == 1


def test_monitor_run_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    path = write_metrics(tmp_path / "run" / "metrics.jsonl", falling())
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 51, "lo')

    report = monitor_run(tmp_path / "run", total_steps=60)

    assert report.stats.steps_logged == 50 and report.stats.last_step == 50
    assert report.eta_s == pytest.approx(20.0) and report.source == str(path)


def test_no_step_records_is_no_data(tmp_path: Path) -> None:
    report = monitor_run(write_metrics(tmp_path / "metrics.jsonl", [{"event": "warning", "step": 0, "message": "x"}]))
    assert report.status == "no_data" and report.findings == [] and report.eta_s is None


def test_report_round_trips_through_json() -> None:
    records = falling()
    records[29]["grad_norm"] = 20.0
    report = monitor_records(records, total_steps=60)

    assert type(report).model_validate_json(report.model_dump_json()) == report


def test_a_finished_run_takes_its_total_steps_from_the_summary_and_a_bad_summary_is_named(tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics.jsonl", falling(20))
    TrainingSummary(
        final_train_loss=2.24, final_val_loss=None, best_val_loss=None, steps=20, tokens=20_000, target_tokens=12_000,
        tokens_per_s=500.0, wall_time_s=40.0, world_size=1, micro_batch_size=2, grad_accum_steps=2,
        global_batch_size=4, restarts=1, oom_events=0, skipped_steps=0, adapter_dir="adapter",
        metrics_file="metrics.jsonl", plan={},
    ).write(tmp_path / "training_summary.json")

    report = monitor_run(tmp_path)

    assert report.stats.total_steps == 20 and report.eta_s == 0.0 and report.stats.restarts == 1
    (tmp_path / "training_summary.json").write_text('{"steps": 20}', encoding="utf-8")
    with pytest.raises(MonitorError, match="training_summary.json: not a training summary"):
        monitor_run(tmp_path)
    with pytest.raises(MonitorError, match="no metrics file"):
        monitor_run(tmp_path / "missing")


QWEN3_VOCAB = 151_936


def flat_near_uniform(steps: int = 50) -> list[dict]:
    """The issue's qwen3-tiny run: train loss 11.97 easing to 11.77, validation at 11.8 (ln 151,936 = 11.93)."""
    records = [step(n, 11.97 - 0.2 * (n - 1) / (steps - 1)) for n in range(1, steps + 1)]
    records[-1]["val_loss"] = 11.8
    return records


def test_a_loss_that_stays_near_ln_vocab_is_not_learning_however_flat() -> None:
    report = monitor_records(flat_near_uniform(), vocab_size=QWEN3_VOCAB)

    assert report.status == "not_learning"
    (finding,) = report.of_kind("not_learning")
    assert finding.severity == "critical" and finding.step == 50
    # 11.8 / ln(151,936) = 11.8 / 11.931 = 98.9%.
    assert finding.evidence["uniform_loss"] == pytest.approx(11.931, abs=5e-4)
    assert "99% of ln(151,936)" in finding.message


def test_without_a_vocabulary_the_same_flat_run_is_only_judged_by_its_trend() -> None:
    assert monitor_records(flat_near_uniform()).status == "converged"


def test_a_loss_well_below_ln_vocab_is_not_flagged_as_not_learning() -> None:
    report = monitor_records(falling(), vocab_size=QWEN3_VOCAB)

    assert report.status == "improving" and report.of_kind("not_learning") == []


def test_without_validation_the_smoothed_train_loss_decides_not_learning() -> None:
    records = [step(n, 10.9) for n in range(1, 31)]
    # 10.9 / ln(151,936) = 0.914 ≥ 0.9, while 10.9 / ln(10⁶) = 10.9 / 13.8 = 0.79.
    assert monitor_records(records, vocab_size=QWEN3_VOCAB).status == "not_learning"
    assert monitor_records(records, vocab_size=1_000_000).status != "not_learning"
