"""A team Dagster instance on PostgreSQL: write the dagster.yaml that puts runs, events and schedules in one database.

    uv run python -m qft_pipeline.postgres --host db.example.org --user qft --db dagster

The password is never written to the file: Dagster reads it from $DAGSTER_PG_PASSWORD when the instance starts.
Needs the `dagster-postgres` package where the instance is used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from qft_pipeline.instance import project_dagster_home

PASSWORD_ENV = "DAGSTER_PG_PASSWORD"
ENV_VARS = {"hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT", "username": "DAGSTER_PG_USERNAME", "db_name": "DAGSTER_PG_DB"}
# Instance keys that choose a storage; `storage` is the one Dagster wants, the others are its older per-store form.
_STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


class InstanceConfigError(ValueError):
    """Settings that cannot become a PostgreSQL instance config; the message names the variable, option or file."""


@dataclass(frozen=True)
class PostgresStorage:
    """Where the database is. `password_env` names the variable holding the password; None for trust/peer auth."""

    hostname: str = "localhost"
    port: int = 5432
    username: str = "dagster"
    db_name: str = "dagster"
    password_env: str | None = PASSWORD_ENV

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PostgresStorage:
        """Defaults overridden by DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USERNAME and DAGSTER_PG_DB."""
        values: dict[str, object] = {field: environ[name] for field, name in ENV_VARS.items() if environ.get(name)}
        if "port" in values:
            try:
                values["port"] = int(values["port"])
            except ValueError:
                raise InstanceConfigError(f"${ENV_VARS['port']}: '{values['port']}' is not a port number") from None
        return cls(**values)

    def instance_config(self) -> dict:
        """The `storage:` section of dagster.yaml: one database for runs, event logs and schedules."""
        database: dict[str, object] = {
            "username": self.username,
            "hostname": self.hostname,
            "db_name": self.db_name,
            "port": self.port,
            # dagster-postgres ships psycopg2, but SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3.
            "scheme": "postgresql+psycopg2",
        }
        if self.password_env:
            database["password"] = {"env": self.password_env}
        return {"storage": {"postgres": {"postgres_db": database}}}


def write_postgres_instance(storage: PostgresStorage, home: Path | None = None, replace_storage: bool = False) -> Path:
    """Point the Dagster instance in `home` (default: the project's DAGSTER_HOME) at PostgreSQL.

    Other settings already in dagster.yaml (telemetry, run coordinator …) are kept. A file that already chooses
    some other storage is left alone unless `replace_storage` is set.
    """
    home = Path(home) if home else project_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    settings_file = home / "dagster.yaml"
    settings: dict = {}
    if settings_file.exists():
        settings = yaml.safe_load(settings_file.read_text(encoding="utf-8")) or {}
        if not isinstance(settings, dict):
            raise InstanceConfigError(f"{settings_file}: the top level must be a mapping")
    wanted = storage.instance_config()
    chosen = {key: settings[key] for key in _STORAGE_KEYS if key in settings}
    if chosen and chosen != wanted and not replace_storage:
        raise InstanceConfigError(
            f"{settings_file}: already configures {', '.join(chosen)}; pass replace_storage (--replace) to switch it to PostgreSQL"
        )
    for key in _STORAGE_KEYS:
        settings.pop(key, None)
    settings = {**wanted, **settings}
    settings.setdefault("telemetry", {"enabled": False})
    settings_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return settings_file


def build_parser() -> argparse.ArgumentParser:
    defaults = PostgresStorage.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m qft_pipeline.postgres",
        description="Write a dagster.yaml that stores this project's Dagster runs in PostgreSQL (defaults from $DAGSTER_PG_*).",
    )
    parser.add_argument("--home", type=Path, help="Dagster home folder (default: $DAGSTER_HOME or .dagster_home)")
    parser.add_argument("--host", default=defaults.hostname)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--user", default=defaults.username)
    parser.add_argument("--db", default=defaults.db_name)
    password = parser.add_mutually_exclusive_group()
    password.add_argument("--password-env", default=PASSWORD_ENV, help=f"variable that holds the password (default {PASSWORD_ENV})")
    password.add_argument("--no-password", action="store_true", help="trust or peer authentication: no password at all")
    parser.add_argument("--replace", action="store_true", help="replace a storage that dagster.yaml already configures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        storage = PostgresStorage(
            hostname=args.host,
            port=args.port,
            username=args.user,
            db_name=args.db,
            password_env=None if args.no_password else args.password_env,
        )
        path = write_postgres_instance(storage, args.home, replace_storage=args.replace)
    except InstanceConfigError as error:
        print(f"qft postgres: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}: runs, event logs and schedules go to postgresql://{storage.username}@{storage.hostname}:{storage.port}/{storage.db_name}")
    if storage.password_env:
        print(f"set ${storage.password_env} wherever Dagster runs (qft run, qft ui, the daemon)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
