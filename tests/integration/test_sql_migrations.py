"""Alembic migrations on SQLite, PostgreSQL and MariaDB: up, down, up again,
and agreement with the declarative tables the repository queries."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from console_auth.adapters.sql import (
    HEAD,
    current_revision,
    downgrade,
    open_engine,
    upgrade,
    upgrade_script,
)
from console_auth.adapters.sql.migrate import VERSION_TABLE, script_config
from console_auth.adapters.sql.tables import Base
from console_auth.domain import BackendUnavailable, InvalidRequest, UnsupportedVersion
from tests.backends.sql_servers import database

TABLE = "console_connections"
PORT_TABLES = {"console_port_leases", "console_port_reservations"}
REVOCATIONS = "console_revocations"
EXPECTED_INDEXES = {
    "ix_console_connections_instance_uuid": ["instance_uuid"],
    "ix_console_connections_expires_at_us": ["expires_at_us"],
    "ix_console_connections_host_expires_at_us": ["host", "expires_at_us"],
}


DIALECTS = ["sqlite", "postgresql", "mariadb"]
TRANSACTIONAL_DDL = ["sqlite", "postgresql"]
"""MariaDB/MySQL commit every DDL statement on their own."""


@contextmanager
def _empty_database(dialect: str, tmp_path: Path) -> Iterator[Engine]:
    if dialect == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path}/migrations.sqlite3")
        yield engine
        engine.dispose()
        return
    with database(dialect) as url:
        engine = open_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture(params=DIALECTS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of each dialect."""
    with _empty_database(request.param, tmp_path) as empty:
        yield empty


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    with _empty_database("sqlite", tmp_path) as empty:
        yield empty


def _schema_diffs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, Base.metadata))


def test_head_is_the_scripts_head() -> None:
    assert ScriptDirectory.from_config(script_config()).get_current_head() == HEAD


def test_upgrade_from_empty_creates_the_table_and_its_indexes(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    schema = inspect(engine)
    assert set(schema.get_table_names()) == {TABLE, *PORT_TABLES, REVOCATIONS, VERSION_TABLE}
    indexes = {  # MariaDB lists its unique constraint as an index too
        ix["name"]: ix["column_names"]
        for ix in schema.get_indexes(TABLE)
        if not ix.get("duplicates_constraint") and not ix["unique"]
    }
    assert indexes == EXPECTED_INDEXES
    uniques = schema.get_unique_constraints(TABLE)
    assert [(u["name"], u["column_names"]) for u in uniques] == [
        ("uq_console_connections_token_hash", ["token_hash"])
    ]
    assert schema.get_pk_constraint(TABLE)["constrained_columns"] == ["id"]
    assert schema.get_pk_constraint(REVOCATIONS)["constrained_columns"] == ["instance_uuid"]
    assert [ix["column_names"] for ix in schema.get_indexes(REVOCATIONS)] == [["revoked_at_us"]]
    assert current_revision(engine) == HEAD


def test_the_id_is_sqlites_rowid(sqlite_engine: Engine) -> None:
    """Only ``INTEGER PRIMARY KEY`` aliases the rowid (no extra index, auto ids)."""
    engine = sqlite_engine
    upgrade(engine)
    with engine.connect() as conn:
        sql = conn.scalar(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": TABLE})
    assert "id INTEGER NOT NULL" in sql


def test_the_id_is_a_bigint_on_servers(engine: Engine) -> None:
    upgrade(engine)
    column = next(c for c in inspect(engine).get_columns(TABLE) if c["name"] == "id")
    expected = "INTEGER" if engine.dialect.name == "sqlite" else "BIGINT"
    assert str(column["type"]).startswith(expected)
    assert column.get("autoincrement", True) is not False


def test_downgrade_to_base_drops_everything_and_upgrade_works_again(engine: Engine) -> None:
    upgrade(engine)
    downgrade(engine, "base")
    assert inspect(engine).get_table_names() == [VERSION_TABLE]
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD
    assert _schema_diffs(engine) == []


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == HEAD


def test_migrated_schema_equals_the_declarative_tables(engine: Engine) -> None:
    assert _schema_diffs(engine) != []  # the comparison does see a missing table
    upgrade(engine)
    assert _schema_diffs(engine) == []


def test_another_applications_alembic_table_is_left_alone(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('their_head')"))
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "their_head"
    assert current_revision(engine) == HEAD


@pytest.mark.parametrize("dialect", TRANSACTIONAL_DDL)
def test_a_failed_upgrade_leaves_nothing_behind(dialect: str, tmp_path: Path) -> None:
    """The whole run is one transaction, DDL included, even on SQLite."""
    with _empty_database(dialect, tmp_path) as engine:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("CREATE INDEX ix_console_connections_host_expires_at_us ON t (x)"))
        with pytest.raises(BackendUnavailable):
            upgrade(engine)  # fails at the last index: its name is taken
        assert inspect(engine).get_table_names() == ["t"]
        assert current_revision(engine) is None


def test_threads_migrating_at_once_all_succeed(tmp_path: Path) -> None:
    """Alembic's ``context`` is process-global: threads must take turns."""
    url = f"sqlite:///{tmp_path}/race.sqlite3"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            open_engine(url, auto_migrate=True).dispose()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=start) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    _assert_at_head(url)


def test_processes_migrating_at_once_all_succeed(tmp_path: Path) -> None:
    """Workers auto-migrating one new file at start-up must not race: the
    first takes SQLite's write lock, the others wait and find it done."""
    url = f"sqlite:///{tmp_path}/race.sqlite3"
    code = (
        "import sys; from console_auth.adapters.sql import open_engine; "
        "open_engine(sys.argv[1], auto_migrate=True).dispose()"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outcomes = [(w.communicate(timeout=60)[1], w.returncode) for w in workers]
    assert [stderr for stderr, returncode in outcomes if returncode != 0] == []
    _assert_at_head(url)


def _assert_at_head(url: str) -> None:
    engine = open_engine(url)
    try:
        assert current_revision(engine) == HEAD
        assert _schema_diffs(engine) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "postgresql://", "mysql://"])
def test_upgrade_script_needs_no_connection(url: str) -> None:
    script = upgrade_script(url)
    assert "CREATE TABLE console_connections" in script
    assert "CREATE INDEX ix_console_connections_host_expires_at_us" in script
    assert f"INSERT INTO {VERSION_TABLE}" in script


def test_an_unknown_target_revision_is_an_invalid_request(engine: Engine) -> None:
    upgrade(engine)
    with pytest.raises(InvalidRequest, match="nope"):
        downgrade(engine, "nope")
    assert current_revision(engine) == HEAD


def test_a_schema_from_a_newer_release_is_refused_untouched(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(UnsupportedVersion, match="9999"):
        upgrade(engine)
    assert current_revision(engine) == "9999"


def test_every_earlier_revision_upgrades_to_head_keeping_its_data(engine: Engine) -> None:
    """From each revision ever shipped, with rows in it, to head and back."""
    revisions = [
        script.revision
        for script in reversed(list(ScriptDirectory.from_config(script_config()).walk_revisions()))
    ]
    assert revisions[0] == "0001"
    assert revisions[-1] == HEAD
    for earlier in revisions[:-1]:
        upgrade(engine, earlier)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO console_connections (token_hash, instance_uuid, host, port,"
                    " console_type, options, access_url_base, expires_at_us, issued_at_us)"
                    f" VALUES ('{earlier:0>64}', '6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab',"
                    " 'compute-1', 5900, 'novnc', '{}', NULL, 1, NULL)"
                )
            )
        upgrade(engine)
        assert current_revision(engine) == HEAD
        assert _schema_diffs(engine) == []
        downgrade(engine, earlier)
        assert current_revision(engine) == earlier
    with engine.connect() as conn:
        hashes = conn.execute(text("SELECT token_hash FROM console_connections")).scalars().all()
    assert sorted(hashes) == sorted(f"{r:0>64}" for r in revisions[:-1])
