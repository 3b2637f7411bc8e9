import json
import multiprocessing
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from qft_core.evaluate.expert_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ExpertStore,
    ExpertStoreError,
    GoldSetError,
    load_gold_set,
    write_gold_set,
)
from qft_core.evaluate.experts import EvalOutput, ExpertError, GoldItem, RubricScore, gold_set_hash
from qft_core.records import read_jsonl, read_parquet

WORKERS = 4
SCORES_PER_WORKER = 25


def eval_output(index: int, category: str = "symmetric") -> EvalOutput:
    return EvalOutput(
        example_id=f"ex{index:03d}",
        model_id="qwen3-tiny",
        question=f"SM4 的分组长度是多少？（{index}）",
        reference_answer="128 位。",
        predicted_reasoning="SM4 是分组密码。",
        predicted_answer="128 位",
        category=category,
    )


def uniform(value: int) -> RubricScore:
    return RubricScore(value, value, value, value)


@pytest.fixture
def store(tmp_path: Path):
    with ExpertStore(tmp_path / "experts.sqlite") as opened:
        yield opened


def populate(store: ExpertStore, tasks: int, experts: int, per_item: int) -> None:
    for index in range(experts):
        store.add_expert(f"专家{index}", f"e{index}@example.org", "annotator", ["symmetric"])
    store.create_tasks(eval_output(index) for index in range(tasks))
    store.assign(per_item)


def test_fresh_database_is_wal_at_the_latest_schema_and_reopening_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "experts.sqlite"
    with ExpertStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        store.add_expert("李雷", "LiLei@Example.org", "admin")
    with ExpertStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert [expert.email for expert in store.experts()] == ["lilei@example.org"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "experts.sqlite"
    ExpertStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ExpertStoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        ExpertStore(path)


def test_a_file_that_is_not_a_database_is_one_readable_error(tmp_path: Path) -> None:
    path = tmp_path / "experts.sqlite"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(ExpertStoreError, match="experts.sqlite: cannot open the expert database"):
        ExpertStore(path)


def test_experts_round_trip_and_a_taken_email_is_refused(store: ExpertStore) -> None:
    added = store.add_expert("王芳", "wf@example.org", "reviewer", ["hash_mac", "symmetric"])
    assert store.expert(added.id) == added
    assert store.experts() == [added]
    with pytest.raises(ExpertError, match=f"email wf@example.org already exists \\(id {added.id}\\)"):
        store.add_expert("王芳二", "WF@example.org")
    with pytest.raises(ExpertError, match="no expert with id 99"):
        store.expert(99)


def test_creating_tasks_twice_from_the_same_outputs_adds_nothing(store: ExpertStore) -> None:
    assert store.create_tasks([eval_output(1), eval_output(2)]) == (2, 0)
    assert store.create_tasks([eval_output(2), eval_output(3)]) == (1, 1)
    tasks = store.tasks()
    assert [task.example_id for task in tasks] == ["ex001", "ex002", "ex003"]
    assert tasks[0].model_dump(exclude={"id"}) == eval_output(1).model_dump()


def test_assigning_respects_the_per_item_count_and_never_repeats_an_expert(store: ExpertStore) -> None:
    populate(store, tasks=5, experts=3, per_item=2)
    first = store.assignments()
    assert Counter(task for task, _ in first) == {task.id: 2 for task in store.tasks()}
    assert store.assign(2) == []
    added = store.assign(3)
    assert len(added) == 5
    everything = store.assignments()
    assert len(everything) == len(set(everything)) == 15
    assert set(first) <= set(everything)


def test_scores_need_an_assignment_and_replacing_one_is_explicit(store: ExpertStore) -> None:
    populate(store, tasks=2, experts=2, per_item=1)
    (task_id, expert_id), (other_task, _) = store.assignments()
    with pytest.raises(ExpertError, match=f"task {other_task} is not assigned to expert {expert_id}"):
        store.record_score(other_task, expert_id, uniform(4))
    with pytest.raises(ExpertError, match="no task with id 99"):
        store.record_score(99, expert_id, uniform(4))
    with pytest.raises(ExpertError, match="no expert with id 99"):
        store.record_score(task_id, 99, uniform(4))
    store.record_score(task_id, expert_id, RubricScore(4, 3, 4, 5, comment="推理略简"))
    with pytest.raises(ExpertError, match="already scored"):
        store.record_score(task_id, expert_id, uniform(2))
    store.record_score(task_id, expert_id, uniform(2), replace=True)
    assert [(rating.task_id, rating.expert_id, rating.score) for rating in store.ratings()] == [
        (task_id, expert_id, uniform(2))
    ]


def test_the_database_refuses_out_of_range_scores_even_behind_the_rubric(store: ExpertStore) -> None:
    populate(store, tasks=1, experts=1, per_item=1)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
        store._db.execute(
            "INSERT INTO scores (task_id, expert_id, accuracy, completeness, reasoning, language, scored_at) "
            "VALUES (1, 1, 6, 3, 3, 3, 'now')"
        )


def test_gold_set_versions_are_immutable_snapshots_with_stable_hashes(store: ExpertStore, tmp_path: Path) -> None:
    populate(store, tasks=3, experts=2, per_item=2)
    for task in (1, 2, 3):
        store.record_score(task, 1, uniform(5))
    store.record_score(1, 2, uniform(4))
    store.record_score(2, 2, uniform(3))
    first = store.create_gold_set(min_raters=2, min_score=4)
    assert (first.version, first.item_count) == (1, 1)
    version_one = store.export_gold_set(1)
    assert [item["task_id"] for item in version_one] == [1]
    assert version_one[0]["scores"] == {"accuracy": 4.5, "completeness": 4.5, "reasoning": 4.5, "language": 4.5}

    # Same scores, same content, same hash: the hash is of the items, not of when or which version.
    again = store.create_gold_set(min_raters=2, min_score=4)
    assert again.version == 2 and again.content_hash == first.content_hash

    store.record_score(3, 2, uniform(4))
    store.record_score(2, 2, uniform(5), replace=True)
    third = store.create_gold_set(min_raters=2, min_score=4)
    assert third.version == 3 and third.item_count == 3 and third.content_hash != first.content_hash
    assert store.export_gold_set(1) == version_one
    assert store.gold_set(1) == first
    assert gold_set_hash(store.gold_items(1)) == first.content_hash
    assert [item.task_id for item in store.gold_items()] == [1, 2, 3]
    assert [gold.version for gold in store.gold_sets()] == [1, 2, 3]


def test_gold_set_rows_cannot_be_changed_or_deleted(store: ExpertStore) -> None:
    populate(store, tasks=1, experts=1, per_item=1)
    store.record_score(1, 1, uniform(5))
    store.create_gold_set(min_raters=1, min_score=4)
    statements = ["UPDATE gold_items SET item = '{}'", "DELETE FROM gold_items", "UPDATE gold_sets SET min_score = 1"]
    for statement in statements:
        with pytest.raises(sqlite3.IntegrityError, match="gold set versions are immutable"):
            store._db.execute(statement)


def test_a_bar_no_item_meets_creates_no_version(store: ExpertStore) -> None:
    populate(store, tasks=1, experts=2, per_item=2)
    store.record_score(1, 1, uniform(5))
    store.record_score(1, 2, uniform(3))
    with pytest.raises(GoldSetError, match="no task meets the bar"):
        store.create_gold_set(min_raters=2, min_score=4)
    assert store.gold_sets() == []


def test_load_gold_set_reads_the_latest_version_by_default(tmp_path: Path) -> None:
    path = tmp_path / "experts.sqlite"
    with pytest.raises(GoldSetError, match="no expert database"):
        load_gold_set(path)
    with ExpertStore(path) as store:
        populate(store, tasks=2, experts=1, per_item=1)
        with pytest.raises(GoldSetError, match="no gold set yet"):
            store.gold_items()
        store.record_score(1, 1, uniform(5))
        store.create_gold_set(min_raters=1, min_score=4)
        store.record_score(2, 1, uniform(4))
        store.create_gold_set(min_raters=1, min_score=4)
    assert [item.task_id for item in load_gold_set(path)] == [1, 2]
    assert [item.task_id for item in load_gold_set(path, version=1)] == [1]
    with pytest.raises(GoldSetError, match="no gold set version 7"):
        load_gold_set(path, version=7)


def test_gold_set_exports_reload_identically_as_jsonl_and_parquet(store: ExpertStore, tmp_path: Path) -> None:
    populate(store, tasks=2, experts=2, per_item=2)
    for task in (1, 2):
        for expert in (1, 2):
            store.record_score(task, expert, uniform(4 + (task + expert) % 2))
    store.create_gold_set(min_raters=2, min_score=4)
    items = store.gold_items()
    assert read_jsonl(write_gold_set(items, tmp_path / "gold.jsonl"), GoldItem) == items
    assert read_parquet(write_gold_set(items, tmp_path / "gold.parquet"), GoldItem) == items
    first_line = (tmp_path / "gold.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first_line) == store.export_gold_set()[0]
    with pytest.raises(ExpertError, match="gold.csv: the gold set is written as .jsonl or .parquet"):
        write_gold_set(items, tmp_path / "gold.csv")


def score_everything_assigned(path: str, expert_id: int, start, errors) -> None:
    """Worker: open its own store, wait for the others, then write one score per assigned task."""
    try:
        with ExpertStore(path) as store:
            tasks = [task for task, expert in store.assignments() if expert == expert_id]
            start.wait(timeout=60)
            for task in tasks:
                store.record_score(task, expert_id, RubricScore(4, 4, 5, 5, comment=f"worker {expert_id}"))
            store.create_gold_set(min_raters=1, min_score=4)
    except Exception as error:
        errors.put(f"expert {expert_id}: {type(error).__name__}: {error}")
        raise


def add_one_expert(path: str, index: int, start, errors) -> None:
    """Worker: open a database that may not exist yet, together with the others, and add one expert."""
    try:
        start.wait(timeout=60)
        with ExpertStore(path) as store:
            store.add_expert(f"并发{index}", f"c{index}@example.org")
    except Exception as error:
        errors.put(f"worker {index}: {type(error).__name__}: {error}")
        raise


def run_workers(target, args_of) -> list[str]:
    # A fresh interpreter per worker (no inherited connection or thread state); the server imports the store once.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qft_core.evaluate.expert_store"])
    start, errors = context.Barrier(WORKERS), context.Queue()
    processes = [context.Process(target=target, args=(*args_of(index), start, errors)) for index in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert [process.exitcode for process in processes] == [0] * WORKERS, reported
    return reported


def test_concurrent_writers_lose_no_score_and_never_see_a_locked_database(tmp_path: Path) -> None:
    path = tmp_path / "experts.sqlite"
    with ExpertStore(path) as store:
        populate(store, tasks=SCORES_PER_WORKER, experts=WORKERS, per_item=WORKERS)
    assert run_workers(score_everything_assigned, lambda index: (str(path), index + 1)) == []
    with ExpertStore(path) as store:
        ratings = store.ratings()
        assert len(ratings) == WORKERS * SCORES_PER_WORKER
        assert Counter(rating.expert_id for rating in ratings) == {e: SCORES_PER_WORKER for e in range(1, WORKERS + 1)}
        assert len({(rating.task_id, rating.expert_id) for rating in ratings}) == WORKERS * SCORES_PER_WORKER
        assert [gold.version for gold in store.gold_sets()] == list(range(1, WORKERS + 1))


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "experts.sqlite"
    assert run_workers(add_one_expert, lambda index: (str(path), index)) == []
    with ExpertStore(path) as store:
        assert sorted(expert.email for expert in store.experts()) == [f"c{i}@example.org" for i in range(WORKERS)]
        assert store.schema_version() == SCHEMA_VERSION


def test_each_gold_set_version_keeps_its_experts_scores_so_drift_sees_a_rescore(store: ExpertStore) -> None:
    populate(store, tasks=2, experts=2, per_item=2)
    for task in (1, 2):
        store.record_score(task, 1, uniform(5))
        store.record_score(task, 2, uniform(4))
    store.create_gold_set(min_raters=2, min_score=4)
    store.record_score(1, 2, uniform(5), replace=True)
    store.create_gold_set(min_raters=2, min_score=4)

    first, second = store.gold_snapshots()
    assert [(r.task_id, r.expert_id, r.score.accuracy) for r in first.ratings] == [
        (1, 1, 5), (1, 2, 4), (2, 1, 5), (2, 2, 4)
    ]
    assert [r.score.accuracy for r in second.ratings] == [5, 5, 5, 4]
    (drift,) = store.performance().drift
    assert [(change.task_id, change.before["accuracy"], change.after["accuracy"]) for change in drift.changed] == [
        (1, 4.5, 5.0)
    ]
    assert [(e.expert_id, e.items, e.rescored, e.shift["accuracy"]) for e in drift.experts] == [
        (1, 2, 0, 0.0), (2, 2, 1, 0.5)
    ]
    with pytest.raises(sqlite3.IntegrityError, match="gold set versions are immutable"):
        store._db.execute("UPDATE gold_ratings SET accuracy = 1")


def test_a_first_schema_database_migrates_and_its_old_versions_have_no_kept_scores(tmp_path: Path) -> None:
    path = tmp_path / "experts.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
    with ExpertStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        populate(store, tasks=1, experts=1, per_item=1)
        store.record_score(1, 1, uniform(5))
        store._db.execute("INSERT INTO gold_sets VALUES (1, 'then', 1, 4, 0, ?)", (gold_set_hash([]),))
        store.create_gold_set(min_raters=1, min_score=4)
        old, new = store.gold_snapshots()
        assert (old.ratings, len(new.ratings)) == ((), 1)
        assert store.performance().drift[0].expert_scores_kept is False
