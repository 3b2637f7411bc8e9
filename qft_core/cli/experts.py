"""The `qft experts …` commands: expert review from the shell. Argument parsing only; the work is in
qft_core.evaluate. `add_expert_commands` hangs them under the main `qft` parser."""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from qft_core.cli.errors import Handler, reported
from qft_core.config import load_config
from qft_core.evaluate.agreement import rubric_agreement
from qft_core.evaluate.expert_performance import performance_tables
from qft_core.evaluate.expert_store import ExpertStore, default_db_path, write_gold_set
from qft_core.evaluate.experts import (
    ASSIGNMENT_STRATEGIES,
    RUBRIC,
    ROLES,
    ExpertError,
    RubricScore,
    consensus,
    read_eval_outputs,
)


def _open_store(args: argparse.Namespace) -> ExpertStore:
    if args.db:
        return ExpertStore(args.db)
    # `--config` belongs to the main `qft` parser; a parser built without it means the embedded defaults.
    config = load_config(getattr(args, "config", None), device=getattr(args, "device", None))
    return ExpertStore(default_db_path(config.paths))


def _width(text: str) -> int:
    """Columns a text takes in a terminal, where a CJK character takes two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _column(text: str, width: int) -> str:
    """Left-align for a terminal."""
    return text + " " * max(width - _width(text), 1)


def _statistic(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def cmd_add(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        expert = store.add_expert(args.name, args.email, args.role, args.speciality.split(","))
    print(f"expert {expert.id}: {expert.name} <{expert.email}>, {expert.role}, {', '.join(expert.specialities) or '—'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        experts = store.experts()
        assigned = Counter(expert_id for _task, expert_id in store.assignments())
        scored = Counter(rating.expert_id for rating in store.ratings())
    if not experts:
        print("no experts yet; add one with `qft experts add`")
        return 0
    print(f"{'id':>4}  {_column('name', 20)}{_column('email', 28)}{'role':<10} {'assigned':>8} {'scored':>6}  specialities")
    for expert in experts:
        print(
            f"{expert.id:>4}  {_column(expert.name, 20)}{_column(expert.email, 28)}{expert.role:<10} "
            f"{assigned[expert.id]:>8} {scored[expert.id]:>6}  {', '.join(expert.specialities) or '—'}"
        )
    return 0


def cmd_tasks_create(args: argparse.Namespace) -> int:
    outputs = read_eval_outputs(args.source)
    with _open_store(args) as store:
        created, present = store.create_tasks(outputs)
    print(f"created {created} task(s) from {args.source}; {present} already present")
    return 0


def cmd_tasks_assign(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        planned = store.assign(args.per_item, args.strategy.replace("-", "_"))
        tasks = len(store.tasks())
    print(f"made {len(planned)} new assignment(s); each of the {tasks} task(s) has {args.per_item} or more experts")
    return 0


def cmd_tasks_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        tasks = store.tasks()
        experts_of: dict[int, list[int]] = {}
        for task_id, expert_id in store.assignments():
            experts_of.setdefault(task_id, []).append(expert_id)
        scored = {(rating.task_id, rating.expert_id) for rating in store.ratings()}
    if args.expert is not None:
        tasks = [task for task in tasks if args.expert in experts_of.get(task.id, [])]
    print(f"{'id':>4}  {'example':<16} {'model':<20} {'category':<16} experts (* scored)")
    for task in tasks:
        experts = " ".join(
            f"{expert_id}{'*' if (task.id, expert_id) in scored else ''}" for expert_id in experts_of.get(task.id, [])
        )
        print(f"{task.id:>4}  {task.example_id:<16} {task.model_id:<20} {task.category or '—':<16} {experts or '—'}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    score = RubricScore(**{dimension: getattr(args, dimension) for dimension in RUBRIC}, comment=args.comment)
    with _open_store(args) as store:
        store.record_score(args.task_id, args.expert, score, replace=args.replace)
    print(f"task {args.task_id}, expert {args.expert}: " + ", ".join(f"{d} {v}" for d, v in score.values().items()))
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        ratings = store.ratings()
    report = rubric_agreement(ratings)
    print(f"{'dimension':<13} {'items':>5} {'Cohen κ':>8} {'weighted κ':>10} {'Fleiss κ':>9} {'Krippendorff α':>15}")
    for row in report.values():
        print(
            f"{row.dimension:<13} {row.items:>5} {_statistic(row.cohen_kappa):>8} {_statistic(row.weighted_kappa):>10} "
            f"{_statistic(row.fleiss_kappa):>9} {_statistic(row.krippendorff_alpha):>15}"
        )
    first = next(iter(report.values()))
    print(
        f"Cohen κ: mean over {first.rater_pairs} expert pair(s); weighted: quadratic; "
        f"Fleiss κ: {first.fleiss_items} item(s) with equal rater counts; α: ordinal"
    )
    verdicts = consensus(ratings)
    flagged = [verdict for verdict in verdicts if verdict.flagged]
    print(f"flagged for adjudication: {len(flagged)} of {len(verdicts)} scored task(s)")
    for verdict in flagged:
        print(f"  task {verdict.task_id}: " + ", ".join(f"{d} ±{verdict.spreads[d]}" for d in verdict.disputed))
    return 0


def cmd_performance(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        data = asdict(store.performance())
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for title, header, rows in performance_tables(data):
        widths = [max(_width(cell) for cell in column) + 2 for column in zip(header, *rows, strict=True)]
        print(f"\n{title}" if rows else f"\n{title}: none")
        for cells in (header, *rows) if rows else ():
            print("".join(_column(cell, width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    for note in data["notes"]:
        print(f"note: {note}")
    return 0


def cmd_gold(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        gold = store.create_gold_set(args.min_raters, args.min_score)
    print(
        f"gold set version {gold.version}: {gold.item_count} item(s) (at least {gold.min_raters} raters, "
        f"every median ≥ {gold.min_score:g}), sha256 {gold.content_hash}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        gold = store.gold_set(args.version)
        items = store.gold_items(gold.version)
    path = write_gold_set(items, Path(args.out))
    print(f"wrote {len(items)} item(s) of gold set version {gold.version} → {path}")
    return 0


def add_expert_commands(commands: argparse._SubParsersAction) -> None:
    """Add `experts` and its actions to the subparsers of the main `qft` parser."""
    db_option = argparse.ArgumentParser(add_help=False)
    db_option.add_argument("--db", help="expert database (default: experts.sqlite in the config's artifacts_dir)")

    experts = commands.add_parser("experts", help="expert review of model outputs: experts, tasks, scores, gold set")
    actions = experts.add_subparsers(dest="experts_command", required=True, metavar="ACTION")

    def action(
        name: str, handler: Handler, summary: str, parent: argparse._SubParsersAction = actions, group: str = ""
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[db_option], help=summary, description=summary)
        parser.set_defaults(handler=reported(ExpertError, command=f"experts {group}{name}")(handler))
        return parser

    add = action("add", cmd_add, "add an expert")
    add.add_argument("name")
    add.add_argument("--email", required=True)
    add.add_argument("--role", choices=ROLES, default="annotator")
    add.add_argument("--speciality", default="", help="comma-separated term categories, e.g. symmetric,hash_mac")

    action("list", cmd_list, "list the experts with their assigned and scored counts")

    tasks = actions.add_parser("tasks", help="create, assign and list annotation tasks")
    task_actions = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    create = action("create", cmd_tasks_create, "one task per evaluation output", task_actions, "tasks ")
    create.add_argument("--from", dest="source", required=True, metavar="EVAL_OUTPUTS.jsonl")
    assign = action("assign", cmd_tasks_assign, "give every task its experts, never one twice", task_actions, "tasks ")
    assign.add_argument("--per-item", type=int, default=2, help="experts per task (default 2)")
    assign.add_argument(
        "--strategy",
        choices=[strategy.replace("_", "-") for strategy in ASSIGNMENT_STRATEGIES],
        default="round-robin",
        help="round-robin: least-loaded first; speciality: experts of the task's categories first",
    )
    listing = action("list", cmd_tasks_list, "list the tasks with their experts", task_actions, "tasks ")
    listing.add_argument("--expert", type=int, help="only the tasks assigned to this expert id")

    score = action("score", cmd_score, "score an assigned task on the 1–5 rubric")
    score.add_argument("task_id", type=int, metavar="TASK_ID")
    score.add_argument("--expert", type=int, required=True, help="the scoring expert's id")
    for dimension in RUBRIC:
        score.add_argument(f"--{dimension}", type=int, required=True, metavar="1-5")
    score.add_argument("--comment")
    score.add_argument("--replace", action="store_true", help="replace this expert's earlier score of the task")

    action("agreement", cmd_agreement, "inter-annotator agreement per rubric dimension, and the flagged tasks")

    performance = action(
        "performance", cmd_performance,
        "each expert against the others' consensus: agreement, bias per dimension, drift across gold-set versions",
    )
    performance.add_argument("--json", action="store_true", help="print every number as JSON")

    gold = action("gold", cmd_gold, "snapshot the items the experts agree are good as a new gold-set version")
    gold.add_argument("--min-raters", type=int, default=2, help="experts who scored the item (default 2)")
    gold.add_argument("--min-score", type=float, default=4.0, help="lowest median on every dimension (default 4)")

    export = action("export", cmd_export, "write a gold-set version as JSONL or parquet")
    export.add_argument("--version", type=int, help="gold-set version (default: the latest)")
    export.add_argument("--out", required=True, metavar="FILE.jsonl|FILE.parquet")
