import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from qft_core.data.corpus import scan_corpus
from qft_pipeline.postgres import InstanceConfigError, PostgresStorage, main, write_postgres_instance
from tests.pipeline.conftest import write_corpus
from tests.pipeline.loopback import free_port


def _server_binaries() -> Path | None:
    """Debian keeps the server programs out of PATH, under /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(Path(path).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL on loopback with trust auth; as root, the server runs as the `postgres` account."""
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (the team-instance dependency)")
    bin_dir = _server_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="qft-pg-"))
    (base / "socket").mkdir()
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account to run the server as")
        for path in (base, base / "socket"):
            os.chown(path, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"

    def run(*command: str, check: bool = True) -> None:
        done = subprocess.run([*as_user, *command], check=False, capture_output=True, text=True, cwd=base)
        if check and done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()}")

    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base / 'socket'} -c fsync=off"
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "qft", "--auth=trust", "--no-sync", "-E", "UTF8", "--no-locale")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w", "start")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "qft", "dagster_test")
        yield PostgresStorage(hostname="127.0.0.1", port=port, username="qft", db_name="dagster_test")
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_instance_config_puts_every_store_in_one_database_without_the_password(tmp_path):
    storage = PostgresStorage(hostname="db.internal", port=6543, username="qft", db_name="runs")
    path = write_postgres_instance(storage, tmp_path)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": "qft",
                    "hostname": "db.internal",
                    "db_name": "runs",
                    "port": 6543,
                    "scheme": "postgresql+psycopg2",
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                }
            }
        },
        "telemetry": {"enabled": False},
    }


def test_settings_come_from_dagster_pg_variables():
    environ = {"DAGSTER_PG_HOST": "pg", "DAGSTER_PG_PORT": "5433", "DAGSTER_PG_USERNAME": "ops", "DAGSTER_PG_DB": "qft"}
    assert PostgresStorage.from_env(environ) == PostgresStorage(hostname="pg", port=5433, username="ops", db_name="qft")
    assert PostgresStorage.from_env({}) == PostgresStorage()


def test_bad_port_variable_is_named():
    with pytest.raises(InstanceConfigError, match=r"\$DAGSTER_PG_PORT: 'five' is not a port number"):
        PostgresStorage.from_env({"DAGSTER_PG_PORT": "five"})


def test_other_settings_in_an_existing_file_are_kept(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: true\nnux:\n  enabled: false\n", encoding="utf-8")
    write_postgres_instance(PostgresStorage(password_env=None), tmp_path)
    settings = yaml.safe_load((tmp_path / "dagster.yaml").read_text(encoding="utf-8"))
    assert settings["telemetry"] == {"enabled": True}
    assert settings["nux"] == {"enabled": False}
    assert "password" not in settings["storage"]["postgres"]["postgres_db"]


def test_another_configured_storage_is_replaced_only_when_asked(tmp_path):
    sqlite = "storage:\n  sqlite:\n    base_dir: /srv/dagster\n"
    (tmp_path / "dagster.yaml").write_text(sqlite, encoding="utf-8")
    with pytest.raises(InstanceConfigError, match="already configures storage"):
        write_postgres_instance(PostgresStorage(), tmp_path)
    assert (tmp_path / "dagster.yaml").read_text(encoding="utf-8") == sqlite
    write_postgres_instance(PostgresStorage(), tmp_path, replace_storage=True)
    assert list(yaml.safe_load((tmp_path / "dagster.yaml").read_text(encoding="utf-8"))["storage"]) == ["postgres"]


def test_command_line_writes_the_instance_from_options(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "--host", "pg.lan", "--user", "ops", "--db", "qft", "--no-password"]) == 0
    database = yaml.safe_load((tmp_path / "dagster.yaml").read_text(encoding="utf-8"))["storage"]["postgres"]["postgres_db"]
    assert database == {"username": "ops", "hostname": "pg.lan", "db_name": "qft", "port": 5432, "scheme": "postgresql+psycopg2"}
    assert "postgresql://ops@pg.lan:5432/qft" in capsys.readouterr().out


def test_graph_runs_against_postgres_and_is_read_back(postgres_server, project, monkeypatch):
    from dagster_postgres import PostgresRunStorage

    from qft_pipeline.runner import materialize_graph

    home = project["root"] / "dagster_home"
    write_postgres_instance(postgres_server, home)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-under-trust-auth")
    write_corpus(project["corpus"], pairs=8)

    outcome = materialize_graph(config_file=project["config_file"], selection="raw_thinking_documents")
    assert outcome.success, outcome.failures

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_thinking_documents"))
        assert event.run_id == outcome.run_id
        assert event.asset_materialization.metadata["content_hash"].value == scan_corpus(project["corpus"]).content_hash
    assert not (home / "history").exists(), "runs must not land in a SQLite history next to dagster.yaml"
