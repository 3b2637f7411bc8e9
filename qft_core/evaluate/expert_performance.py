"""How each expert scores against the others: agreement with the consensus of the other experts, systematic bias
per rubric dimension, and how scores moved between gold-set versions. Leave-one-out throughout, so that no expert
is compared with a consensus they helped make."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from qft_core.evaluate.agreement import cohen_kappa
from qft_core.evaluate.bootstrap import bootstrap_interval, format_estimate
from qft_core.evaluate.experts import MAX_SCORE, MIN_SCORE, RUBRIC, ExpertError, GoldSnapshot, Rating

# Below this many items a resample repeats the same few values: the interval is left out, the mean and n stay.
MIN_INTERVAL_ITEMS = 5
# The median of two integer scores can be a half point; kappa is taken on the doubled scale 2–10, which weighs
# every distance exactly as the 1–5 scale does.
DOUBLED_SCALE = tuple(range(2 * MIN_SCORE, 2 * MAX_SCORE + 1))

Scores = dict[str, int]


class ExpertPerformanceError(ExpertError):
    """Nothing to measure: the store holds no ratings."""


@dataclass(frozen=True)
class Estimate:
    """A mean over items with its bootstrap interval (None below MIN_INTERVAL_ITEMS items) and its n."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class Resampling:
    """How the intervals are drawn: the evaluation's bootstrap settings."""

    samples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def estimate(self, values: Sequence[float]) -> Estimate | None:
        if not values:
            return None
        mean = statistics.fmean(values)
        if len(values) < MIN_INTERVAL_ITEMS:
            return Estimate(mean, None, None, len(values))
        low, high = bootstrap_interval(values, samples=self.samples, seed=self.seed, confidence=self.confidence)
        return Estimate(mean, low, high, len(values))


@dataclass(frozen=True)
class DimensionPerformance:
    """One expert on one rubric dimension, against the median of the other experts on the same items."""

    dimension: str
    weighted_kappa: float | None
    absolute_deviation: Estimate | None
    # Mean of (expert − others' median): above 0 the expert scores more generously than the others.
    bias: Estimate | None
    biased: bool


@dataclass(frozen=True)
class ExpertPerformance:
    """One expert against the others, over the items they share with at least one other expert."""

    expert_id: int
    name: str
    rated: int
    shared: int
    # The mean of the dimensions' quadratic-weighted kappas that are defined.
    weighted_kappa: float | None
    # Per item, the mean over the dimensions of |expert − others' median|.
    absolute_deviation: Estimate | None
    dimensions: tuple[DimensionPerformance, ...]

    @property
    def biased_dimensions(self) -> tuple[str, ...]:
        return tuple(row.dimension for row in self.dimensions if row.biased)


@dataclass(frozen=True)
class ConsensusChange:
    """A gold item whose consensus (median per dimension) differs between two versions."""

    task_id: int
    example_id: str
    before: dict[str, float]
    after: dict[str, float]


@dataclass(frozen=True)
class ExpertDrift:
    """How one expert's scores of the items in both versions moved (after − before, mean per dimension)."""

    expert_id: int
    items: int
    rescored: int
    shift: dict[str, float]


@dataclass(frozen=True)
class VersionDrift:
    """What changed from one gold-set version to the next, on the items present in both."""

    before: int
    after: int
    shared: int
    added: int
    removed: int
    consensus_shift: dict[str, float]
    changed: tuple[ConsensusChange, ...]
    # False where either version was made before the store kept the experts' scores with it.
    expert_scores_kept: bool
    experts: tuple[ExpertDrift, ...]


@dataclass(frozen=True)
class PerformanceReport:
    experts: tuple[ExpertPerformance, ...]
    drift: tuple[VersionDrift, ...]
    notes: tuple[str, ...]


def _grid(ratings: Iterable[Rating]) -> dict[int, dict[int, Scores]]:
    """task id → expert id → that expert's scores."""
    grid: dict[int, dict[int, Scores]] = {}
    for rating in ratings:
        grid.setdefault(rating.task_id, {})[rating.expert_id] = rating.score.values()
    return grid


def _others_median(by_expert: Mapping[int, Scores], left_out: int) -> dict[str, float]:
    others = [scores for expert, scores in by_expert.items() if expert != left_out]
    return {dimension: float(statistics.median(scores[dimension] for scores in others)) for dimension in RUBRIC}


def _against_others(grid: Mapping[int, Mapping[int, Scores]], expert: int) -> list[tuple[Scores, dict[str, float]]]:
    """(the expert's scores, the other experts' median) on every item the expert shares with another."""
    return [
        (by_expert[expert], _others_median(by_expert, expert))
        for _task, by_expert in sorted(grid.items())
        if expert in by_expert and len(by_expert) >= 2
    ]


def expert_agreement(
    ratings: Iterable[Rating], names: Mapping[int, str] | None = None, resampling: Resampling = Resampling()
) -> tuple[ExpertPerformance, ...]:
    """Every expert who rated, by id, against the leave-one-out consensus: weighted kappa, mean absolute
    deviation and mean signed difference per dimension; a dimension is biased when the interval of its signed
    difference excludes 0."""
    grid = _grid(ratings)
    if not grid:
        raise ExpertPerformanceError("no ratings yet: score tasks with `qft experts score`")
    names = names or {}
    experts = sorted({expert for by_expert in grid.values() for expert in by_expert})
    report = []
    for expert in experts:
        pairs = _against_others(grid, expert)
        dimensions = []
        for dimension in RUBRIC:
            own = [scores[dimension] for scores, _ in pairs]
            others = [median[dimension] for _, median in pairs]
            differences = [mine - theirs for mine, theirs in zip(own, others, strict=True)]
            bias = resampling.estimate(differences)
            dimensions.append(
                DimensionPerformance(
                    dimension=dimension,
                    weighted_kappa=cohen_kappa(
                        [2 * value for value in own], [round(2 * value) for value in others], weighted=True,
                        scale=DOUBLED_SCALE,
                    ) if pairs else None,
                    absolute_deviation=resampling.estimate([abs(value) for value in differences]),
                    bias=bias,
                    biased=bias is not None and bias.excludes_zero,
                )
            )
        kappas = [row.weighted_kappa for row in dimensions if row.weighted_kappa is not None]
        report.append(
            ExpertPerformance(
                expert_id=expert,
                name=names.get(expert, f"expert {expert}"),
                rated=sum(expert in by_expert for by_expert in grid.values()),
                shared=len(pairs),
                weighted_kappa=statistics.fmean(kappas) if kappas else None,
                absolute_deviation=resampling.estimate(
                    [statistics.fmean(abs(scores[d] - median[d]) for d in RUBRIC) for scores, median in pairs]
                ),
                dimensions=tuple(dimensions),
            )
        )
    return tuple(report)


def _shift(pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]]) -> dict[str, float]:
    """Mean after − before per dimension over (before, after) pairs; empty when there are none."""
    if not pairs:
        return {}
    return {dimension: statistics.fmean(after[dimension] - before[dimension] for before, after in pairs)
            for dimension in RUBRIC}


def version_drift(before: GoldSnapshot, after: GoldSnapshot) -> VersionDrift:
    """How the consensus, and each expert's scores, moved on the items present in both versions."""
    old = {item.task_id: item for item in before.items}
    new = {item.task_id: item for item in after.items}
    shared = sorted(old.keys() & new.keys())
    changed = tuple(
        ConsensusChange(task, new[task].example_id, old[task].scores, new[task].scores)
        for task in shared
        if old[task].scores != new[task].scores
    )
    kept = bool(before.ratings) and bool(after.ratings)
    experts = []
    if kept:
        old_grid, new_grid = _grid(before.ratings), _grid(after.ratings)
        ids = sorted({expert for task in shared for expert in old_grid.get(task, {})})
        for expert in ids:
            pairs = [
                (old_grid[task][expert], new_grid[task][expert])
                for task in shared
                if expert in old_grid.get(task, {}) and expert in new_grid.get(task, {})
            ]
            if pairs:
                experts.append(ExpertDrift(
                    expert_id=expert,
                    items=len(pairs),
                    rescored=sum(first != second for first, second in pairs),
                    shift=_shift(pairs),
                ))
    return VersionDrift(
        before=before.version,
        after=after.version,
        shared=len(shared),
        added=len(new.keys() - old.keys()),
        removed=len(old.keys() - new.keys()),
        consensus_shift=_shift([(old[task].scores, new[task].scores) for task in shared]),
        changed=changed,
        expert_scores_kept=kept,
        experts=tuple(experts),
    )


def gold_set_drift(snapshots: Sequence[GoldSnapshot]) -> tuple[VersionDrift, ...]:
    """The drift between each gold-set version and the next, in version order."""
    ordered = sorted(snapshots, key=lambda snapshot: snapshot.version)
    return tuple(version_drift(first, second) for first, second in zip(ordered, ordered[1:]))


def performance_report(
    ratings: Sequence[Rating],
    snapshots: Sequence[GoldSnapshot] = (),
    names: Mapping[int, str] | None = None,
    resampling: Resampling = Resampling(),
) -> PerformanceReport:
    """Agreement and bias per expert, drift across the gold-set versions, and notes on what could not be measured
    (one expert only, an expert who shares no item, fewer than two gold-set versions)."""
    experts = expert_agreement(ratings, names, resampling)
    notes = []
    if len(experts) == 1:
        notes.append(
            f"only {experts[0].name} (id {experts[0].expert_id}) has scored: agreement needs a second expert "
            "scoring the same items"
        )
    else:
        notes += [
            f"{row.name} (id {row.expert_id}) shares no item with another expert: nothing to compare"
            for row in experts if not row.shared
        ]
    drift = gold_set_drift(snapshots)
    if len(snapshots) < 2:
        notes.append(f"{len(snapshots)} gold-set version(s): drift needs two")
    notes += [
        f"gold-set versions {row.before} → {row.after}: one was made before the store kept the experts' scores "
        "with each version, so only the consensus drift is shown"
        for row in drift if not row.expert_scores_kept
    ]
    return PerformanceReport(experts=experts, drift=drift, notes=tuple(notes))


Table = tuple[str, list[str], list[list[str]]]


def _statistic(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _shifts(shift: Mapping[str, float]) -> list[str]:
    return [f"{shift[dimension]:+.2f}" if shift else "–" for dimension in RUBRIC]


def performance_tables(data: Mapping) -> list[Table]:
    """(title, header, rows) of the agreement, bias and drift tables, from a PerformanceReport as JSON
    (`dataclasses.asdict`, as report.json holds it): `qft experts performance` and report.md show the same tables."""
    experts = data["experts"]
    names = {row["expert_id"]: f"{row['name']} ({row['expert_id']})" for row in experts}
    tables: list[Table] = [
        (
            "Agreement with the other experts' median (leave-one-out)",
            ["expert", "rated", "shared", "weighted κ", "mean |deviation|", "biased on"],
            [
                [
                    names[row["expert_id"]], str(row["rated"]), str(row["shared"]),
                    _statistic(row["weighted_kappa"]), format_estimate(row["absolute_deviation"]),
                    ", ".join(d["dimension"] for d in row["dimensions"] if d["biased"]) or "–",
                ]
                for row in experts
            ],
        ),
        (
            "Bias per dimension: mean of (expert − others' median); * where the interval excludes 0",
            ["expert", *RUBRIC],
            [
                [names[row["expert_id"]]]
                + [f"{format_estimate(d['bias'], signed=True)}{' *' if d['biased'] else ''}" for d in row["dimensions"]]
                for row in experts
            ],
        ),
        (
            "Weighted κ per dimension",
            ["expert", *RUBRIC],
            [
                [names[row["expert_id"]]] + [_statistic(d["weighted_kappa"]) for d in row["dimensions"]]
                for row in experts
            ],
        ),
    ]
    if data["drift"]:
        tables.append((
            "Consensus drift between gold-set versions (mean after − before on the items in both)",
            ["versions", "shared", "added", "removed", *RUBRIC, "consensus changed"],
            [
                [f"{row['before']} → {row['after']}", str(row["shared"]), str(row["added"]), str(row["removed"]),
                 *_shifts(row["consensus_shift"]),
                 ", ".join(f"task {change['task_id']} ({change['example_id']})" for change in row["changed"]) or "–"]
                for row in data["drift"]
            ],
        ))
        tables.append((
            "Expert drift between gold-set versions (their own scores, after − before)",
            ["versions", "expert", "items", "rescored", *RUBRIC],
            [
                [f"{row['before']} → {row['after']}", names[expert["expert_id"]], str(expert["items"]),
                 str(expert["rescored"]), *_shifts(expert["shift"])]
                for row in data["drift"] if row["expert_scores_kept"]
                for expert in row["experts"]
            ],
        ))
    return tables
