"""The annotation stage: each example gets its terms, categories, complexity, answer metrics and scored reasoning."""

from __future__ import annotations

from collections.abc import Iterable

from qft_core.config import DataConfig
from qft_core.data.chinese import chinese_metrics
from qft_core.data.terms import TERM_CATEGORIES, TermDictionary
from qft_core.data.thinking import generate_thinking, score_thinking
from qft_core.records import ThinkingExample, render_thinking


def annotate_example(example: ThinkingExample, dictionary: TermDictionary, config: DataConfig) -> ThinkingExample:
    """A new example with terms, term categories and complexity, answer metrics and thinking quality filled in.

    An example without thinking gets a generated trace (thinking_origin "generated") when the config asks for
    it, else thinking_origin "none". Terms come from question and answer, plus the reasoning when an expert
    wrote it: a generated trace only repeats the question's and answer's terms. With no term found, the
    front-matter category stands in for the categories if it is one of the term categories.
    """
    thinking, origin = example.thinking, example.thinking_origin
    if not thinking:
        if config.generate_missing_thinking:
            thinking, origin = generate_thinking(example, dictionary), "generated"
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
