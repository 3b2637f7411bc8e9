"""Term-balanced train/validation/test splits: stratified over term categories and difficulty, and
near-duplicate questions kept in one split so that nothing leaks."""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from qft_core.config import SplitConfig
from qft_core.data.annotate import reasoning_account
from qft_core.records import ThinkingExample

SPLIT_NAMES = ("train", "validation", "test")
_EPSILON = 1e-9
_LETTERS_AND_DIGITS = re.compile(r"[^\W_]+")


class SplitError(ValueError):
    """Examples that cannot be split as given (e.g. two examples share an id)."""


@dataclass(frozen=True)
class SplitResult:
    """The three splits (each example with its `split` set, in input order) and the report of how they came out."""

    train: list[ThinkingExample]
    validation: list[ThinkingExample]
    test: list[ThinkingExample]
    report: dict = field(default_factory=dict)

    def splits(self) -> dict[str, list[ThinkingExample]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def data_summary(self) -> dict:
        """What a model card says of the data: the split sizes, and who wrote the reasoning (all splits together;
        none for splits made before reasoning origins were counted)."""
        by_split = self.report.get("reasoning_origins", {}).values()
        origins = {origin: sum(counts[origin] for counts in by_split) for origin in next(iter(by_split), {})}
        return {"examples": self.report["sizes"], "reasoning_origins": origins}

    def category_share_rows(self) -> list[dict]:
        """One row per category: its share of each split's examples, for a table."""
        shares = self.report.get("category_share", {})
        categories = sorted({category for split in shares.values() for category in split})
        return [
            {"category": category, **{name: round(shares.get(name, {}).get(category, 0.0), 4) for name in SPLIT_NAMES}}
            for category in categories
        ]


# ---- near-duplicate questions -------------------------------------------------------------------------------


def question_shingles(question: str, ngram: int) -> frozenset[str]:
    """Character n-grams of the question's letters and digits (NFKC, case-folded); a shorter text is one shingle."""
    content = "".join(_LETTERS_AND_DIGITS.findall(unicodedata.normalize("NFKC", question).casefold()))
    if len(content) <= ngram:
        return frozenset([content])
    return frozenset(content[i : i + ngram] for i in range(len(content) - ngram + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _similar_pairs(
    shingles: Sequence[frozenset[str]], threshold: float, linked: Callable[[int, int], bool] = lambda i, j: False
) -> Iterator[tuple[int, int]]:
    """Pairs (i < j) with Jaccard ≥ threshold, by prefix filtering; pairs `linked` already joins are not verified.

    With shingles ordered rarest first, two sets with Jaccard ≥ t overlap in at least ⌈t·|x|⌉ shingles, so
    each must share a shingle within its first |x| − ⌈t·|x|⌉ + 1. Only sets sharing such a prefix shingle
    (and of compatible size) are compared, which keeps 10k questions far below O(n²) comparisons.
    """
    frequency = Counter(shingle for item in shingles for shingle in item)
    rank = {shingle: position for position, shingle in enumerate(sorted(frequency, key=lambda s: (frequency[s], s)))}
    ordered = [sorted(rank[shingle] for shingle in item) for item in shingles]
    index: dict[int, list[int]] = defaultdict(list)
    for current in sorted(range(len(shingles)), key=lambda i: (len(ordered[i]), i)):
        size = len(ordered[current])
        prefix = ordered[current][: size - math.ceil(threshold * size - _EPSILON) + 1]
        smallest = threshold * size - _EPSILON
        candidates = {other for token in prefix for other in index[token] if len(ordered[other]) >= smallest}
        for other in candidates:
            if not linked(current, other) and jaccard(shingles[current], shingles[other]) >= threshold - _EPSILON:
                yield min(current, other), max(current, other)
        for token in prefix:
            index[token].append(current)


def near_duplicate_pairs(questions: Sequence[str], ngram: int, threshold: float) -> list[tuple[int, int]]:
    """Index pairs (i < j), sorted, whose questions' shingle sets have Jaccard similarity ≥ threshold (exact)."""
    return sorted(_similar_pairs([question_shingles(question, ngram) for question in questions], threshold))


class _UnionFind:
    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def root(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def connected(self, a: int, b: int) -> bool:
        return self.root(a) == self.root(b)

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.root(a), self.root(b)
        self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def groups(self) -> list[list[int]]:
        """The connected components, each sorted, in order of their first member."""
        groups: dict[int, list[int]] = defaultdict(list)
        for item in range(len(self.parent)):
            groups[self.root(item)].append(item)
        return sorted(groups.values(), key=lambda members: members[0])


def near_duplicate_groups(examples: Sequence[ThinkingExample], config: SplitConfig) -> list[list[int]]:
    """Example indices grouped so that near-duplicate questions (transitively) share a group.

    Pairs inside an already joined group are not verified, so a large cluster costs little more than its size.
    """
    shingles = [question_shingles(example.question, config.ngram) for example in examples]
    components = _UnionFind(len(examples))
    for a, b in _similar_pairs(shingles, config.near_duplicate_threshold, components.connected):
        components.union(a, b)
    return components.groups()


# ---- iterative stratification over groups ---------------------------------------------------------------------


def _labels(example: ThinkingExample) -> list[str]:
    """Stratification labels: every term category plus the difficulty, so every example carries one."""
    difficulty = example.difficulty if example.difficulty is not None else "unknown"
    return [f"category:{category}" for category in example.term_categories] + [f"difficulty:{difficulty}"]


@dataclass
class _Unit:
    """A near-duplicate group: the atom that goes to one split as a whole."""

    members: list[int]
    labels: Counter


def _best_split(active: list[str], wanted_label: dict, wanted_size: dict, label: str, rng: random.Random) -> str:
    best = max((wanted_label[name][label], wanted_size[name]) for name in active)
    tied = [
        name for name in active
        if abs(wanted_label[name][label] - best[0]) < _EPSILON and abs(wanted_size[name] - best[1]) < _EPSILON
    ]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def _stratify(units: list[_Unit], ratios: dict[str, float], rng: random.Random) -> list[str]:
    """Iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011) with weighted units.

    Repeatedly take the label with the fewest unassigned examples and hand each unit carrying it (largest
    first) to the split that still wants most of that label, ties to the split that wants most examples.
    """
    active = [name for name in SPLIT_NAMES if ratios[name] > 0]
    total_examples = sum(len(unit.members) for unit in units)
    label_totals = sum((unit.labels for unit in units), Counter())
    wanted_size = {name: ratios[name] * total_examples for name in active}
    wanted_label = {name: {label: ratios[name] * count for label, count in label_totals.items()} for name in active}
    assignment: dict[int, str] = {}
    remaining = Counter(label_totals)
    order = list(range(len(units)))
    rng.shuffle(order)
    order.sort(key=lambda i: -len(units[i].members))
    while any(remaining.values()):
        rarest = min((count, label) for label, count in remaining.items() if count > 0)[1]
        for position in order:
            unit = units[position]
            if position in assignment or rarest not in unit.labels:
                continue
            name = _best_split(active, wanted_label, wanted_size, rarest, rng)
            assignment[position] = name
            wanted_size[name] -= len(unit.members)
            for label, count in unit.labels.items():
                wanted_label[name][label] -= count
                remaining[label] -= count
    return [assignment[position] for position in range(len(units))]


def _unit_categories(unit: _Unit) -> set[str]:
    return {label.removeprefix("category:") for label in unit.labels if label.startswith("category:")}


def _fill_missing_categories(units: list[_Unit], assignment: list[str], active: list[str]) -> None:
    """Move whole units so that each category reaches every active split, where that is possible.

    A unit moves only from a split that keeps every one of the unit's categories afterwards, so a move never
    opens a new gap; among candidates the smallest unit from the largest donor split goes first.
    """
    changed = True
    while changed:
        changed = False
        carriers: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in active}
        for position, unit in enumerate(units):
            for category in _unit_categories(unit):
                carriers[assignment[position]][category].append(position)
        categories = sorted({c for name in active for c in carriers[name]})
        split_sizes = Counter()
        for position, unit in enumerate(units):
            split_sizes[assignment[position]] += len(unit.members)
        for category in categories:
            for target in active:
                if carriers[target].get(category):
                    continue
                movable = [
                    (-split_sizes[donor], len(units[position].members), units[position].members[0], position, donor)
                    for donor in active
                    if donor != target
                    for position in carriers[donor].get(category, [])
                    if all(len(carriers[donor][c]) >= 2 for c in _unit_categories(units[position]))
                ]
                if movable:
                    *_, position, donor = min(movable)
                    assignment[position] = target
                    changed = True
                    break
            if changed:
                break


# ---- report ------------------------------------------------------------------------------------------------


def _distribution(counts: Mapping[str, int], categories: Sequence[str]) -> list[float] | None:
    total = sum(counts.get(category, 0) for category in categories)
    return [counts.get(category, 0) / total for category in categories] if total else None


def jensen_shannon(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence in bits (0 for equal distributions, at most 1)."""
    def kl(a: Sequence[float], m: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)

    middle = [(x + y) / 2 for x, y in zip(p, q)]
    return max(0.0, 0.5 * kl(p, middle) + 0.5 * kl(q, middle))


def _category_counts(examples: Sequence[ThinkingExample]) -> Counter:
    return Counter(category for example in examples for category in example.term_categories)


# What the leak and category checks accept: a result, splits by name, or lists (three are train, validation, test).
SplitsLike = SplitResult | Mapping[str, Sequence[ThinkingExample]] | Sequence[Sequence[ThinkingExample]]


def _as_named_splits(splits: SplitsLike) -> dict[str, Sequence[ThinkingExample]]:
    if isinstance(splits, SplitResult):
        return splits.splits()
    if isinstance(splits, Mapping):
        return dict(splits)
    if len(splits) == len(SPLIT_NAMES):
        return dict(zip(SPLIT_NAMES, splits))
    return {f"split_{index}": examples for index, examples in enumerate(splits)}


def missing_categories(splits: SplitsLike) -> dict[str, list[str]]:
    """For each split that lacks some category present elsewhere, those categories (sorted); {} when none lack any."""
    named = _as_named_splits(splits)
    present = {name: set(_category_counts(examples)) for name, examples in named.items()}
    everywhere = set().union(*present.values()) if present else set()
    return {name: sorted(everywhere - categories) for name, categories in present.items() if everywhere - categories}


def _warnings(named: dict[str, list[ThinkingExample]], config: SplitConfig, active: list[str]) -> list[str]:
    warnings = []
    for name in active:
        if len(named[name]) < config.min_split_size:
            warnings.append(
                f"{name} has {len(named[name])} examples, fewer than min_split_size {config.min_split_size}: "
                "its scores will be too noisy to catch overfitting"
            )
    for name, categories in missing_categories({name: named[name] for name in active}).items():
        for category in categories:
            effect = "learned" if name == "train" else "measured"
            warnings.append(f"category '{category}' is missing from {name}: it cannot be {effect} there")
    needed = math.ceil(1 / min(getattr(config, name) for name in active) - _EPSILON)
    totals = _category_counts([example for examples in named.values() for example in examples])
    for category, count in sorted(totals.items()):
        if count < needed:
            warnings.append(
                f"category '{category}' has only {count} examples: too few to expect one in every split "
                f"(needs at least {needed} at these ratios)"
            )
    return warnings


def _report(named: dict[str, list[ThinkingExample]], config: SplitConfig, groups: list[list[int]]) -> dict:
    """Sizes, category counts and shares per split, train-vs-other divergence, near-duplicate groups, warnings.

    Divergence is the Jensen–Shannon divergence (bits) between the splits' category distributions, where a
    split's distribution is its category label counts normalised to sum to one; None where a split has none.
    """
    active = [name for name in SPLIT_NAMES if getattr(config, name) > 0]
    total = sum(len(examples) for examples in named.values())
    counts = {name: _category_counts(examples) for name, examples in named.items()}
    categories = sorted(set().union(*counts.values()))
    distributions = {name: _distribution(counts[name], categories) for name in SPLIT_NAMES}
    divergence = {
        f"train_vs_{other}": (
            round(jensen_shannon(distributions["train"], distributions[other]), 6)
            if distributions["train"] and distributions[other] else None
        )
        for other in ("validation", "test")
    }
    duplicate_groups = [group for group in groups if len(group) > 1]
    return {
        "seed": config.seed,
        "ratios": {name: getattr(config, name) for name in SPLIT_NAMES},
        "sizes": {**{name: len(named[name]) for name in SPLIT_NAMES}, "total": total},
        "actual_ratios": {name: round(len(named[name]) / total, 6) if total else 0.0 for name in SPLIT_NAMES},
        "category_counts": {name: {c: counts[name].get(c, 0) for c in categories} for name in SPLIT_NAMES},
        "category_share": {
            name: {c: round(counts[name].get(c, 0) / len(named[name]), 6) if named[name] else 0.0 for c in categories}
            for name in SPLIT_NAMES
        },
        # Who wrote each split's reasoning: a model's (origin `model`) is marked as such wherever data is shown.
        "reasoning_origins": {name: reasoning_account(named[name]) for name in SPLIT_NAMES},
        "difficulty_counts": {
            name: dict(sorted(Counter(str(e.difficulty or "unknown") for e in named[name]).items()))
            for name in SPLIT_NAMES
        },
        "divergence": divergence,
        "near_duplicate_groups": len(duplicate_groups),
        "near_duplicate_examples": sum(len(group) for group in duplicate_groups),
        "largest_near_duplicate_group": max((len(group) for group in groups), default=0),
        "missing_categories": missing_categories({name: named[name] for name in active}),
        "warnings": _warnings(named, config, active),
    }


# ---- the split ---------------------------------------------------------------------------------------------


def term_balanced_split(examples: Sequence[ThinkingExample], config: SplitConfig) -> SplitResult:
    """Split examples into train/validation/test by config ratios, deterministically for config.seed.

    Near-duplicate questions (character n-gram Jaccard ≥ threshold, transitively) form groups that move as
    one unit, so no near-duplicate crosses splits; units are stratified over term categories and difficulty
    by iterative stratification, then units move where a category would otherwise miss a split. The result
    does not depend on input order: units are ordered by their examples' ids before the seeded shuffle.
    """
    ids = Counter(example.id for example in examples)
    duplicated = sorted(example_id for example_id, count in ids.items() if count > 1)
    if duplicated:
        raise SplitError(f"example ids must be unique, repeated: {', '.join(duplicated[:5])}")
    canonical = sorted(examples, key=lambda example: example.id)
    groups = near_duplicate_groups(canonical, config)
    units = [_Unit(group, Counter(label for i in group for label in _labels(canonical[i]))) for group in groups]
    ratios = {name: getattr(config, name) for name in SPLIT_NAMES}
    active = [name for name in SPLIT_NAMES if ratios[name] > 0]
    assignment = _stratify(units, ratios, random.Random(config.seed))
    _fill_missing_categories(units, assignment, active)
    split_of = {canonical[i].id: name for unit, name in zip(units, assignment) for i in unit.members}
    named: dict[str, list[ThinkingExample]] = {name: [] for name in SPLIT_NAMES}
    for example in examples:
        named[split_of[example.id]].append(example.model_copy(update={"split": split_of[example.id]}))
    report = _report(named, config, groups)
    return SplitResult(train=named["train"], validation=named["validation"], test=named["test"], report=report)


def find_leaks(splits: SplitsLike, config: SplitConfig) -> list[tuple[str, str]]:
    """Id pairs (sorted) that sit in different splits yet are the same example or near-duplicate questions."""
    named = _as_named_splits(splits)
    pooled = [(name, example) for name, examples in named.items() for example in examples]
    leaks = set()
    questions = [example.question for _, example in pooled]
    for i, j in near_duplicate_pairs(questions, config.ngram, config.near_duplicate_threshold):
        (split_a, a), (split_b, b) = pooled[i], pooled[j]
        if split_a != split_b:
            leaks.add((min(a.id, b.id), max(a.id, b.id)))
    seen: dict[str, str] = {}
    for name, example in pooled:
        if seen.setdefault(example.id, name) != name:
            leaks.add((example.id, example.id))
    return sorted(leaks)
