"""The SQL adapter on real SQLite files: pragmas, exact time, faults mapped
to typed errors, unreadable rows, and no clean token on disk or in logs."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, event, text

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleOptions,
    InvalidRequest,
    hash_token,
)
from console_auth.domain.types import from_microseconds, to_microseconds
from tests.builders import a_connection
from tests.fakes import T0

FIRST = datetime.min.replace(tzinfo=UTC)
LAST = datetime.max.replace(tzinfo=UTC)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.sqlite3"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{db_path}", auto_migrate=True)
    yield engine
    engine.dispose()


@pytest.fixture
def repository(engine: Engine) -> SqlConsoleConnectionRepository:
    return SqlConsoleConnectionRepository(Statements(engine))


def _pragmas(conn: Any) -> tuple[Any, ...]:
    return tuple(
        conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        for name in ("foreign_keys", "busy_timeout", "journal_mode", "synchronous")
    )


# --- pragmas and engine options ---------------------------------------------------------------


def test_pragmas_are_set_on_every_pooled_connection(engine: Engine) -> None:
    conns = [engine.connect() for _ in range(4)]  # four distinct DBAPI connections at once
    try:
        assert len({id(c.connection.dbapi_connection) for c in conns}) == 4
        assert {_pragmas(c) for c in conns} == {(1, 5000, "wal", 1)}  # synchronous 1 = NORMAL
    finally:
        for conn in conns:
            conn.close()


def test_in_memory_database_is_one_database_for_every_thread() -> None:
    engine = open_engine("sqlite://", auto_migrate=True)
    try:
        repository = SqlConsoleConnectionRepository(Statements(engine))
        connection = a_connection()
        worker = threading.Thread(target=repository.add, args=(connection,))
        worker.start()
        worker.join()
        assert repository.get_by_hash(connection.token_hash) == connection
        with engine.connect() as conn:
            assert _pragmas(conn) == (1, 5000, "memory", 1)
    finally:
        engine.dispose()


def test_bound_parameters_are_always_hidden(db_path: Path) -> None:
    engine = open_engine(f"sqlite:///{db_path}", hide_parameters=False)
    try:
        assert engine.hide_parameters
        assert not engine.pool._pre_ping  # a file cannot drop a connection
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url", ["not a url", "postgresql://user:s3cret@host:port/db", "nosuch://user:s3cret@h/db"]
)
def test_bad_urls_are_invalid_requests_that_do_not_quote_the_password(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        open_engine(url)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_database_file_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    """Under a permissive umask: created 0600, and SQLite gives its journal
    files the main file's mode."""
    path = tmp_path / "new.sqlite3"
    with _umask(0o022):
        engine = open_engine(f"sqlite:///{path}", auto_migrate=True)
        try:
            repository = SqlConsoleConnectionRepository(
                Statements(engine)
            )  # its connection keeps -wal
            repository.add(a_connection())
            files = [path, tmp_path / "new.sqlite3-wal", tmp_path / "new.sqlite3-shm"]
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
                f.name: 0o600 for f in files
            }
        finally:
            engine.dispose()


def test_an_existing_database_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    path.touch(mode=0o640)
    path.chmod(0o640)
    with _umask(0o022):
        engine = open_engine(f"sqlite:///{path}", auto_migrate=True)
        try:
            SqlConsoleConnectionRepository(Statements(engine)).add(a_connection())
        finally:
            engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- exact time ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "stored"),
    [
        (FIRST, -62_135_596_800_000_000),
        (datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), -1),
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (T0 + timedelta(microseconds=1), 1_767_268_800_000_001),
        (LAST, 253_402_300_799_999_999),
    ],
)
def test_times_round_trip_exactly_across_datetimes_whole_range(
    repository: SqlConsoleConnectionRepository, engine: Engine, moment: datetime, stored: int
) -> None:
    connection = a_connection(expires_at=moment, issued_at=moment)
    repository.add(connection)
    assert repository.get_by_hash(connection.token_hash) == connection
    with engine.connect() as conn:
        row = conn.execute(text("SELECT expires_at_us, issued_at_us FROM console_connections"))
        assert tuple(row.one()) == (stored, stored)


@given(st.datetimes(timezones=st.just(UTC)))
def test_microseconds_are_an_exact_bijection(moment: datetime) -> None:
    assert from_microseconds(to_microseconds(moment)) == moment


def test_an_offset_time_is_stored_as_its_utc_instant() -> None:
    assert to_microseconds(datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 0


def test_a_naive_purge_time_is_an_invalid_request(
    repository: SqlConsoleConnectionRepository,
) -> None:
    with pytest.raises(InvalidRequest):
        repository.delete_expired(datetime(2026, 1, 1), None, 10)


# --- faults become BackendUnavailable ---------------------------------------------------------


def test_a_missing_directory_is_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path}/nowhere/tokens.sqlite3", auto_migrate=True)
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_removed_later_is_backend_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    engine = open_engine(f"sqlite:///{directory}/tokens.sqlite3")
    directory.rmdir()
    try:
        with pytest.raises(BackendUnavailable, match="SQLITE_CANTOPEN") as caught:
            SqlConsoleConnectionRepository(Statements(engine)).get_by_hash("0" * 64)
        assert caught.value.__cause__ is not None
    finally:
        engine.dispose()


@pytest.mark.parametrize("auto_migrate", [True, False])
def test_a_file_that_is_not_a_database_is_backend_unavailable(
    db_path: Path, auto_migrate: bool
) -> None:
    db_path.write_bytes(os.urandom(8192))

    def use() -> None:
        engine = open_engine(f"sqlite:///{db_path}", auto_migrate=auto_migrate)
        try:
            SqlConsoleConnectionRepository(Statements(engine)).add(a_connection())
        finally:
            engine.dispose()

    with pytest.raises(BackendUnavailable, match="SQLITE_NOTADB"):
        use()


def test_an_unmigrated_database_is_backend_unavailable(db_path: Path) -> None:
    engine = open_engine(f"sqlite:///{db_path}")
    try:
        with pytest.raises(BackendUnavailable):
            SqlConsoleConnectionRepository(Statements(engine)).get_by_hash("0" * 64)
    finally:
        engine.dispose()


def test_a_locked_database_is_backend_unavailable_without_values(
    engine: Engine, db_path: Path
) -> None:
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout=50"))
    engine.dispose()  # new connections get the short timeout
    repository = SqlConsoleConnectionRepository(Statements(engine))
    connection = a_connection(host="secret-host.example")
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(BackendUnavailable, match="SQLITE_BUSY") as caught:
            repository.add(connection)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    for text_ in (str(caught.value), str(caught.value.__cause__)):
        assert connection.token_hash not in text_
        assert "secret-host" not in text_
    repository.add(connection)  # the pool recovers once the lock is gone
    assert repository.get_by_hash(connection.token_hash) == connection


# --- rows this release cannot read ------------------------------------------------------------

CORRUPTIONS = {
    "options not JSON": {"options": "{not json"},
    "options a list": {"options": "[]"},
    "options badly typed": {"options": '{"use_tls": "maybe"}'},
    "port zero": {"port": 0},
    "host not a host": {"host": "bad host!"},
    "unknown console type": {"console_type": "telnet"},
    "uuid not a uuid": {"instance_uuid": "not-a-uuid"},
    "expiry text": {"expires_at_us": "soon"},
    "expiry beyond year 9999": {"expires_at_us": 2**62},
    "issued after expiry": {"issued_at_us": 2**40},
    "url with credentials": {"access_url_base": "https://u:p@proxy.example/"},
}


def _insert_raw(engine: Engine, token_hash: str, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "token_hash": token_hash,
        "instance_uuid": str(uuid.uuid4()),
        "host": "compute-1",
        "port": 5900,
        "console_type": "novnc",
        "options": "{}",
        "access_url_base": None,
        "expires_at_us": 2**30,
        "issued_at_us": None,
        **overrides,
    }
    columns = ", ".join(values)
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO console_connections ({columns}) VALUES (:{', :'.join(values)})"),
            values,
        )


@pytest.mark.parametrize("corruption", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_an_unreadable_row_is_a_typed_error_and_spares_the_others(
    repository: SqlConsoleConnectionRepository, engine: Engine, corruption: dict[str, Any]
) -> None:
    good = a_connection(expires_at=T0)
    repository.add(good)
    bad_hash = hash_token("corrupt")
    _insert_raw(engine, bad_hash, **corruption)
    with pytest.raises(ConsoleAuthError, match="unreadable") as caught:
        repository.get_by_hash(bad_hash)
    assert isinstance(caught.value, BackendUnavailable)
    assert repository.get_by_hash(good.token_hash) == good
    assert repository.delete_by_instance(good.instance_uuid, T0) == 1


def test_option_keys_of_a_newer_release_are_dropped(
    repository: SqlConsoleConnectionRepository, engine: Engine
) -> None:
    token_hash = hash_token("newer")
    _insert_raw(engine, token_hash, options='{"use_tls": true, "from_the_future": 1}')
    stored = repository.get_by_hash(token_hash)
    assert stored is not None
    assert stored.options == ConsoleOptions(use_tls=True)


# --- end to end: no clean token at rest or in logs --------------------------------------------


def test_no_clean_token_reaches_the_file_or_the_logs(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    engine = open_engine(f"sqlite:///{db_path}", auto_migrate=True)
    service = ConsoleAuthService(
        SqlConsoleConnectionRepository(Statements(engine)), SystemClock(), SecretsTokenSource()
    )
    instance = uuid.uuid4()
    issued = [
        service.authorize(
            instance,
            f"compute-{n % 3}",
            5900 + n,
            "novnc" if n % 2 else "serial",
            options={"use_tls": bool(n % 2)},
            access_url_base="https://proxy.example/vnc_lite.html?x=1",
        )
        for n in range(20)
    ]
    tokens = [i.token.get_secret_value() for i in issued]
    for token, console in zip(tokens, issued, strict=True):
        assert service.validate(token, instance) == console.connection
        assert console.access_url is not None
        assert service.validate_url(console.access_url) == console.connection
    at_rest = b"".join(
        path.read_bytes()
        for path in db_path.parent.iterdir()
        if path.name.startswith(db_path.name)
    )
    assert service.revoke_instance(instance) == 20
    engine.dispose()

    logged = (
        "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
        + caplog.text
    )
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)  # echo was on
    assert hash_token(tokens[0]).encode() in at_rest  # the scan does see stored values
    for token in tokens:
        assert token.encode() not in at_rest
        assert token not in logged
