"""The evaluation report: base against fine-tuned on each evaluation set, as report.json (every number),
report.md (tables, charts, suggestions) and PNG charts; and the regression check that blocks a worse model."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from qft_core.config import EvalConfig
from qft_core.data.terms import TermDictionary
from qft_core.evaluate.bootstrap import aggregate, bootstrap_interval, format_estimate
from qft_core.evaluate.charts import write_charts
from qft_core.evaluate.degenerate import DEGENERATE_SHARE, degeneration
from qft_core.evaluate.expert_performance import MIN_INTERVAL_ITEMS, performance_tables
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.generate import GeneratedAnswer
from qft_core.evaluate.misconceptions import Misconception, detect_misconceptions
from qft_core.evaluate.suggestions import regressions, suggest
from qft_core.evaluate.teacher_forced import ANSWER_LOSS, REASONING_LOSS

# The metrics a fine-tune is judged by, in the order tables and charts show them.
MAIN_METRICS = ("rougeL_char_f1", "rougeL_term_f1", "term_f1", "keypoint_coverage", "professional_accuracy")
# Teacher-forced losses of the references (nats per token; lower is better), judged beside the main metrics:
# in the headline, paired differences and the regression check, not in charts or category means.
LOSS_METRICS = (ANSWER_LOSS, REASONING_LOSS)
JUDGED_METRICS = MAIN_METRICS + LOSS_METRICS
# Where more is worse: a fine-tune whose losses rose, or that contradicts the fact base more often than the
# base model, regressed.
LOWER_IS_BETTER = (*LOSS_METRICS, "fact_contradicted")
# Contradictions of the fact base listed per model in report.md.
CONTRADICTIONS_LISTED = 20
MODELS = ("base", "finetuned")
MODEL_LABELS = {"base": "base", "finetuned": "fine-tuned"}
PRIMARY_SET = "test"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
# Leading columns of a set's score table; every metric follows.
SCORE_TABLE_KEYS = ("model", "id", "category")
# Completions shown side by side in report.md, and how much of each text.
SAMPLES_SHOWN = 3
SAMPLE_CHARS = 240
TERMS_LISTED = 20

Scores = Sequence[Mapping[str, float]]


@dataclass(frozen=True)
class EvaluationReport:
    """The files an evaluation wrote and what they say; `data` is report.json's content."""

    out_dir: Path
    markdown: Path
    json: Path
    charts: tuple[Path, ...]
    outputs: tuple[Path, ...]
    data: dict

    @property
    def files(self) -> list[Path]:
        return [self.markdown, self.json, *self.charts, *self.outputs]

    @property
    def headline(self) -> dict[str, float]:
        """Main metrics of the primary set: `base.<metric>`, `finetuned.<metric>`, `difference.<metric>`."""
        return self.data["headline"]


def summarize_set(
    generations: Mapping[str, Sequence[GeneratedAnswer]],
    scores: Mapping[str, Scores],
    *,
    dictionary: TermDictionary,
    misconceptions: Sequence[Misconception],
    config: EvalConfig,
    elapsed_s: Mapping[str, float] | None = None,
    facts: FactBase,
) -> dict:
    """Everything report.json says about one evaluation set, for each model (keys of `generations`: base,
    finetuned), whose generations and scores are in the same item order."""
    models = list(generations)
    items = generations[models[0]]
    for model in models:
        if [answer.id for answer in generations[model]] != [item.id for item in items]:
            raise ValueError(f"the generations of '{model}' are not of the same items in the same order")
        if len(scores[model]) != len(items):
            raise ValueError(f"'{model}': {len(scores[model])} scores for {len(items)} generations")
    bootstrap = {"samples": config.bootstrap_samples, "seed": config.bootstrap_seed,
                 "confidence": config.confidence_level}
    categories = Counter(item.category or "uncategorized" for item in items)
    metrics = {model: aggregate(scores[model], **bootstrap) for model in models}
    degenerate = {model: _degenerate(generations[model]) for model in models}
    return {
        "n": len(items),
        "categories": dict(sorted(categories.items())),
        "metrics": metrics,
        "difference": _paired_differences(scores, models, bootstrap) if set(MODELS) <= set(models) else {},
        "by_category": {model: _by_category(items, scores[model], bootstrap) for model in models},
        "term_f1_by_category": {model: _term_f1_by_category(metrics[model]) for model in models},
        "generation": {
            model: _generation_stats(generations[model], (elapsed_s or {}).get(model), degenerate[model]["count"])
            for model in models
        },
        "degenerate": degenerate,
        "terms": {model: _term_coverage(generations[model], dictionary) for model in models},
        "misconceptions": {model: _misconceptions_stated(generations[model], misconceptions) for model in models},
        "fact_check": {model: _fact_check(generations[model], facts) for model in models},
        "per_example": {
            model: {metric: [_finite_or_none(row.get(metric)) for row in scores[model]] for metric in JUDGED_METRICS}
            for model in models
        },
        "samples": [
            {"id": item.id, "question": _clip(item.question), "reference": _clip(item.reference_answer),
             **{model: _clip(generations[model][index].answer) for model in models}}
            for index, item in enumerate(items[:SAMPLES_SHOWN])
        ],
    }


def write_score_table(
    generations: Mapping[str, Sequence[GeneratedAnswer]], scores: Mapping[str, Scores], path: str | Path
) -> Path:
    """Every metric of every (model, item) of one set as one Parquet table, rows in model then item order:
    model, id and category columns, then the metrics in order of first appearance (NaN where a metric does not
    apply). report.json keeps the per-example values of the main metrics only; this is the table to slice further
    (`pandas.read_parquet`)."""
    frames = []
    for model, answers in generations.items():
        keys = pd.DataFrame({
            "model": model, "id": [answer.id for answer in answers],
            "category": [answer.category or "uncategorized" for answer in answers],
        })
        frames.append(pd.concat([keys, pd.DataFrame.from_records(list(scores[model]), index=keys.index)], axis=1))
    path = Path(path)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def build_report(
    sets: Mapping[str, dict], *, models: Mapping[str, str], config: EvalConfig, stand_in: str | None = None,
    experts: Mapping | None = None, reasoning_origins: Mapping[str, int] | None = None,
    generation_path: Mapping | None = None,
) -> dict:
    """report.json's content: the set summaries with the headline, verdict, regressions and suggestions of the
    primary set (`test`, or the first set when there is no test set). `models` describes each model in words;
    `stand_in` is the note a random-weight base model carries (`registry.stand_in_note`); `experts` is the expert
    review's PerformanceReport as JSON, where there is one; `reasoning_origins` counts who wrote the reasoning of
    the test examples evaluated (annotate.reasoning_account); `generation_path` is `GenerationPath.as_metadata()`
    of the path the answers were generated on."""
    primary = PRIMARY_SET if PRIMARY_SET in sets else next(iter(sets))
    summary = sets[primary]
    headline = {}
    for metric in JUDGED_METRICS:
        for model in MODELS:
            if metric in summary["metrics"].get(model, {}):
                headline[f"{model}.{metric}"] = summary["metrics"][model][metric]["mean"]
        if metric in summary["difference"]:
            headline[f"difference.{metric}"] = summary["difference"][metric]["mean"]
    found = regressions(
        summary, main_metrics=MAIN_METRICS, tolerance=config.regression_tolerance, lower_is_better=LOWER_IS_BETTER
    )
    suggestions = suggest(
        summary, main_metrics=MAIN_METRICS, tolerance=config.regression_tolerance,
        thinking_budget=config.thinking_budget, lower_is_better=LOWER_IS_BETTER,
    )
    return {
        "models": dict(models),
        "stand_in": stand_in,
        "main_metrics": list(MAIN_METRICS),
        "lower_is_better": list(LOWER_IS_BETTER),
        "loss_metrics": list(LOSS_METRICS),
        "primary_set": primary,
        "settings": {
            "max_new_tokens": config.max_new_tokens,
            "thinking_budget": config.thinking_budget,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "bootstrap_samples": config.bootstrap_samples,
            "bootstrap_seed": config.bootstrap_seed,
            "confidence_level": config.confidence_level,
            "regression_tolerance": config.regression_tolerance,
            "generation_path": dict(generation_path) if generation_path else None,
        },
        "headline": headline,
        "verdict": verdict(summary, found, config.confidence_level),
        "regressions": found,
        "suggestions": [asdict(suggestion) for suggestion in suggestions],
        "sets": dict(sets),
        "experts": dict(experts) if experts else None,
        "reasoning_origins": dict(reasoning_origins) if reasoning_origins else None,
    }


def _path_words(path: Mapping | None) -> str:
    if not path:
        return ""
    return f"; {path['path']}" + (f" ({'; '.join(path['fallbacks'])})" if path["fallbacks"] else "")


def verdict(summary: Mapping, found_regressions: Sequence[str], confidence_level: float) -> dict[str, str]:
    """What the primary set's numbers support, as `kind` and a one-line `message`: `degenerate` (at least
    DEGENERATE_SHARE of the fine-tuned answers are degenerate, so a metric gain is no improvement), `regressed`,
    `improved` (a judged metric whose paired interval lies above 0, or below 0 for a LOWER_IS_BETTER one such as
    a loss) or `no_clear_difference`."""
    tuned = summary["degenerate"].get("finetuned")
    if tuned and tuned["count"] and tuned["count"] >= DEGENERATE_SHARE * tuned["n"]:
        reasons = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in tuned["reasons"].items())
        return {
            "kind": "degenerate",
            "message": (
                f"DEGENERATE: {tuned['count']} of {tuned['n']} fine-tuned answers are degenerate ({reasons}); "
                "whatever the metrics credit them with (a reference's punctuation, say) is not an improvement"
            ),
        }
    if found_regressions:
        return {"kind": "regressed", "message": f"regressed: {'; '.join(found_regressions)}"}
    above = [
        metric for metric, value in summary["difference"].items()
        if (value["ci_high"] < 0 if metric in LOWER_IS_BETTER else value["ci_low"] > 0)
    ]
    caveat = f" ({tuned['count']} of {tuned['n']} fine-tuned answers degenerate)" if tuned and tuned["count"] else ""
    if above:
        return {
            "kind": "improved",
            "message": f"improved on {', '.join(above)}: the {confidence_level:.0%} interval of the paired "
            f"difference lies above 0 (below 0 for a loss){caveat}",
        }
    return {
        "kind": "no_clear_difference",
        "message": f"no clear difference: every paired {confidence_level:.0%} interval includes 0{caveat}",
    }


def write_report(data: dict, out_dir: str | Path, outputs: Sequence[Path] = ()) -> EvaluationReport:
    """Write report.json, the charts of every set and report.md (which shows them) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {name: write_charts(name, summary, MAIN_METRICS, out_dir) for name, summary in data["sets"].items()}
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8")
    markdown_path = out_dir / REPORT_MD
    markdown_path.write_text(render_markdown(data, charts), encoding="utf-8")
    return EvaluationReport(
        out_dir=out_dir,
        markdown=markdown_path,
        json=json_path,
        charts=tuple(path for paths in charts.values() for path in paths),
        outputs=tuple(outputs),
        data=data,
    )


def read_report(out_dir: str | Path) -> EvaluationReport:
    """The report an evaluation wrote into `out_dir`: report.json's content, its Markdown, charts (PNG) and the
    other files beside them (generations, score tables, outputs for review), each kind in name order."""
    out_dir = Path(out_dir)
    json_path = out_dir / REPORT_JSON
    if not json_path.is_file():
        raise FileNotFoundError(f"no evaluation report in {out_dir}: {REPORT_JSON} is missing")
    reported = {json_path, out_dir / REPORT_MD}
    return EvaluationReport(
        out_dir=out_dir,
        markdown=out_dir / REPORT_MD,
        json=json_path,
        charts=tuple(sorted(out_dir.glob("*.png"))),
        outputs=tuple(sorted(path for path in out_dir.iterdir() if path.is_file() and path.suffix != ".png" and path not in reported)),
        data=json.loads(json_path.read_text(encoding="utf-8")),
    )


def regression_check(report: EvaluationReport | Mapping, tolerance: float) -> list[str]:
    """The main metrics of the primary set where the fine-tuned model's mean is below the base model's by more
    than `tolerance`, and the loss metrics where it is above by more than that (empty: no regression). Takes
    the report or report.json's content."""
    data = report.data if isinstance(report, EvaluationReport) else report
    return regressions(
        data["sets"][data["primary_set"]], main_metrics=data["main_metrics"], tolerance=tolerance,
        lower_is_better=data.get("lower_is_better", ()),
    )


def _truncation_line(summary: Mapping, set_name: str) -> str:
    """How often the budgets cut a completion short, per model: a report whose reasoning was mostly cut off
    measures the budget, not the model."""
    parts = [
        f"{MODEL_LABELS.get(model, model)} {stats['closed_by_budget_rate']:.0%} of reasoning cut at the thinking "
        "budget, "
        f"{1 - stats['finished_rate']:.0%} of completions cut at max_new_tokens"
        for model, stats in summary["generation"].items()
    ]
    return f"- truncation ({set_name}): " + "; ".join(parts)


def headline_lines(data: Mapping) -> list[str]:
    """The terminal summary of report.json's content: the stand-in note, the verdict, the main metrics of the
    primary set (base against fine-tuned with their intervals and the paired difference), then the regressions."""
    name = data["primary_set"]
    summary = data["sets"][name]
    confidence = data["settings"]["confidence_level"]
    width = max(len(metric) for metric in data["main_metrics"]) + 2
    lines = [data["stand_in"]] if data.get("stand_in") else []
    if data.get("verdict"):
        lines.append(f"verdict: {data['verdict']['message']}")
    lines += [
        f"{name} set, n = {summary['n']}: mean [{confidence:.0%} interval]",
        f"{'metric':<{width}}{'base':<30}{'fine-tuned':<30}fine-tuned − base",
    ]
    for metric in data["main_metrics"]:
        base, tuned = (format_estimate(summary["metrics"][model].get(metric)) for model in MODELS)
        difference = format_estimate(summary["difference"].get(metric), True)
        lines.append(f"{metric:<{width}}{base:<30}{tuned:<30}{difference}")
    lines += [f"{other} set, n = {data['sets'][other]['n']}: see the report" for other in data["sets"] if other != name]
    lines.append("regressions: " + ("; ".join(data["regressions"]) or "none"))
    return lines


def _reasoning_origin_lines(origins: Mapping[str, int] | None) -> list[str]:
    """Who wrote the test questions' reference reasoning; a model's is named as such wherever data is shown."""
    if not origins:
        return []
    total = sum(count for origin, count in origins.items() if origin != "rejected")
    return [
        f"- reasoning of the {total} test questions: {origins['expert']} by experts, {origins['model']} written by a "
        f"model (origin `model`, kept after the quality and answer-consistency checks), {origins['template']} from "
        f"the template, {origins['none']} none; only expert reasoning is a reference for the reasoning metrics"
    ]


def render_markdown(data: Mapping, charts: Mapping[str, Sequence[Path]]) -> str:
    """report.md: headline, regressions and suggestions of the primary set, then every set in detail."""
    primary = data["primary_set"]
    settings = data["settings"]
    models = data["models"]
    decoding = "greedy" if not settings["temperature"] else (
        f"temperature {settings['temperature']}, top_p {settings['top_p']}, top_k {settings.get('top_k') or 'off'}"
    )
    lines = [
        "# Evaluation report",
        "",
        *([f"> **{data['stand_in']}**", ""] if data.get("stand_in") else []),
        f"**Verdict: {data['verdict']['message']}**",
        "",
        *(f"- {MODEL_LABELS.get(model, model)}: {description}" for model, description in models.items()),
        *_reasoning_origin_lines(data.get("reasoning_origins")),
        f"- generation: at most {settings['max_new_tokens']} new tokens, thinking budget "
        f"{settings['thinking_budget']} tokens, {decoding}{_path_words(settings.get('generation_path'))}",
        _truncation_line(data["sets"][primary], primary),
        f"- intervals: {settings['confidence_level']:.0%} BCa bootstrap of the mean, "
        f"{settings['bootstrap_samples']} resamples (seed {settings['bootstrap_seed']}); differences are paired "
        "(fine-tuned − base on the same question); n is the number of answers the metric applies to, and below 30 "
        "an interval covers less often than it says (docs/evaluation.md)",
        "",
        f"## Headline ({primary}, n={data['sets'][primary]['n']})",
        "",
        *_headline_table(
            data["sets"][primary], [*data["main_metrics"], *data.get("loss_metrics", ())],
            data["verdict"]["kind"] == "degenerate",
        ),
        *_loss_note(data["sets"][primary], data.get("loss_metrics", ())),
        "",
        "## Regressions",
        "",
    ]
    if data["regressions"]:
        lines += [f"- {item}" for item in data["regressions"]]
    elif data["verdict"]["kind"] == "degenerate":
        lines.append("Not judged: the fine-tuned answers are degenerate, so means above the base model's are no gain.")
    else:
        lines.append(f"None: no main metric of the fine-tuned model is below the base model's, and no loss "
                     f"above it, by more than {settings['regression_tolerance']}.")
    lines += ["", "## Suggestions", ""]
    lines += [f"- **{item['kind']}**: {item['message']}" for item in data["suggestions"]] or ["None."]
    for name, summary in data["sets"].items():
        lines += ["", *_set_section(name, summary, data["main_metrics"], charts.get(name, ()))]
    if data.get("experts"):
        lines += ["", *_expert_section(data["experts"])]
    return "\n".join(lines) + "\n"


def _expert_section(experts: Mapping) -> list[str]:
    """How each expert scored against the others' median, their bias per dimension and the gold-set drift."""
    lines = [
        "## Expert performance",
        "",
        "Each expert against the median of the other experts on the items they share (leave-one-out); "
        f"intervals are BCa bootstrap over items, left out below {MIN_INTERVAL_ITEMS} items (docs/evaluation.md).",
    ]
    for title, header, rows in performance_tables(experts):
        lines += ["", f"### {title}", ""]
        lines += [_row(header), _row(["---"] * len(header)), *map(_row, rows)] if rows else ["None."]
    if experts["notes"]:
        lines += ["", *(f"- {note}" for note in experts["notes"])]
    return lines


def _headline_table(summary: Mapping, main_metrics: Sequence[str], degenerate: bool) -> list[str]:
    models = list(summary["metrics"])
    header = ["metric", *(MODEL_LABELS.get(model, model) for model in models)]
    if summary["difference"]:
        header.append("fine-tuned − base" + (" (degenerate answers: not an improvement)" if degenerate else ""))
    rows = [_row(header), _row(["---"] * len(header))]
    for metric in main_metrics:
        cells = [metric, *(format_estimate(summary["metrics"][model].get(metric)) for model in models)]
        if summary["difference"]:
            cells.append(format_estimate(summary["difference"].get(metric), signed=True))
        rows.append(_row(cells))
    return rows


def _loss_note(summary: Mapping, loss_metrics: Sequence[str]) -> list[str]:
    shown = [metric for metric in loss_metrics if any(metric in values for values in summary["metrics"].values())]
    if not shown:
        return []
    return ["", f"{', '.join(shown)}: teacher-forced loss of the reference given the question, in the training "
                "chat format (nats per token; lower is better)."]


def _set_section(name: str, summary: Mapping, main_metrics: Sequence[str], charts: Sequence[Path]) -> list[str]:
    models = list(summary["metrics"])
    labels = [MODEL_LABELS.get(model, model) for model in models]
    lines = [f"## Set: {name} (n={summary['n']})", ""]
    lines += [f"![{chart.stem}]({chart.name})" for chart in charts]
    lines += ["", "### All metrics", "", _row(["metric", "n", *labels]), _row(["---"] * (2 + len(models)))]
    names = dict.fromkeys(metric for model in models for metric in summary["metrics"][model] if "." not in metric)
    for metric in names:
        count = max(summary["metrics"][model].get(metric, {}).get("n", 0) for model in models)
        estimates = [format_estimate(summary["metrics"][model].get(metric)) for model in models]
        lines.append(_row([metric, str(count), *estimates]))

    lines += ["", "### By category (mean; base → fine-tuned)", ""]
    lines += [_row(["category", "n", *main_metrics]), _row(["---"] * (2 + len(main_metrics)))]
    for category, count in summary["categories"].items():
        cells = [category, str(count)]
        for metric in main_metrics:
            means = [_mean(summary["by_category"][model].get(category, {}).get(metric)) for model in models]
            cells.append(" → ".join(means))
        lines.append(_row(cells))

    lines += ["", "### Term F1 by term category", ""]
    lines += [_row(["term category", *labels]), _row(["---"] * (1 + len(models)))]
    term_categories = dict.fromkeys(cat for model in models for cat in summary["term_f1_by_category"][model])
    for category in term_categories:
        estimates = [format_estimate(summary["term_f1_by_category"][model].get(category)) for model in models]
        lines.append(_row([category, *estimates]))

    lines += ["", "### Generation", "", _row(["", *labels]), _row(["---"] * (1 + len(models)))]
    for stat in summary["generation"][models[0]]:
        lines.append(_row([stat, *(_number(summary["generation"][model][stat]) for model in models)]))

    for model, label in zip(models, labels, strict=True):
        terms = summary["terms"][model]
        lines += [
            "",
            f"### Reference terms the {label} model never produced "
            f"({len(terms['never_produced'])} of {terms['reference_terms']})",
            "",
        ]
        if terms["never_produced"]:
            lines += [_row(["term", "id", "category", "references"]), _row(["---"] * 4)]
            lines += [_row([term["zh"], term["id"], term["category"], str(term["references"])])
                      for term in terms["never_produced"][:TERMS_LISTED]]
        else:
            lines.append("None.")

    lines += ["", "### Misconceptions stated", ""]
    stated = [
        (label, hit) for model, label in zip(models, labels, strict=True) for hit in summary["misconceptions"][model]
    ]
    if stated:
        lines += [_row(["model", "misconception", "answers", "claim"]), _row(["---"] * 4)]
        lines += [_row([label, hit["id"], str(hit["count"]), hit["claim"]]) for label, hit in stated]
    else:
        lines.append("None.")

    lines += ["", "### Claims checked against the fact base", ""]
    lines += [_row(["model", "answers with claims", "confirmed", "contradicted"]), _row(["---"] * 4)]
    for model, label in zip(models, labels, strict=True):
        check = summary["fact_check"][model]
        counts = (check["answers_with_claims"], check["confirmed"], check["contradicted"])
        lines.append(_row([label, *(str(count) for count in counts)]))
    contradictions = [
        (label, item) for model, label in zip(models, labels, strict=True)
        for item in summary["fact_check"][model]["contradictions"][:CONTRADICTIONS_LISTED]
    ]
    if contradictions:
        lines += ["", _row(["model", "answer", "claim", "against the fact base"]), _row(["---"] * 4)]
        lines += [_row([label, item["id"], item["claim"], item["fact"]]) for label, item in contradictions]

    lines += ["", "### Sample answers", ""]
    for sample in summary["samples"]:
        lines += [f"**{sample['id']}** {_inline(sample['question'])}", "",
                  f"- reference: {_inline(sample['reference'])}"]
        lines += [f"- {label}: {_inline(sample[model])}" for model, label in zip(models, labels, strict=True)]
        lines.append("")
    return lines


def _paired_differences(scores: Mapping[str, Scores], models: Sequence[str], bootstrap: Mapping) -> dict:
    differences = {}
    for metric in JUDGED_METRICS:
        pairs = [
            (tuned.get(metric), base.get(metric))
            for tuned, base in zip(scores["finetuned"], scores["base"], strict=True)
        ]
        values = [tuned - base for tuned, base in pairs if _finite(tuned) and _finite(base)]
        if values:
            low, high = bootstrap_interval(values, **bootstrap)
            differences[metric] = {"mean": sum(values) / len(values), "ci_low": low, "ci_high": high, "n": len(values)}
    return differences


def _by_category(items: Sequence[GeneratedAnswer], scores: Scores, bootstrap: Mapping) -> dict:
    grouped: dict[str, list[dict[str, float]]] = {}
    for item, row in zip(items, scores, strict=True):
        grouped.setdefault(item.category or "uncategorized", []).append(
            {metric: row[metric] for metric in MAIN_METRICS if metric in row}
        )
    return {category: aggregate(rows, **bootstrap) for category, rows in sorted(grouped.items())}


def _term_f1_by_category(metrics: Mapping[str, Mapping]) -> dict:
    prefix = "term_f1."
    return {name.removeprefix(prefix): value for name, value in metrics.items() if name.startswith(prefix)}


def _generation_stats(answers: Sequence[GeneratedAnswer], elapsed_s: float | None, degenerate: int) -> dict[str, float]:
    count = len(answers)
    tokens = sum(answer.tokens_generated for answer in answers)
    stats = {
        "tokens_generated_mean": tokens / count,
        "reasoning_tokens_mean": sum(answer.reasoning_tokens for answer in answers) / count,
        "answer_chars_mean": sum(len(answer.answer) for answer in answers) / count,
        # One definition each: the model wrote `</think>` itself, or the thinking budget ran out and it was
        # appended; the rest ended their turn while still reasoning.
        "closed_by_model_rate": sum(answer.thinking_closed for answer in answers) / count,
        "closed_by_budget_rate": sum(answer.forced_close for answer in answers) / count,
        "finished_rate": sum(answer.finished for answer in answers) / count,
        "degenerate_rate": degenerate / count,
        "latency_mean_s": sum(answer.latency_s for answer in answers) / count,
    }
    if elapsed_s:
        stats["generation_s"] = elapsed_s
        stats["tokens_per_second"] = tokens / elapsed_s
    return stats


def _degenerate(answers: Sequence[GeneratedAnswer]) -> dict:
    """How many answers are degenerate (`degenerate.degeneration`), how many of each kind, and which."""
    found = {answer.id: found for answer in answers if (found := degeneration(answer.answer)) is not None}
    kinds = Counter(found.kind for found in found.values())
    return {
        "count": len(found),
        "n": len(answers),
        "reasons": dict(kinds.most_common()),
        "examples": {key: found.detail for key, found in found.items()},
    }


def _term_coverage(answers: Sequence[GeneratedAnswer], dictionary: TermDictionary) -> dict:
    """Reference terms (distinct per reference) and which of them no answer of the set contains."""
    in_references: Counter[str] = Counter()
    produced: set[str] = set()
    for answer in answers:
        in_references.update(set(dictionary.term_ids(answer.reference_answer)))
        produced.update(dictionary.term_ids(answer.answer))
    never = sorted(
        (term for term in in_references if term not in produced), key=lambda term: (-in_references[term], term)
    )
    return {
        "reference_terms": len(in_references),
        "produced": len(in_references) - len(never),
        "never_produced": [
            {"id": term, "zh": dictionary[term].zh, "en": dictionary[term].en, "category": dictionary[term].category,
             "references": in_references[term]}
            for term in never
        ],
    }


def _misconceptions_stated(answers: Sequence[GeneratedAnswer], misconceptions: Sequence[Misconception]) -> list[dict]:
    by_id = {misconception.id: misconception for misconception in misconceptions}
    stated: dict[str, list[str]] = {}
    for answer in answers:
        for hit in detect_misconceptions(answer.answer, list(misconceptions)):
            stated.setdefault(hit.misconception_id, []).append(answer.id)
    return [
        {"id": key, "claim": by_id[key].claim, "correction": by_id[key].correction, "count": len(ids), "examples": ids}
        for key, ids in sorted(stated.items(), key=lambda item: (-len(item[1]), item[0]))
    ]


def _fact_check(answers: Sequence[GeneratedAnswer], facts: FactBase) -> dict:
    """How many answers make checkable claims, the confirmed and contradicted totals, and each contradiction with the
    fact and its source."""
    confirmed = contradicted = with_claims = 0
    contradictions = []
    for answer in answers:
        check = facts.check_text(answer.answer)
        confirmed += len(check.confirmed)
        contradicted += len(check.contradicted)
        with_claims += bool(check.confirmed or check.contradicted)
        contradictions += [
            {"id": answer.id, "claim": verdict.claim.text, "fact": verdict.describe()} for verdict in check.contradicted
        ]
    return {"answers_with_claims": with_claims, "confirmed": confirmed, "contradicted": contradicted,
            "contradictions": contradictions}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if _finite(value) else None


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _inline(text: str) -> str:
    return " ".join(text.split()) or "(empty)"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") if cell != "---" else cell for cell in cells) + " |"


def _mean(value: Mapping | None) -> str:
    return f"{value['mean']:.3f}" if value else "–"


def _number(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
