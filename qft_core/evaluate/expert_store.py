"""The expert review kept in SQLite: experts, tasks, assignments, scores and immutable gold-set versions.

Safe for several processes writing at once: WAL journal, a busy timeout, and every write one IMMEDIATE
transaction, so a writer waits for the lock up front instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from qft_core.config import PathsConfig
from qft_core.evaluate.expert_performance import PerformanceReport, Resampling, performance_report
from qft_core.evaluate.experts import (
    ADJUDICATION_SPREAD,
    RUBRIC,
    AnnotationTask,
    AssignmentStrategy,
    EvalOutput,
    Expert,
    ExpertError,
    GoldItem,
    GoldSnapshot,
    Rating,
    RubricScore,
    check_profile,
    consensus,
    gold_set_hash,
    plan_assignments,
    select_gold_items,
)
from qft_core.records import Record, write_jsonl, write_parquet

DEFAULT_DB_NAME = "experts.sqlite"
DEFAULT_BUSY_TIMEOUT_S = 60.0


class ExpertStoreError(ExpertError):
    """The expert database cannot be opened, migrated or written; the message names the file."""


class GoldSetError(ExpertError):
    """A gold set that does not exist, meets no item, or whose stored content no longer matches its hash."""


class GoldSetVersion(Record):
    """One immutable snapshot of the gold set and the bar its items met."""

    version: int
    created_at: str
    min_raters: int
    min_score: float
    item_count: int
    content_hash: str


def default_db_path(paths: PathsConfig) -> Path:
    return paths.resolve(paths.artifacts_dir) / DEFAULT_DB_NAME


_SCORE_COLUMNS = ", ".join(RUBRIC)
_IMMUTABLE = "SELECT RAISE(ABORT, 'gold set versions are immutable')"

# MIGRATIONS[i] takes the schema from version i to version i + 1; append, never edit a shipped one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE experts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            email TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('annotator', 'reviewer', 'admin')),
            specialities TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            example_id TEXT NOT NULL,
            model_id TEXT NOT NULL,
            output TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (example_id, model_id))""",
        """CREATE TABLE assignments (
            task_id INTEGER NOT NULL REFERENCES tasks (id),
            expert_id INTEGER NOT NULL REFERENCES experts (id),
            assigned_at TEXT NOT NULL,
            PRIMARY KEY (task_id, expert_id))""",
        """CREATE TABLE scores (
            task_id INTEGER NOT NULL,
            expert_id INTEGER NOT NULL,
            accuracy INTEGER NOT NULL CHECK (accuracy BETWEEN 1 AND 5),
            completeness INTEGER NOT NULL CHECK (completeness BETWEEN 1 AND 5),
            reasoning INTEGER NOT NULL CHECK (reasoning BETWEEN 1 AND 5),
            language INTEGER NOT NULL CHECK (language BETWEEN 1 AND 5),
            comment TEXT,
            scored_at TEXT NOT NULL,
            PRIMARY KEY (task_id, expert_id),
            FOREIGN KEY (task_id, expert_id) REFERENCES assignments (task_id, expert_id))""",
        """CREATE TABLE gold_sets (
            version INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            min_raters INTEGER NOT NULL,
            min_score REAL NOT NULL,
            item_count INTEGER NOT NULL,
            content_hash TEXT NOT NULL)""",
        """CREATE TABLE gold_items (
            version INTEGER NOT NULL REFERENCES gold_sets (version),
            position INTEGER NOT NULL,
            item TEXT NOT NULL,
            PRIMARY KEY (version, position))""",
        f"CREATE TRIGGER gold_sets_no_update BEFORE UPDATE ON gold_sets BEGIN {_IMMUTABLE}; END",
        f"CREATE TRIGGER gold_sets_no_delete BEFORE DELETE ON gold_sets BEGIN {_IMMUTABLE}; END",
        f"CREATE TRIGGER gold_items_no_update BEFORE UPDATE ON gold_items BEGIN {_IMMUTABLE}; END",
        f"CREATE TRIGGER gold_items_no_delete BEFORE DELETE ON gold_items BEGIN {_IMMUTABLE}; END",
    ),
    # Scores are replaced in place; each gold-set version keeps the experts' scores of its items as they were, so
    # drift between versions can tell an expert who re-scored from a consensus that moved.
    (
        """CREATE TABLE gold_ratings (
            version INTEGER NOT NULL REFERENCES gold_sets (version),
            task_id INTEGER NOT NULL,
            expert_id INTEGER NOT NULL,
            accuracy INTEGER NOT NULL,
            completeness INTEGER NOT NULL,
            reasoning INTEGER NOT NULL,
            language INTEGER NOT NULL,
            comment TEXT,
            PRIMARY KEY (version, task_id, expert_id))""",
        f"CREATE TRIGGER gold_ratings_no_update BEFORE UPDATE ON gold_ratings BEGIN {_IMMUTABLE}; END",
        f"CREATE TRIGGER gold_ratings_no_delete BEFORE DELETE ON gold_ratings BEGIN {_IMMUTABLE}; END",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _expert(row: sqlite3.Row) -> Expert:
    return Expert(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        role=row["role"],
        specialities=json.loads(row["specialities"]),
    )


def _rating(row: sqlite3.Row) -> Rating:
    score = RubricScore(**{dimension: row[dimension] for dimension in RUBRIC}, comment=row["comment"])
    return Rating(task_id=row["task_id"], expert_id=row["expert_id"], score=score)


def _task(row: sqlite3.Row) -> AnnotationTask:
    return AnnotationTask(id=row["id"], **json.loads(row["output"]))


class ExpertStore:
    """The repository of the expert review; one per process, a context manager that closes its connection."""

    def __init__(self, path: str | Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # `timeout` is SQLite's busy_timeout: a locked database is retried for that long, not failed at once.
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._use_wal()
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as error:
            raise ExpertStoreError(f"{self.path}: cannot open the expert database: {error}") from None
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self) -> None:
        """Switch to the WAL journal (it persists in the file), retrying while another process does the same.

        SQLite answers a competing switch with "database is locked" at once instead of waiting for it.
        """
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode not in _BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ExpertStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; a write takes the write lock at BEGIN, when waiting for it is still harmless."""
        try:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as error:
            raise ExpertStoreError(
                f"{self.path}: {error} (another writer held it for more than {self.busy_timeout_s:g} s)"
            ) from None
        try:
            yield self._db
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise ExpertStoreError(f"{self.path}: {error}") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _schema_version(self, db: sqlite3.Connection) -> int:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        row = db.execute("SELECT version FROM schema_version").fetchone() if exists else None
        return row["version"] if row else 0

    def _migrate(self) -> None:
        with self._transaction(write=False) as db:
            current = self._schema_version(db)
        if current == SCHEMA_VERSION:
            return
        with self._transaction(write=True) as db:
            # Read again under the write lock: another process may have migrated in between.
            current = self._schema_version(db)
            if current > SCHEMA_VERSION:
                raise ExpertStoreError(
                    f"{self.path}: schema version {current} is newer than this qft understands ({SCHEMA_VERSION})"
                )
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._transaction(write=False) as db:
            return self._schema_version(db)

    # Experts

    def add_expert(self, name: str, email: str, role: str = "annotator", specialities: Iterable[str] = ()) -> Expert:
        specialities = check_profile(name, email, role, specialities)
        email = email.strip().lower()
        with self._transaction(write=True) as db:
            taken = db.execute("SELECT id FROM experts WHERE email = ?", (email,)).fetchone()
            if taken:
                raise ExpertError(f"an expert with email {email} already exists (id {taken['id']})")
            cursor = db.execute(
                "INSERT INTO experts (name, email, role, specialities, created_at) VALUES (?, ?, ?, ?, ?)",
                (name.strip(), email, role, json.dumps(specialities), _now()),
            )
        return Expert(id=cursor.lastrowid, name=name.strip(), email=email, role=role, specialities=specialities)

    def experts(self) -> list[Expert]:
        with self._transaction(write=False) as db:
            return [_expert(row) for row in db.execute("SELECT * FROM experts ORDER BY id")]

    def expert(self, expert_id: int) -> Expert:
        with self._transaction(write=False) as db:
            row = db.execute("SELECT * FROM experts WHERE id = ?", (expert_id,)).fetchone()
        if row is None:
            raise ExpertError(f"no expert with id {expert_id}")
        return _expert(row)

    # Tasks and assignments

    def create_tasks(self, outputs: Iterable[EvalOutput]) -> tuple[int, int]:
        """One task per evaluation output; returns (created, already present). An output is its example and model."""
        created = present = 0
        with self._transaction(write=True) as db:
            for output in outputs:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO tasks (example_id, model_id, output, created_at) VALUES (?, ?, ?, ?)",
                    (output.example_id, output.model_id, output.model_dump_json(), _now()),
                )
                created += cursor.rowcount
                present += 1 - cursor.rowcount
        return created, present

    def tasks(self) -> list[AnnotationTask]:
        with self._transaction(write=False) as db:
            return [_task(row) for row in db.execute("SELECT * FROM tasks ORDER BY id")]

    def assignments(self) -> list[tuple[int, int]]:
        """Every (task id, expert id) pair, by task then expert."""
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT task_id, expert_id FROM assignments ORDER BY task_id, expert_id")
            return [(row["task_id"], row["expert_id"]) for row in rows]

    def assign(self, per_item: int, strategy: AssignmentStrategy = "round_robin") -> list[tuple[int, int]]:
        """Bring every task to `per_item` experts (see `plan_assignments`); returns the new pairs."""
        with self._transaction(write=True) as db:
            tasks = [_task(row) for row in db.execute("SELECT * FROM tasks ORDER BY id")]
            experts = [_expert(row) for row in db.execute("SELECT * FROM experts ORDER BY id")]
            existing = [(row["task_id"], row["expert_id"]) for row in db.execute("SELECT * FROM assignments")]
            planned = plan_assignments(tasks, experts, existing, per_item, strategy)
            now = _now()
            db.executemany(
                "INSERT INTO assignments (task_id, expert_id, assigned_at) VALUES (?, ?, ?)",
                [(task_id, expert_id, now) for task_id, expert_id in planned],
            )
        return planned

    # Scores

    def record_score(self, task_id: int, expert_id: int, score: RubricScore, replace: bool = False) -> None:
        """Store an expert's score of an assigned task; scoring it again needs `replace=True`."""
        with self._transaction(write=True) as db:
            if not db.execute(
                "SELECT 1 FROM assignments WHERE task_id = ? AND expert_id = ?", (task_id, expert_id)
            ).fetchone():
                if not db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone():
                    raise ExpertError(f"no task with id {task_id}")
                if not db.execute("SELECT 1 FROM experts WHERE id = ?", (expert_id,)).fetchone():
                    raise ExpertError(f"no expert with id {expert_id}")
                raise ExpertError(f"task {task_id} is not assigned to expert {expert_id}")
            scored = db.execute("SELECT 1 FROM scores WHERE task_id = ? AND expert_id = ?", (task_id, expert_id))
            if scored.fetchone() and not replace:
                raise ExpertError(
                    f"expert {expert_id} has already scored task {task_id} (replace the score explicitly: --replace)"
                )
            db.execute(
                f"INSERT OR REPLACE INTO scores (task_id, expert_id, {_SCORE_COLUMNS}, comment, scored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, expert_id, *score.values().values(), score.comment, _now()),
            )

    def ratings(self) -> list[Rating]:
        """Every stored score, by task then expert."""
        with self._transaction(write=False) as db:
            return [_rating(row) for row in db.execute("SELECT * FROM scores ORDER BY task_id, expert_id")]

    # Gold set

    def create_gold_set(
        self, min_raters: int, min_score: float, flag_spread: int = ADJUDICATION_SPREAD
    ) -> GoldSetVersion:
        """Snapshot the items whose consensus meets the bar as the next gold-set version."""
        with self._transaction(write=True) as db:
            tasks = {task.id: task for task in map(_task, db.execute("SELECT * FROM tasks"))}
            ratings = [_rating(row) for row in db.execute("SELECT * FROM scores")]
            items = select_gold_items(tasks, consensus(ratings, flag_spread), min_raters, min_score)
            if not items:
                raise GoldSetError(
                    f"no task meets the bar (at least {min_raters} raters, every median ≥ {min_score:g}, "
                    f"no dimension {flag_spread} or more points apart); no gold set created"
                )
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 AS next FROM gold_sets").fetchone()["next"]
            gold = GoldSetVersion(
                version=version,
                created_at=_now(),
                min_raters=min_raters,
                min_score=min_score,
                item_count=len(items),
                content_hash=gold_set_hash(items),
            )
            db.execute(
                "INSERT INTO gold_sets (version, created_at, min_raters, min_score, item_count, content_hash) "
                "VALUES (:version, :created_at, :min_raters, :min_score, :item_count, :content_hash)",
                gold.model_dump(),
            )
            db.executemany(
                "INSERT INTO gold_items (version, position, item) VALUES (?, ?, ?)",
                [(version, position, item.model_dump_json()) for position, item in enumerate(items)],
            )
            gold_tasks = {item.task_id for item in items}
            db.executemany(
                f"INSERT INTO gold_ratings (version, task_id, expert_id, {_SCORE_COLUMNS}, comment) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (version, rating.task_id, rating.expert_id, *rating.score.values().values(), rating.score.comment)
                    for rating in ratings
                    if rating.task_id in gold_tasks
                ],
            )
        return gold

    def gold_sets(self) -> list[GoldSetVersion]:
        with self._transaction(write=False) as db:
            return [GoldSetVersion(**dict(row)) for row in db.execute("SELECT * FROM gold_sets ORDER BY version")]

    def _gold_row(self, db: sqlite3.Connection, version: int | None) -> sqlite3.Row:
        if version is None:
            row = db.execute("SELECT * FROM gold_sets ORDER BY version DESC LIMIT 1").fetchone()
            if row is None:
                raise GoldSetError(f"{self.path}: no gold set yet; create one with `qft experts gold`")
            return row
        row = db.execute("SELECT * FROM gold_sets WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise GoldSetError(f"{self.path}: no gold set version {version}")
        return row

    def gold_set(self, version: int | None = None) -> GoldSetVersion:
        """One gold-set version's description, the latest by default."""
        with self._transaction(write=False) as db:
            return GoldSetVersion(**dict(self._gold_row(db, version)))

    def gold_items(self, version: int | None = None) -> list[GoldItem]:
        """The items of one gold-set version (the latest by default), checked against the version's hash."""
        with self._transaction(write=False) as db:
            row = self._gold_row(db, version)
            rows = db.execute("SELECT item FROM gold_items WHERE version = ? ORDER BY position", (row["version"],))
            items = [GoldItem.model_validate_json(item["item"]) for item in rows]
        if gold_set_hash(items) != row["content_hash"]:
            raise GoldSetError(f"{self.path}: gold set version {row['version']} does not match its content hash")
        return items

    def gold_snapshots(self) -> list[GoldSnapshot]:
        """Every gold-set version with its items and the experts' scores of them when it was made, by version."""
        snapshots = []
        for gold in self.gold_sets():
            with self._transaction(write=False) as db:
                rows = db.execute(
                    "SELECT * FROM gold_ratings WHERE version = ? ORDER BY task_id, expert_id", (gold.version,)
                )
                ratings = tuple(_rating(row) for row in rows)
            snapshots.append(GoldSnapshot(gold.version, tuple(self.gold_items(gold.version)), ratings))
        return snapshots

    def performance(self, resampling: Resampling = Resampling()) -> PerformanceReport:
        """Each expert's agreement and bias against the others, and the drift across gold-set versions."""
        names = {expert.id: expert.name for expert in self.experts()}
        return performance_report(self.ratings(), self.gold_snapshots(), names, resampling)

    def export_gold_set(self, version: int | None = None) -> list[dict]:
        """The items of one gold-set version (the latest by default) as JSON-ready dicts."""
        return [item.model_dump(mode="json") for item in self.gold_items(version)]


def load_gold_set(db_path: str | Path, version: int | None = None) -> list[GoldItem]:
    """The gold set evaluation reads: one version of it (the latest by default) from an existing database."""
    if not Path(db_path).is_file():
        raise GoldSetError(f"{db_path}: no expert database")
    with ExpertStore(db_path) as store:
        return store.gold_items(version)


def write_gold_set(items: list[GoldItem], path: str | Path) -> Path:
    """Write gold items as JSONL or parquet, chosen by the file's suffix."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            return write_jsonl(items, path)
        if path.suffix == ".parquet":
            return write_parquet(items, GoldItem, path)
    except OSError as error:
        raise ExpertError(f"{path}: cannot write the gold set: {error.strerror}") from None
    raise ExpertError(f"{path}: the gold set is written as .jsonl or .parquet")
