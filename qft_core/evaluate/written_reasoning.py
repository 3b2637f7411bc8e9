"""Reasoning written by a model for pairs without expert thinking: the prompt (question and expert answer), the
checks a written reasoning must pass to be kept, and the pass that keeps the accepted ones (origin "model") and
records why each refused one was refused (the annotation stage then gives it the template's)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from qft_core.config import QftConfig, ReasoningConfig
from qft_core.data.terms import TermDictionary
from qft_core.data.thinking import new_share, score_thinking
from qft_core.evaluate.claims import Claim, numeric_values
from qft_core.evaluate.facts import FactBase
from qft_core.evaluate.reasoning_writers import Progress, ReasoningWriter, WriteFailed, reasoning_writer
from qft_core.evaluate.thinking_quality import THINK_CLOSE, THINK_OPEN
from qft_core.records import ThinkingExample, ThinkingStructure

PROMPT = (
    "下面是一道密码学问题和专家给出的标准答案。请写出从问题出发、一步步推出这个答案的推理过程："
    "先弄清问题问的是什么，再回忆相关的概念、原理和标准中的参数，然后逐步推理，最后得出与答案一致的结论"
    "（用“因此”或“综上”引出）。\n"
    "要求：数值、单位和术语必须与答案一致；不要照抄答案的句子，要写出答案背后的理由；"
    "只输出推理过程本身，不要再单独给出答案，不要使用 <think> 标签。\n\n"
    "问题：{question}\n\n专家答案：{answer}"
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def reasoning_prompt(question: str, answer: str) -> str:
    """What the writer is asked: the reasoning that leads from `question` to the expert's `answer`."""
    return PROMPT.format(question=question.strip(), answer=answer.strip())


@dataclass(frozen=True)
class ReasoningCheck:
    """The verdict on one written reasoning: its quality score and every problem found (none: accepted)."""

    quality: float
    problems: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.problems


def check_written_reasoning(
    reasoning: str, answer: str, dictionary: TermDictionary, facts: FactBase, config: ReasoningConfig
) -> ReasoningCheck:
    """Accept a written reasoning only when it is good enough and consistent with the expert answer.

    Quality: score_thinking ≥ `min_quality` (key terms of the answer reached, not trivial, concluded).
    Consistency with the answer, each a problem of its own:
      - it does not restate the answer: at least `min_new_share` of it lies outside runs copied from the answer;
      - no number in it contradicts the answer: neither a (term, attribute, unit) quantity (score_thinking's
        contradictions) nor a fact-base claim (subject, attribute) whose values are disjoint from the answer's
        ("AES-256 有 10 轮" against "14 轮");
      - no claim in it that the answer does not make contradicts the fact base;
      - no `<think>` tag (the exports could not carry it).
    """
    score = score_thinking(reasoning, answer, dictionary)
    if not score.present:
        return ReasoningCheck(0.0, ("empty",))
    problems = []
    if THINK_OPEN in reasoning or THINK_CLOSE in reasoning:
        problems.append(f"contains a {THINK_OPEN} or {THINK_CLOSE} tag")
    if score.score < config.min_quality:
        missing = f" (answer terms it never reaches: {', '.join(score.missing_terms)})" if score.missing_terms else ""
        problems.append(f"quality {score.score:.2f} below reasoning.min_quality {config.min_quality:.2f}{missing}")
    share = new_share(reasoning, answer)
    if share < config.min_new_share:
        problems.append(
            f"restates the answer: {share:.0%} of it is not copied from the answer "
            f"(reasoning.min_new_share {config.min_new_share:.0%})"
        )
    problems += [f"contradicts the answer: {contradiction}" for contradiction in score.contradictions]
    stated, expected = facts.claims(reasoning), facts.claims(answer)
    problems += [f"contradicts the answer: {disagreement}" for disagreement in _disagreements(stated, expected)]
    own = [claim for claim in stated if (claim.subject, claim.attribute, claim.values) not in
           {(c.subject, c.attribute, c.values) for c in expected}]
    problems += [f"contradicts the fact base: {verdict.describe()}" for verdict in facts.check(own).contradicted]
    return ReasoningCheck(score.score, tuple(problems))


def _disagreements(stated: Sequence[Claim], expected: Sequence[Claim]) -> list[str]:
    """Numeric (subject, attribute) pairs both texts state with disjoint values, as 'aes_256 rounds: reasoning 10,
    answer 14' (claims.compare_claims' rule, with the pairs named)."""
    in_reasoning, in_answer = numeric_values(stated), numeric_values(expected)
    return [
        f"{subject} {attribute}: reasoning {_values(values)}, answer {_values(in_answer[subject, attribute])}"
        for (subject, attribute), values in in_reasoning.items()
        if (subject, attribute) in in_answer and values.isdisjoint(in_answer[subject, attribute])
    ]


def _values(values: set) -> str:
    return ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in sorted(values, key=str))


def reasoning_steps(reasoning: str) -> list[ThinkingStructure]:
    """A written reasoning as steps, one per paragraph (render_thinking joins them back with blank lines)."""
    return [ThinkingStructure(text=part.strip()) for part in _PARAGRAPH_BREAK.split(reasoning) if part.strip()]


@dataclass(frozen=True)
class WrittenReasoning:
    """The examples after the pass, in input order, and the writer failures that left pairs without reasoning
    (each distinct message once: an unreachable endpoint is one failure, however many pairs it cost)."""

    examples: list[ThinkingExample]
    writer: str | None
    failures: list[str]


def write_missing_reasoning(
    examples: Sequence[ThinkingExample],
    config: QftConfig,
    dictionary: TermDictionary,
    *,
    writer: ReasoningWriter | None = None,
    progress: Progress | None = None,
) -> WrittenReasoning:
    """Ask the writer (`writer`, else the one `reasoning.writer` names) for the reasoning of every example that has
    none, check each reply (check_written_reasoning) and keep the accepted ones as `thinking_origin="model"` with
    `thinking_writer` naming the writer. A refused or failed one stays without reasoning, `thinking_rejected`
    saying why, for the annotation stage to give it the template's. With the template writer, or with
    data.generate_missing_thinking off, the examples come back as they were."""
    missing = [index for index, example in enumerate(examples) if not example.thinking]
    writer = writer or (reasoning_writer(config) if missing and config.data.generate_missing_thinking else None)
    if writer is None or not config.data.generate_missing_thinking or not missing:
        return WrittenReasoning(list(examples), None, [])
    facts = FactBase.load(config.paths.resolve(config.paths.fact_base))
    prompts = [reasoning_prompt(examples[index].question, examples[index].answer) for index in missing]
    replies = writer.write(prompts, progress)
    written, failures = list(examples), []
    for index, reply in zip(missing, replies, strict=True):
        example = examples[index]
        if isinstance(reply, WriteFailed):
            failures.append(reply.message)
            update = {"thinking_writer": writer.name, "thinking_rejected": f"writer failed: {reply.message}"}
        else:
            check = check_written_reasoning(reply, example.answer, dictionary, facts, config.reasoning)
            if check.accepted:
                update = {"thinking": reasoning_steps(reply), "thinking_origin": "model",
                          "thinking_writer": writer.name, "thinking_rejected": None}
            else:
                update = {"thinking_writer": writer.name, "thinking_rejected": "; ".join(check.problems)}
        written[index] = example.model_copy(update=update)
    return WrittenReasoning(written, writer.name, list(dict.fromkeys(failures)))
