"""The server hot path: one held connection, the pool for contended calls.

On real PostgreSQL and MariaDB: a lone caller reuses one connection and
checks nothing out; a connection the server kills costs no call; a call
blocked on a lock does not block the others (they take the pool); a forked
child neither uses nor ends its parent's session; dispose closes it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import pytest
from sqlalchemy import Engine, delete, event, text

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from console_auth.domain import InvalidRequest
from tests.backends.sql_servers import SERVER_NAMES, database
from tests.builders import a_connection
from tests.fakes import T0

T: Final = CONSOLE_CONNECTIONS


@pytest.fixture(scope="module", params=SERVER_NAMES)
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    with database(request.param) as db_url:
        open_engine(db_url, auto_migrate=True).dispose()
        yield db_url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(T))
    engine.dispose()  # the tests count connections from here
    yield engine
    engine.dispose()


class Connects:
    """How many DBAPI connections the engine has opened since created."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "connect", self._connected)

    def _connected(self, _dbapi: Any, _record: Any) -> None:
        self.count += 1


def _other_sessions(observer: Engine) -> list[int]:
    """Server ids of every session on this database but the observer's."""
    with observer.connect() as conn:
        if observer.dialect.name == "postgresql":
            sql = (
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        else:
            sql = (
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
        return [int(row[0]) for row in conn.execute(text(sql))]


def _kill(observer: Engine, session: int) -> None:
    with observer.connect() as conn:
        if observer.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": session})
        else:
            conn.execute(text(f"KILL {int(session)}"))


def test_only_autocommit_engines_without_pre_ping_hold_a_connection(url: str) -> None:
    """A held connection outside autocommit would sit in a transaction, on
    an old snapshot, between calls; with ``pool_pre_ping`` a ping per call
    was asked for."""
    plain = open_engine(url)
    pinging = open_engine(url, pool_pre_ping=True)
    transactional = open_engine(url, isolation_level="READ COMMITTED")
    try:
        assert Statements(plain).holds_connections
        assert not Statements(pinging).holds_connections
        assert not Statements(transactional).holds_connections
    finally:
        for engine in (plain, pinging, transactional):
            engine.dispose()


def test_many_repositories_on_one_engine_add_one_dispose_listener(engine: Engine) -> None:
    statements = Statements(engine)
    repositories = [SqlConsoleConnectionRepository(statements) for _ in range(20)]
    assert len(engine.dispatch.engine_disposed) == 1
    assert len(repositories) == 20


def test_a_lone_caller_reuses_one_connection_and_checks_none_out(engine: Engine) -> None:
    connects = Connects(engine)
    repository = SqlConsoleConnectionRepository(Statements(engine))
    stored = a_connection()
    repository.add(stored)
    for _ in range(50):
        assert repository.get_by_hash(stored.token_hash) == stored
    with pytest.raises(InvalidRequest, match="already stored"):
        repository.add(stored)  # a rejected duplicate keeps the connection
    assert repository.delete_by_instance(stored.instance_uuid, T0) == 1
    assert connects.count == 1
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_connection_the_server_killed_costs_no_call(engine: Engine, url: str) -> None:
    """The server writes or closes before the next call: the socket poll
    sees it, and the call runs on a new connection."""
    repository = SqlConsoleConnectionRepository(Statements(engine))
    stored = a_connection()
    repository.add(stored)
    observer = open_engine(url, pool_pre_ping=True)
    try:
        sessions = _other_sessions(observer)
        assert sessions  # the held connection
        for session in sessions:
            _kill(observer, session)
        deadline = time.monotonic() + 5
        while set(sessions) & set(_other_sessions(observer)) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has ended them and said so
        assert repository.get_by_hash(stored.token_hash) == stored
        assert repository.delete_by_instance(stored.instance_uuid, T0) == 1
    finally:
        observer.dispose()


def test_a_call_blocked_on_a_lock_leaves_the_others_to_the_pool(engine: Engine, url: str) -> None:
    """A revoke waits for a row lock on the held connection; a lookup, an
    insert and another revoke meanwhile go through the pool. (The insert
    also shows that a waiting revoke holds no gap: READ COMMITTED on
    MariaDB, see ``engine.MYSQL_SESSION_ISOLATION``.) Were they to wait for the held
    connection instead, they would wait for ever: the lock is released
    only after them. Run in threads, so that such a regression fails."""
    repository = SqlConsoleConnectionRepository(Statements(engine))
    locked, free = a_connection(), a_connection()
    repository.add(locked)
    repository.add(free)
    blocker = open_engine(url, isolation_level="READ COMMITTED")  # not autocommit
    try:
        with ThreadPoolExecutor(2) as threads, blocker.connect() as conn:
            transaction = conn.begin()
            conn.execute(delete(T).where(T.c.instance_uuid == str(locked.instance_uuid)))
            revoke = threads.submit(repository.delete_by_instance, locked.instance_uuid, T0)
            time.sleep(0.3)
            assert not revoke.done()  # waiting for the row lock, on the held connection
            try:
                lookup = threads.submit(repository.get_by_hash, free.token_hash)
                assert lookup.result(timeout=5) == free
                threads.submit(repository.add, a_connection()).result(timeout=5)
                other = threads.submit(repository.delete_by_instance, free.instance_uuid, T0)
                assert other.result(timeout=5) == 1
            finally:
                transaction.rollback()  # releases the lock: the revoke finds its row
            assert revoke.result(timeout=30) == 1
    finally:
        blocker.dispose()


def test_dispose_during_a_call_lets_it_finish_then_closes_its_connection(
    engine: Engine, url: str
) -> None:
    """The call blocked on a row lock keeps its connection; dispose marks it,
    and it is closed when the call returns, with the call's own result."""
    repository = SqlConsoleConnectionRepository(Statements(engine))
    locked = a_connection()
    repository.add(locked)
    blocker = open_engine(url, isolation_level="READ COMMITTED")  # not autocommit
    observer = open_engine(url, pool_pre_ping=True)
    try:
        with ThreadPoolExecutor(1) as threads, blocker.connect() as conn:
            transaction = conn.begin()
            conn.execute(delete(T).where(T.c.instance_uuid == str(locked.instance_uuid)))
            revoke = threads.submit(repository.delete_by_instance, locked.instance_uuid, T0)
            time.sleep(0.3)
            assert not revoke.done()
            engine.dispose()
            transaction.rollback()
            assert revoke.result(timeout=30) == 1
        blocker.dispose()
        deadline = time.monotonic() + 5
        while _other_sessions(observer) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server ends a closed session a moment later
        assert _other_sessions(observer) == []
    finally:
        blocker.dispose()
        observer.dispose()


def _child(repository: SqlConsoleConnectionRepository, token_hash: str, result: Any) -> None:
    found = repository.get_by_hash(token_hash)
    repository.add(a_connection())
    result.put(found is not None)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)"
)
def test_a_forked_child_spares_its_parents_session(engine: Engine) -> None:
    connects = Connects(engine)
    repository = SqlConsoleConnectionRepository(Statements(engine))
    stored = a_connection()
    repository.add(stored)
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_child, args=(repository, stored.token_hash, result))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert result.get(timeout=5) is True
    # the parent's session is alive and still the one in use: no reconnect
    assert repository.get_by_hash(stored.token_hash) == stored
    assert connects.count == 1


def test_dispose_closes_the_held_connection(engine: Engine, url: str) -> None:
    repository = SqlConsoleConnectionRepository(Statements(engine))
    stored = a_connection()
    repository.add(stored)
    observer = open_engine(url, pool_pre_ping=True)
    try:
        assert len(_other_sessions(observer)) == 1
        engine.dispose()
        deadline = time.monotonic() + 5
        while _other_sessions(observer) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server ends the session a moment later
        assert _other_sessions(observer) == []
        assert repository.get_by_hash(stored.token_hash) == stored  # and opens anew
    finally:
        observer.dispose()


def test_statements_run_read_committed_on_every_server(engine: Engine) -> None:
    """PostgreSQL's default; on MariaDB set per session (``init_command``)."""
    sql = (
        "SHOW transaction_isolation"
        if engine.dialect.name == "postgresql"
        else "SELECT @@session.tx_isolation"
    )
    with engine.connect() as conn:
        level = str(conn.execute(text(sql)).scalar())
    assert level.upper().replace("-", " ") == "READ COMMITTED"
