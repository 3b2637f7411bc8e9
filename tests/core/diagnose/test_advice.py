"""Advice for the next run, from hand-made metrics through the findings and from hand-made evaluation reports."""

from pathlib import Path

import pytest

from qft_core.config import QftConfig
from qft_core.diagnose.advice import advice_markdown, advise, round_significant
from qft_core.diagnose.findings import monitor_records
from qft_core.evaluate.report import EvaluationReport
from qft_core.train.plan import TrainingPlan
from tests.core.train.step_records import falling, step
from tests.core.train.tiny_run import cpu_plan


def config(**training) -> QftConfig:
    settings = QftConfig()
    for key, value in training.items():
        setattr(settings.training, key, value)
    return settings


def plan_with(**lora) -> TrainingPlan:
    """cpu_plan with other effective LoRA settings."""
    plan = cpu_plan()
    return plan.model_copy(update={"lora": plan.lora.model_copy(update=lora)})


def by_setting(changes) -> dict:
    return {s.setting: s for s in changes}


def evaluation_report(means: dict[str, dict[str, float]], generation: dict[str, dict] | None = None) -> dict:
    """report.json's content as far as advice reads it: per model the metric means and generation statistics of
    the primary set (test); the validation set is there to be ignored."""
    metrics = {
        model: {name: {"mean": value, "ci_low": value, "ci_high": value, "n": 4} for name, value in values.items()}
        for model, values in means.items()
    }
    ignored = {"metrics": {"finetuned": {"rougeL_char_f1": {"mean": 0.0}}}, "generation": {}}
    return {"primary_set": "test", "sets": {"test": {"metrics": metrics, "generation": generation or {}},
                                            "validation": ignored}}


def overfitting_records() -> list[dict]:
    """Train loss falling over 60 steps (3 epochs); validation best at step 30 (epoch 1.5), then rising."""
    records = falling(60)
    for number, value in zip((10, 20, 30, 40, 50, 60), (2.0, 1.8, 1.7, 1.75, 1.85, 1.95)):
        records[number - 1]["val_loss"] = value
    return records


def test_round_significant() -> None:
    assert round_significant(2e-3 / 3) == 6.67e-4 and round_significant(123456.0, 2) == 120000.0


def test_overfitting_proposes_stopping_at_the_best_epoch_with_a_smaller_rank_and_more_dropout() -> None:
    report = monitor_records(overfitting_records(), total_steps=60)

    suggestions = by_setting(advise(report, cpu_plan(), config(epochs=3.0)))

    epochs = suggestions["training.epochs"]
    assert (epochs.current, epochs.proposed) == (3.0, 1.5)
    assert epochs.evidence["best_val_step"] == 30 and epochs.evidence["last_val_loss"] == 1.95
    # cpu_plan trains r=4, already the smallest rank the planner uses: only dropout goes up (0 → 0.1).
    assert "lora.r" not in suggestions
    assert (suggestions["lora.dropout"].current, suggestions["lora.dropout"].proposed) == (0.0, 0.1)
    rank = by_setting(advise(report, plan_with(r=16), config()))["lora.r"]
    assert (rank.current, rank.proposed) == (16, 8)


def test_overfitting_with_max_steps_proposes_the_best_step() -> None:
    report = monitor_records(overfitting_records(), total_steps=60)

    suggestion = by_setting(advise(report, cpu_plan(), config(max_steps=60)))["training.max_steps"]

    assert (suggestion.current, suggestion.proposed) == (60, 30)


def test_diverging_loss_lowers_the_learning_rate_three_times() -> None:
    records = [step(n, 3.0 - 2.0 * (n - 1) / 29 if n <= 30 else 1.0 + 0.075 * (n - 30)) for n in range(1, 51)]

    suggestions = advise(monitor_records(records), cpu_plan(), config(learning_rate=2e-3))

    (lr,) = [s for s in suggestions if s.setting == "training.learning_rate"]
    assert (lr.current, lr.proposed) == (2e-3, 6.67e-4)
    assert lr.evidence["divergence_step"] == 34


def test_a_gradient_spike_halves_the_learning_rate() -> None:
    records = falling()
    records[29]["grad_norm"] = 20.0

    lr = by_setting(advise(monitor_records(records), cpu_plan(), config(learning_rate=2e-3)))["training.learning_rate"]

    assert lr.proposed == 1e-3 and lr.evidence == {"spikes": 1, "worst_step": 30, "worst_factor": 20.0}


def test_a_run_still_improving_at_its_end_trains_longer() -> None:
    suggestions = advise(monitor_records(falling(), total_steps=50), cpu_plan(), config(epochs=2.0))

    assert [(s.setting, s.current, s.proposed) for s in suggestions] == [("training.epochs", 2.0, 3.0)]


def test_an_unfinished_improving_run_gets_no_advice() -> None:
    assert advise(monitor_records(falling(), total_steps=100), cpu_plan(), config()) == []


def test_a_slow_early_plateau_raises_the_learning_rate_and_the_rank_of_an_attention_only_adapter() -> None:
    records = [step(n, 2.0, val_loss=2.02 if n % 10 == 0 else None) for n in range(1, 41)]
    plan = plan_with(target_modules=["q_proj", "v_proj"])

    suggestions = by_setting(advise(monitor_records(records, total_steps=100), plan, config(learning_rate=1e-3)))

    assert suggestions["training.learning_rate"].proposed == 2e-3
    assert (suggestions["lora.r"].current, suggestions["lora.r"].proposed) == (4, 8)
    # Validation 1% above train: the adapter is not memorising.
    assert suggestions["lora.r"].evidence["val_gap"] == pytest.approx(0.01)
    assert suggestions["lora.target_modules"].proposed == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


def test_noisy_loss_doubles_the_global_batch() -> None:
    records = [step(n, 2.0 + (0.4 if n % 2 else -0.4) - n / 100) for n in range(1, 41)]
    report = monitor_records(records)
    assert report.of_kind("noisy_loss")

    batch = by_setting(advise(report, cpu_plan(), config(global_batch_size=8)))["training.global_batch_size"]

    assert (batch.current, batch.proposed) == (8, 16)


def test_an_oom_back_off_proposes_the_micro_batch_the_run_ended_with() -> None:
    records = falling(20)
    for record in records[5:]:
        record.update(micro_batch_size=1, grad_accum_steps=4)

    micro = by_setting(advise(monitor_records(records), cpu_plan(), config()))["training.micro_batch_size"]

    assert (micro.current, micro.proposed) == (None, 1) and micro.evidence["planned_micro_batch"] == 2


def test_reasoning_the_fine_tuned_model_leaves_unclosed_takes_reasoning_out_of_the_loss() -> None:
    report = evaluation_report(
        {"finetuned": {"rougeL_char_f1": 0.40}, "base": {"rougeL_char_f1": 0.30}},
        {"finetuned": {"closed_by_model_rate": 0.55}, "base": {"closed_by_model_rate": 0.90}},
    )
    findings = monitor_records(falling(), total_steps=100)
    assert "training.loss_on_reasoning" not in by_setting(advise(findings, cpu_plan(), config()))

    changes = by_setting(advise(findings, cpu_plan(), config(), report))

    reasoning = changes["training.loss_on_reasoning"]
    assert (reasoning.current, reasoning.proposed) == (True, False)
    assert reasoning.evidence == {"closed_by_model_rate_fine_tuned": 0.55, "closed_by_model_rate_base": 0.9}


def test_less_coherent_reasoning_than_the_base_model_in_an_evaluation_report_takes_reasoning_out() -> None:
    data = evaluation_report({"finetuned": {"thinking_coherence": 0.50}, "base": {"thinking_coherence": 0.80}})
    report = EvaluationReport(Path("eval"), Path("eval/report.md"), Path("eval/report.json"), (), (), data)

    changes = by_setting(advise(monitor_records(falling(), total_steps=100), cpu_plan(), config(), report))

    assert changes["training.loss_on_reasoning"].evidence == {
        "thinking_coherence_fine_tuned": 0.5, "thinking_coherence_base": 0.8
    }


def test_a_dominating_reasoning_loss_takes_reasoning_out_of_the_loss() -> None:
    records = falling()
    records[49].update(val_loss=1.5, val_reasoning_loss=2.4, val_answer_loss=1.2)

    suggestions = by_setting(advise(monitor_records(records, total_steps=100), cpu_plan(), config()))

    assert suggestions["training.loss_on_reasoning"].evidence["ratio"] == 2.0


def test_answers_that_do_not_improve_without_reasoning_put_reasoning_back() -> None:
    report = evaluation_report({"finetuned": {"rougeL_char_f1": 0.31}, "base": {"rougeL_char_f1": 0.30}})

    changes = by_setting(
        advise(monitor_records(falling(), total_steps=100), cpu_plan(), config(loss_on_reasoning=False), report)
    )

    reasoning = changes["training.loss_on_reasoning"]
    assert (reasoning.current, reasoning.proposed) == (False, True)
    assert reasoning.evidence["rougeL_char_f1_gain"] == pytest.approx(0.01)


def test_markdown_lists_each_suggestion_with_its_evidence() -> None:
    report = monitor_records(overfitting_records(), total_steps=60)
    text = advice_markdown(advise(report, cpu_plan(), config(epochs=3.0)))

    assert "| `training.epochs` | 3 | 1.5 |" in text and "best_val_step=30" in text
    assert "None: nothing" in advice_markdown([])


def test_early_convergence_proposes_stopping_where_the_loss_went_flat() -> None:
    # Flat from step 27 (epoch 1.35) of 50 (epoch 2.5): 1.35 is within the first 60% of the epochs.
    records = [step(n, 3.0 - 2.0 / 24 * (n - 1) if n <= 25 else 1.0) for n in range(1, 51)]

    suggestions = advise(monitor_records(records, total_steps=50), cpu_plan(), config(epochs=2.5))

    assert [(s.setting, s.current, s.proposed) for s in suggestions] == [("training.epochs", 2.5, 1.35)]
