"""One evaluation: the base model and the base model with the fine-tuned adapter answer the test split (and the
expert gold set), both are scored against the references, and the report is written."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from qft_core.config import EvalConfig, QftConfig
from qft_core.data.annotate import reasoning_account
from qft_core.data.terms import TermDictionary
from qft_core.device import resolve_device
from qft_core.evaluate.expert_performance import Resampling
from qft_core.evaluate.expert_store import ExpertStore, default_db_path
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.generate import (
    EvalItem,
    GeneratedAnswer,
    generate_answers,
    items_from_examples,
    items_from_gold,
    with_model_sampling,
)
from qft_core.evaluate.generation_path import generation_path_for
from qft_core.evaluate.metrics import score_many
from qft_core.evaluate.misconceptions import load_misconceptions
from qft_core.evaluate.report import (
    MODELS,
    EvaluationReport,
    build_report,
    summarize_set,
    write_report,
    write_score_table,
)
from qft_core.evaluate.teacher_forced import reference_turns, teacher_forced_losses
from qft_core.model.peft_files import ADAPTER_CONFIG
from qft_core.model.registry import ensure_model_dir, load_model, load_tokenizer, resolve_model, stand_in_note
from qft_core.records import ThinkingExample, write_jsonl

Progress = Callable[[int, int, str], None]
EVAL_OUTPUTS = "eval_outputs.jsonl"


class AdapterNotFound(FileNotFoundError):
    """The adapter folder to evaluate has no adapter_config.json (a PEFT adapter's config)."""


def evaluate_models(
    config: QftConfig,
    test_examples: Sequence[ThinkingExample],
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    gold_items: Sequence[GoldItem] | None = None,
    expert_db: str | Path | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Generate with the base model, then with base + adapter, on the test examples (at most
    `eval.max_examples`) and the gold items, and take each model's teacher-forced loss on their references;
    score both; write into `out_dir` the report (report.md, report.json, PNG charts), each model's completions
    per set (`generations_<set>_<model>.jsonl`), every score of a set as a table (`scores_<set>.parquet`) and the
    fine-tuned model's answers for expert review (`eval_outputs.jsonl`). Where the expert database (`expert_db`,
    by default the one `qft experts` uses) holds ratings, the report shows how each expert scores against the others.

    `progress(done, total, stage)` is called as examples are generated and sets scored.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterNotFound(f"{adapter_dir / ADAPTER_CONFIG}: no PEFT adapter to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = _evaluation_sets(test_examples, gold_items or (), config.eval.max_examples)
    total_items = sum(len(items) for items in sets.values())
    steps = _Steps(progress, total=4 * total_items + len(sets))

    spec = resolve_model(config.model, config.paths)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, dtype=config.model.dtype, device=resolve_device(config.model.device))
    # The report states the sampling actually used, the model's recommended settings included.
    eval_config = with_model_sampling(config.eval, ensure_model_dir(spec))
    # One path for both models, so their timings compare; the report says which and why.
    path = generation_path_for(model)
    generations: dict[str, dict[str, list[GeneratedAnswer]]] = {name: {} for name in sets}
    elapsed: dict[str, dict[str, float]] = {name: {} for name in sets}
    losses: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in sets}
    for role in MODELS:
        if role == "finetuned":
            # Imported here: importing peft also loads the quantization backends, seconds of startup that
            # importing this module (as the Dagster definitions do) should not pay.
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        for name, items in sets.items():
            began = time.perf_counter()
            generations[name][role] = generate_answers(
                model, tokenizer, items, eval_config, progress=steps.within(f"{role} on {name}"),
                label=f"{role} on {name}", path=path,
            )
            elapsed[name][role] = time.perf_counter() - began
            steps.advance(len(items))
            losses[name][role] = teacher_forced_losses(
                model, tokenizer, reference_turns(items), progress=steps.within(f"{role} loss on {name}"),
            )
            steps.advance(len(items))
    # Scoring may fork worker processes; they need none of the weights.
    del model

    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    misconceptions = load_misconceptions(config.paths.resolve(config.paths.misconceptions), dictionary)
    facts = FactBase.load(config.paths.resolve(config.paths.fact_base))
    summaries, outputs = {}, []
    for name in sets:
        scores = {
            role: [
                {**row, **loss}
                for row, loss in zip(score_many(
                    [answer.prediction for answer in answers],
                    [answer.reference_answer for answer in answers],
                    reference_reasonings=[answer.reference_reasoning for answer in answers],
                    dictionary=dictionary,
                    misconceptions=misconceptions,
                    facts=facts,
                    workers=config.eval.metric_workers,
                ), losses[name][role], strict=True)
            ]
            for role, answers in generations[name].items()
        }
        summaries[name] = summarize_set(
            generations[name], scores, dictionary=dictionary, misconceptions=misconceptions, facts=facts,
            config=eval_config, elapsed_s=elapsed[name],
        )
        for role, answers in generations[name].items():
            outputs.append(write_jsonl(answers, out_dir / f"generations_{name}_{role}.jsonl"))
        outputs.append(write_score_table(generations[name], scores, out_dir / f"scores_{name}.parquet"))
        steps.advance(1, f"scored {name}")
    model_id = f"{spec.name}+{adapter_dir.name}"
    review = [answer.to_eval_output(model_id) for answers in generations.values() for answer in answers["finetuned"]]
    outputs.append(write_jsonl(review, out_dir / EVAL_OUTPUTS))
    data = build_report(
        summaries,
        models={"base": spec.name, "finetuned": f"{spec.name} + LoRA adapter {adapter_dir}"},
        config=eval_config,
        stand_in=stand_in_note(spec.name),
        generation_path=path.as_metadata(),
        experts=expert_performance_section(
            Path(expert_db) if expert_db else default_db_path(config.paths), eval_config
        ),
        reasoning_origins=reasoning_account(list(test_examples)[: config.eval.max_examples]),
    )
    return write_report(data, out_dir, outputs)


def expert_performance_section(db_path: Path, config: EvalConfig) -> dict | None:
    """The experts' performance as report.json holds it; None where the database does not exist or holds no
    ratings."""
    if not db_path.is_file():
        return None
    with ExpertStore(db_path) as store:
        if not store.ratings():
            return None
        resampling = Resampling(config.bootstrap_samples, config.bootstrap_seed, config.confidence_level)
        return asdict(store.performance(resampling))


def _evaluation_sets(
    test_examples: Sequence[ThinkingExample], gold_items: Sequence[GoldItem], limit: int | None
) -> dict[str, list[EvalItem]]:
    sets = {"test": items_from_examples(test_examples)[:limit]}
    if gold_items:
        sets["gold"] = items_from_gold(gold_items)[:limit]
    empty = [name for name, items in sets.items() if not items]
    if empty:
        raise ValueError(f"nothing to evaluate: the {', '.join(empty)} set is empty")
    return sets


class _Steps:
    """Overall progress across models and sets, fed by each generation's own progress."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def within(self, stage: str) -> Progress | None:
        if self.progress is None:
            return None
        return lambda done, _total, _label: self.progress(self.done + done, self.total, stage)

    def advance(self, count: int, stage: str | None = None) -> None:
        self.done += count
        if self.progress is not None and stage is not None:
            self.progress(self.done, self.total, stage)
