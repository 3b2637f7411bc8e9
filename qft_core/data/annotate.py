"""The annotation stage: each example gets its terms, categories, complexity, answer metrics and scored reasoning;
and the account of who wrote each example's reasoning."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qft_core.config import DataConfig
from qft_core.data.chinese import chinese_metrics
from qft_core.data.terms import TERM_CATEGORIES, TermDictionary
from qft_core.data.thinking import generate_thinking, score_thinking
from qft_core.records import THINKING_ORIGINS, ThinkingExample, render_thinking


def annotate_example(example: ThinkingExample, dictionary: TermDictionary, config: DataConfig) -> ThinkingExample:
    """A new example with terms, term categories and complexity, answer metrics and thinking quality filled in.

    An example still without thinking (none in the corpus, and no model's accepted: see
    qft_core.evaluate.written_reasoning) gets the template's trace (thinking_origin "template") when the config
    asks for it, else thinking_origin "none". Terms come from question and answer, plus the reasoning when an
    expert wrote it: a template's or a model's trace is built from the question and answer. With no term found, the
    front-matter category stands in for the categories if it is one of the term categories.
    """
    thinking, origin = example.thinking, example.thinking_origin
    if not thinking:
        if config.generate_missing_thinking:
            thinking, origin = generate_thinking(example, dictionary), "template"
        else:
            origin = "none"
    reasoning = render_thinking(thinking)
    texts = [example.question, example.answer, *([reasoning] if origin == "expert" else [])]
    terms = list(dict.fromkeys(term_id for text in texts for term_id in dictionary.term_ids(text)))
    categories = dictionary.categories_of(terms)
    if not categories and example.category in TERM_CATEGORIES:
        categories = [example.category]
    return example.model_copy(
        update={
            "thinking": thinking,
            "thinking_origin": origin,
            "terms": terms,
            "term_categories": categories,
            "term_complexity": dictionary.complexity(terms),
            "metrics": chinese_metrics(example.answer),
            "thinking_quality": score_thinking(reasoning, example.answer, dictionary).score if thinking else None,
        }
    )


def annotate_examples(
    examples: Iterable[ThinkingExample], dictionary: TermDictionary, config: DataConfig
) -> list[ThinkingExample]:
    """Every example annotated (see annotate_example), in input order; the inputs are left untouched."""
    return [annotate_example(example, dictionary, config) for example in examples]


def reasoning_account(examples: Sequence[ThinkingExample]) -> dict[str, int]:
    """How many examples carry reasoning of each origin (expert, model, template, none: they add up to all), and
    how many of them had a model's reasoning refused (`rejected`, also counted under the origin they ended with)."""
    account = {origin: sum(example.thinking_origin == origin for example in examples) for origin in THINKING_ORIGINS}
    account["rejected"] = sum(example.thinking_rejected is not None for example in examples)
    return account


def rejected_reasoning(examples: Sequence[ThinkingExample]) -> list[dict[str, str]]:
    """Each example whose model-written reasoning was refused: id, file:line, writer and why."""
    return [
        {"id": example.id, "file": f"{example.source_file}:{example.source_line}",
         "writer": example.thinking_writer or "", "reason": example.thinking_rejected}
        for example in examples
        if example.thinking_rejected is not None
    ]
