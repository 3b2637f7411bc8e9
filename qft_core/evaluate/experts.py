"""Expert review of model outputs: expert profiles, the 1–5 rubric, who reviews which item, consensus and gold items.

Pure logic only; `expert_store.py` keeps it in SQLite and `agreement.py` measures how far the experts agree.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from qft_core.data.terms import TERM_CATEGORIES
from qft_core.records import Record

ROLES = ("annotator", "reviewer", "admin")
# Admins run the review; only annotators and reviewers are handed items to score.
ASSIGNABLE_ROLES = ("annotator", "reviewer")
RUBRIC = ("accuracy", "completeness", "reasoning", "language")
MIN_SCORE, MAX_SCORE = 1, 5
# Two experts two points apart on one dimension (a 3 against a 5) disagree about the item, not the nuance.
ADJUDICATION_SPREAD = 2

Role = Literal["annotator", "reviewer", "admin"]
AssignmentStrategy = Literal["round_robin", "speciality"]
ASSIGNMENT_STRATEGIES = ("round_robin", "speciality")


class ExpertError(ValueError):
    """An expert-review operation that cannot be done; the message names the expert, task, field or file."""


class RubricError(ExpertError):
    """A rubric score outside the integers 1–5."""


class AssignmentError(ExpertError):
    """Items that cannot be assigned as asked (too few experts, a bad per-item count)."""


class Expert(Record):
    """A person who reviews model outputs; specialities are term categories."""

    id: int
    name: str
    email: str
    role: Role
    specialities: list[str]


def check_profile(name: str, email: str, role: str, specialities: Iterable[str]) -> list[str]:
    """Validate a new expert's profile; returns the specialities sorted and without repeats."""
    if not name.strip():
        raise ExpertError("an expert needs a name")
    if email.count("@") != 1 or not all(part.strip() for part in email.split("@")):
        raise ExpertError(f"'{email}' is not an email address")
    if role not in ROLES:
        raise ExpertError(f"unknown role '{role}'; expected one of {', '.join(ROLES)}")
    cleaned = sorted({item.strip() for item in specialities if item.strip()})
    unknown = [item for item in cleaned if item not in TERM_CATEGORIES]
    if unknown:
        raise ExpertError(
            f"unknown speciality {', '.join(unknown)}; expected term categories: {', '.join(TERM_CATEGORIES)}"
        )
    return cleaned


class EvalOutput(Record):
    """One model answer to one evaluation question: what evaluation writes, one JSON object per line."""

    example_id: str
    model_id: str
    question: str
    reference_answer: str
    predicted_reasoning: str = ""
    predicted_answer: str
    category: str | None = None
    term_categories: list[str] = Field(default_factory=list)

    def categories(self) -> set[str]:
        return set(self.term_categories) | ({self.category} if self.category else set())


class AnnotationTask(EvalOutput):
    """An evaluation output put up for expert review."""

    id: int


def read_eval_outputs(path: str | Path) -> list[EvalOutput]:
    """Read a JSONL file of evaluation outputs; a bad line raises ExpertError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ExpertError(f"{path}: cannot read evaluation outputs: {error.strerror}") from None
    outputs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            outputs.append(EvalOutput.model_validate_json(line))
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "line"
            raise ExpertError(f"{path}:{number}: {where}: {problem['msg']}") from None
    return outputs


@dataclass(frozen=True)
class RubricScore:
    """One expert's 1–5 scores of one item on the four rubric dimensions."""

    accuracy: int
    completeness: int
    reasoning: int
    language: int
    comment: str | None = None

    def __post_init__(self) -> None:
        for dimension, value in self.values().items():
            # bool is an int subclass: True must not pass as a score of 1.
            if isinstance(value, bool) or not isinstance(value, int) or not MIN_SCORE <= value <= MAX_SCORE:
                raise RubricError(f"{dimension} must be an integer from {MIN_SCORE} to {MAX_SCORE}, got {value!r}")

    def values(self) -> dict[str, int]:
        return {dimension: getattr(self, dimension) for dimension in RUBRIC}


@dataclass(frozen=True)
class Rating:
    """A rubric score given by one expert to one task."""

    task_id: int
    expert_id: int
    score: RubricScore


def plan_assignments(
    tasks: Sequence[AnnotationTask],
    experts: Sequence[Expert],
    existing: Iterable[tuple[int, int]],
    per_item: int,
    strategy: AssignmentStrategy = "round_robin",
) -> list[tuple[int, int]]:
    """New (task id, expert id) pairs that bring every task to `per_item` distinct experts.

    Existing pairs count towards the total and are never repeated. The least-loaded experts go first, ties by
    id, which hands fresh items out in turn; with "speciality", experts whose specialities cover the task's
    categories go before the others.
    """
    if per_item < 1:
        raise AssignmentError(f"per-item count must be at least 1, got {per_item}")
    if strategy not in ASSIGNMENT_STRATEGIES:
        raise AssignmentError(
            f"unknown assignment strategy '{strategy}'; expected one of {', '.join(ASSIGNMENT_STRATEGIES)}"
        )
    eligible = sorted((expert for expert in experts if expert.role in ASSIGNABLE_ROLES), key=lambda expert: expert.id)
    if len(eligible) < per_item:
        raise AssignmentError(
            f"{per_item} experts per item needs at least {per_item} annotators or reviewers, found {len(eligible)}"
        )
    assigned: dict[int, set[int]] = {}
    load: Counter[int] = Counter()
    for task_id, expert_id in existing:
        assigned.setdefault(task_id, set()).add(expert_id)
        load[expert_id] += 1
    planned = []
    for task in sorted(tasks, key=lambda task: task.id):
        already = assigned.setdefault(task.id, set())
        wanted = task.categories() if strategy == "speciality" else set()
        candidates = sorted(
            (expert for expert in eligible if expert.id not in already),
            key=lambda expert: (bool(wanted) and not wanted & set(expert.specialities), load[expert.id], expert.id),
        )
        for expert in candidates[: max(per_item - len(already), 0)]:
            planned.append((task.id, expert.id))
            already.add(expert.id)
            load[expert.id] += 1
    return planned


@dataclass(frozen=True)
class ItemConsensus:
    """The experts' joint verdict on one task: the median per dimension and how far apart they were."""

    task_id: int
    raters: int
    medians: dict[str, float]
    spreads: dict[str, int]
    disputed: tuple[str, ...] = field(default=())

    @property
    def flagged(self) -> bool:
        """Whether the item needs adjudication: some dimension's scores lie the adjudication spread apart."""
        return bool(self.disputed)


def consensus(ratings: Iterable[Rating], flag_spread: int = ADJUDICATION_SPREAD) -> list[ItemConsensus]:
    """One consensus per rated task, in task order."""
    by_task: dict[int, list[RubricScore]] = {}
    for rating in ratings:
        by_task.setdefault(rating.task_id, []).append(rating.score)
    verdicts = []
    for task_id in sorted(by_task):
        scores = by_task[task_id]
        columns = {dimension: [score.values()[dimension] for score in scores] for dimension in RUBRIC}
        spreads = {dimension: max(values) - min(values) for dimension, values in columns.items()}
        verdicts.append(
            ItemConsensus(
                task_id=task_id,
                raters=len(scores),
                medians={dimension: float(statistics.median(values)) for dimension, values in columns.items()},
                spreads=spreads,
                disputed=tuple(dimension for dimension in RUBRIC if spreads[dimension] >= flag_spread),
            )
        )
    return verdicts


class GoldItem(EvalOutput):
    """A reviewed output the experts agree is good: the output, its task and the median score per dimension."""

    task_id: int
    raters: int
    scores: dict[str, float]


def select_gold_items(
    tasks: Mapping[int, AnnotationTask], verdicts: Iterable[ItemConsensus], min_raters: int, min_score: float
) -> list[GoldItem]:
    """The tasks rated by at least `min_raters` experts, not flagged, with every median at least `min_score`."""
    if min_raters < 1:
        raise ExpertError(f"min raters must be at least 1, got {min_raters}")
    if not MIN_SCORE <= min_score <= MAX_SCORE:
        raise ExpertError(f"min score must lie between {MIN_SCORE} and {MAX_SCORE}, got {min_score}")
    items = []
    for verdict in sorted(verdicts, key=lambda verdict: verdict.task_id):
        if verdict.raters < min_raters or verdict.flagged or min(verdict.medians.values()) < min_score:
            continue
        task = tasks[verdict.task_id]
        items.append(
            GoldItem(
                **task.model_dump(exclude={"id"}), task_id=task.id, raters=verdict.raters, scores=verdict.medians
            )
        )
    return items


def gold_set_hash(items: Iterable[GoldItem]) -> str:
    """SHA-256 of the items' canonical JSON: equal contents give equal hashes, whenever and wherever computed."""
    canonical = json.dumps(
        [item.model_dump(mode="json") for item in items], ensure_ascii=False, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GoldSnapshot:
    """One gold-set version as drift compares it: its items and the experts' scores of them when it was made
    (empty for versions made before the store kept those scores)."""

    version: int
    items: tuple[GoldItem, ...]
    ratings: tuple[Rating, ...]
