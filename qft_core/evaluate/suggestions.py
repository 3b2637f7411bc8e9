"""What to do next, read off an evaluation's numbers: weak categories, terms the model never writes,
misconceptions it states, reasoning it does not close, and metrics that got worse than the base model's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# How many weak categories and missing terms a suggestion names.
WEAK_CATEGORIES_NAMED = 3
MISSING_TERMS_NAMED = 10
# A category of fewer examples says too little to be called weak.
MIN_CATEGORY_EXAMPLES = 2
# Above this share of completions without a `</think>` of their own, the thinking budget is the bottleneck.
MAX_UNCLOSED_RATE = 0.2


@dataclass(frozen=True)
class Suggestion:
    """One finding and the change it calls for; `kind` groups findings of one sort."""

    kind: str
    message: str


def suggest(
    set_summary: Mapping,
    *,
    main_metrics: Sequence[str],
    tolerance: float,
    thinking_budget: int,
    model: str = "finetuned",
    baseline: str = "base",
    lower_is_better: Sequence[str] = (),
) -> list[Suggestion]:
    """Suggestions from one evaluation set's summary (the `sets[name]` part of report.json), about `model`
    and, for regressions (of the main metrics, and of the `lower_is_better` losses and error counts), against
    `baseline`; in order: regressions, weak categories, missing terms, misconceptions, unclosed reasoning."""
    found = regressions(
        set_summary, main_metrics=main_metrics, tolerance=tolerance, model=model, baseline=baseline,
        lower_is_better=lower_is_better,
    )
    suggestions = [
        Suggestion(
            "regression",
            f"{', '.join(found)}: the fine-tuned model scores below the base model; check the training data of "
            "these aspects and the learning rate, or stop training earlier.",
        )
    ] if found else []
    suggestions += _weak_categories(set_summary, main_metrics, model)
    suggestions += _missing_terms(set_summary, model)
    suggestions += _misconceptions(set_summary, model)
    suggestions += _unclosed_thinking(set_summary, model, thinking_budget)
    return suggestions


def regressions(
    set_summary: Mapping, *, main_metrics: Sequence[str], tolerance: float, model: str = "finetuned",
    baseline: str = "base", lower_is_better: Sequence[str] = (),
) -> list[str]:
    """The main metrics whose mean under `model` is below the baseline's mean by more than `tolerance`, each as
    'metric: model 0.120 < base 0.150 − 0.020'; then the `lower_is_better` metrics (teacher-forced losses, counts
    of errors) whose mean is above the baseline's by more than `tolerance`, as
    'metric: model 2.100 > base 2.000 + 0.020'."""
    metrics = set_summary["metrics"]
    found = []
    for metric in main_metrics:
        ours, theirs = metrics[model].get(metric), metrics[baseline].get(metric)
        if ours is not None and theirs is not None and ours["mean"] < theirs["mean"] - tolerance:
            found.append(
                f"{metric}: {model} {ours['mean']:.3f} < {baseline} {theirs['mean']:.3f} − {tolerance:.3f}"
            )
    for metric in lower_is_better:
        ours, theirs = metrics[model].get(metric), metrics[baseline].get(metric)
        if ours is not None and theirs is not None and ours["mean"] > theirs["mean"] + tolerance:
            found.append(
                f"{metric}: {model} {ours['mean']:.3f} > {baseline} {theirs['mean']:.3f} + {tolerance:.3f}"
            )
    return found


def category_scores(set_summary: Mapping, main_metrics: Sequence[str], model: str) -> dict[str, tuple[float, int]]:
    """Each category's mean over the main metrics it has, with its number of examples."""
    scores = {}
    for category, metrics in set_summary["by_category"][model].items():
        means = [metrics[metric]["mean"] for metric in main_metrics if metric in metrics]
        if means:
            scores[category] = (sum(means) / len(means), set_summary["categories"][category])
    return scores


def _weak_categories(set_summary: Mapping, main_metrics: Sequence[str], model: str) -> list[Suggestion]:
    scores = {
        category: score for category, score in category_scores(set_summary, main_metrics, model).items()
        if score[1] >= MIN_CATEGORY_EXAMPLES
    }
    if len(scores) < 2:
        return []
    weakest = sorted(scores.items(), key=lambda item: (item[1][0], item[0]))[:WEAK_CATEGORIES_NAMED]
    named = ", ".join(f"{category} ({score:.3f}, n={count})" for category, (score, count) in weakest)
    return [Suggestion(
        "weak_category",
        f"Weakest categories by the mean of the main metrics: {named}. Add training examples of these "
        "categories, or check their reference answers.",
    )]


def _missing_terms(set_summary: Mapping, model: str) -> list[Suggestion]:
    missing = set_summary["terms"][model]["never_produced"][:MISSING_TERMS_NAMED]
    if not missing:
        return []
    named = ", ".join(f"{term['zh']} ({term['id']}, in {term['references']} references)" for term in missing)
    total = len(set_summary["terms"][model]["never_produced"])
    return [Suggestion(
        "missing_terms",
        f"{total} reference term(s) never appear in any answer; most wanted: {named}. Add training answers "
        "that use these terms.",
    )]


def _misconceptions(set_summary: Mapping, model: str) -> list[Suggestion]:
    return [
        Suggestion(
            "misconception",
            f"States misconception '{hit['id']}' in {hit['count']} answer(s) ({hit['claim']}); the truth: "
            f"{hit['correction']} Add training examples that say so.",
        )
        for hit in set_summary["misconceptions"][model]
    ]


def _unclosed_thinking(set_summary: Mapping, model: str, thinking_budget: int) -> list[Suggestion]:
    rate = 1.0 - set_summary["generation"][model]["closed_by_model_rate"]
    if rate <= MAX_UNCLOSED_RATE:
        return []
    return [Suggestion(
        "unclosed_thinking",
        f"{rate:.0%} of completions did not close their reasoning within the thinking budget of "
        f"{thinking_budget} tokens. Raise eval.thinking_budget, or train on shorter reasoning.",
    )]
