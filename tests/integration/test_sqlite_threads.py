"""The SQLite file hot path: one held connection per thread, outside the pool.

What must hold: threads never share a connection, holding them takes no
pool slot, a connection goes away with its thread, its driver and the
engine, a failed write leaves no lock behind, a broken connection is
replaced, and a forked child never uses its parent's connection.
"""

from __future__ import annotations

import gc
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.domain import BackendUnavailable, InvalidRequest
from tests.builders import a_connection

POOL_SLOTS = 15
"""SQLAlchemy's default for a SQLite file: ``pool_size`` 5 plus ``max_overflow`` 10."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'tokens.sqlite3'}", auto_migrate=True)
    yield engine
    engine.dispose()


@pytest.fixture
def repository(engine: Engine) -> SqlConsoleConnectionRepository:
    return SqlConsoleConnectionRepository(Statements(engine))


class Opened:
    """Every DBAPI connection the engine hands out from now on, kept to
    check it is closed (the migration's pooled one may be handed out again)."""

    def __init__(self, engine: Engine) -> None:
        self.connections: list[sqlite3.Connection] = []
        event.listen(engine, "checkout", self._checked_out)

    def _checked_out(self, dbapi: sqlite3.Connection, _record: object, _proxy: object) -> None:
        if all(dbapi is not seen for seen in self.connections):
            self.connections.append(dbapi)

    def open_count(self) -> int:
        return sum(1 for conn in self.connections if _is_open(conn))


def _is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1").close()
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return False
    return True


def _in_threads(count: int, work: object) -> list[BaseException]:
    """Run ``work`` in ``count`` threads that are all alive at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run() -> None:
        try:
            work()  # type: ignore[operator]
            barrier.wait(timeout=30)
        except BaseException as exc:  # reported to the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_a_file_holds_connections_per_thread_and_memory_shares_its_one(engine: Engine) -> None:
    """A new connection to ``sqlite://`` would be a new, empty database."""
    assert Statements(engine).holds_connections
    memory = open_engine("sqlite://")
    try:
        assert not Statements(memory).holds_connections
    finally:
        memory.dispose()


def test_more_threads_than_pool_slots_all_work_at_once(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    """Held connections are detached from the pool: were they not, the
    sixteenth thread would wait ``pool_timeout`` and fail."""
    stored = a_connection()
    repository.add(stored)

    def look_up() -> None:
        assert repository.get_by_hash(stored.token_hash) == stored

    assert _in_threads(POOL_SLOTS + 5, look_up) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_each_thread_uses_its_own_connection_and_it_closes_when_the_thread_ends(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    opened = Opened(engine)
    stored = a_connection()
    repository.add(stored)  # the main thread's connection
    assert len(opened.connections) == 1

    def look_up() -> None:
        for _ in range(3):  # the same connection every time in one thread
            assert repository.get_by_hash(stored.token_hash) == stored

    assert _in_threads(4, look_up) == []
    assert len(opened.connections) == 5
    gc.collect()
    assert opened.open_count() == 1  # the four threads' closed with them; main's is alive


def test_dispose_closes_every_held_connection_and_the_next_call_reopens(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    opened = Opened(engine)
    stored = a_connection()
    repository.add(stored)
    assert opened.open_count() == 1
    engine.dispose()
    assert opened.open_count() == 0
    assert repository.get_by_hash(stored.token_hash) == stored
    assert opened.open_count() == 1


def test_dropping_the_repository_closes_its_connection(engine: Engine) -> None:
    opened = Opened(engine)
    repository = SqlConsoleConnectionRepository(Statements(engine))
    repository.add(a_connection())
    assert opened.open_count() == 1
    del repository
    gc.collect()
    assert opened.open_count() == 0


def test_a_rejected_duplicate_leaves_no_write_lock_behind(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    """The failed insert's transaction is rolled back: otherwise it keeps
    SQLite's write lock and every other writer waits out its busy timeout."""
    stored = a_connection()
    repository.add(stored)
    with pytest.raises(InvalidRequest, match="already stored"):
        repository.add(stored)
    other = sqlite3.connect(engine.url.database or "", timeout=0.2)
    try:
        other.execute("DELETE FROM console_connections WHERE token_hash = 'x'")
        other.commit()  # raises "database is locked" if the lock were still held
    finally:
        other.close()
    repository.add(a_connection())  # and the same thread writes on


def test_a_broken_connection_is_one_typed_failure_then_replaced(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    opened = Opened(engine)
    stored = a_connection()
    repository.add(stored)
    opened.connections[0].close()  # under the driver's feet
    with pytest.raises(BackendUnavailable, match=r"sqlite3\.ProgrammingError"):
        repository.get_by_hash(stored.token_hash)
    assert repository.get_by_hash(stored.token_hash) == stored
    assert len(opened.connections) == 2


def _child_reads_and_writes(
    repository: SqlConsoleConnectionRepository, token_hash: str, opened: Opened, result: object
) -> None:
    """Report whether the child found the row, and on how many connections
    of its own (it inherited the parent's one)."""
    stored = repository.get_by_hash(token_hash)
    repository.add(a_connection())
    result.put((stored is not None, len(opened.connections) - 1))  # type: ignore[attr-defined]


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)"
)
def test_a_forked_child_opens_its_own_connection_and_spares_the_parents(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    opened = Opened(engine)
    stored = a_connection()
    repository.add(stored)
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(
        target=_child_reads_and_writes, args=(repository, stored.token_hash, opened, result)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert result.get(timeout=5) == (True, 1)
    # the parent's connection was neither used nor closed by the child
    assert opened.open_count() == 1
    assert repository.get_by_hash(stored.token_hash) == stored
    repository.add(a_connection())


def test_dispose_during_a_call_lets_it_finish_then_closes_its_connection(
    engine: Engine, repository: SqlConsoleConnectionRepository
) -> None:
    """An insert waits out another writer's lock (the busy timeout) while
    the engine is disposed: it still commits, and its connection is closed
    when it returns, not under it."""
    opened = Opened(engine)
    repository.add(a_connection())  # the main thread's connection, closed at once below
    writer = sqlite3.connect(engine.url.database or "", isolation_level=None)
    stored = a_connection()
    try:
        with ThreadPoolExecutor(1) as threads:
            threads.submit(repository.get_by_hash, stored.token_hash).result()  # opens its own
            writer.execute("BEGIN IMMEDIATE")  # SQLite's one write lock
            insert = threads.submit(repository.add, stored)
            time.sleep(0.3)
            assert not insert.done()
            engine.dispose()  # (probing the waiting call's connection would disturb it)
            writer.execute("COMMIT")
            insert.result(timeout=10)
            gc.collect()
            assert opened.open_count() == 0
    finally:
        writer.close()
    assert repository.get_by_hash(stored.token_hash) == stored
