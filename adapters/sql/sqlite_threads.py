"""The hot path on a SQLite file: one connection per thread, held, no pool.

SQLite works in-process, so checking a connection out of SQLAlchemy's pool
and back in (and the reset on return) is a fifth of a token insert and a
quarter of a lookup, the largest cost left between this library and plain
``sqlite3`` (``python -m bench``). A file database has no server to run out
of connections and nothing to drop them, so each thread keeps its own
instead: opened through the pool (the engine's ``connect`` listener sets
the pragmas), then detached from it, so it takes none of the pool's slots.

It is closed when its thread ends, when the engine is disposed, when the
driver is dropped, or after any driver error (the next call opens a fresh
one). A child process never touches a connection it inherited by ``fork``:
SQLite forbids carrying one across, so the child opens its own and leaves
the parent's alone. Purge and migrations keep using the pool.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

from console_auth.domain import BackendUnavailable

from .driver import Prepared, checkout, conflict
from .errors import describe


class SqliteThreadDriver:
    """``Driver`` for a SQLite file; safe for threads, each uses its own connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dbapi = engine.dialect.loaded_dbapi
        self._threads = threading.local()
        close_all = weakref.WeakMethod(self.close)
        event.listen(engine, "engine_disposed", lambda _engine: _call(close_all))

    @staticmethod
    def suits(engine: Engine) -> bool:
        """A SQLite file on its default pool. An in-memory database is one
        shared connection (a new one would be a new, empty database), and a
        pool the caller chose is kept."""
        return engine.dialect.name == "sqlite" and type(engine.pool) is QueuePool

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        conn = self._connection()
        try:
            cursor = conn.cursor()
            try:  # closed at once: an open cursor would keep its read snapshot
                cursor.execute(statement.sql, statement.bind(params))
                return cast(Sequence[Any] | None, cursor.fetchone())
            finally:
                cursor.close()
        except self._dbapi.Error as exc:
            self._drop()
            raise _unavailable(exc) from exc
        except BaseException:
            self._drop()
            raise

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        conn = self._connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(statement.sql, statement.bind(params))
                count = int(cursor.rowcount)
            finally:
                cursor.close()
            conn.commit()
            return count
        except self._dbapi.IntegrityError as exc:
            self._roll_back(conn)
            raise conflict(exc, on_conflict) from exc
        except self._dbapi.Error as exc:
            self._drop()
            raise _unavailable(exc) from exc
        except BaseException:  # interrupted between statement and commit
            self._drop()
            raise

    def close(self) -> None:
        """Close every thread's connection (also on ``engine.dispose()``).

        Dropping the thread-local store drops each thread's holder, whose
        finalizer closes its connection. Meant, like ``dispose``, for when
        no call is running; a call in flight then fails as ``BackendUnavailable``.
        """
        self._threads = threading.local()

    def _connection(self) -> DBAPIConnection:
        held: _Held | None = getattr(self._threads, "held", None)
        if held is not None and held.pid == os.getpid():
            return held.dbapi_connection
        conn = checkout(self._engine)
        try:
            conn.detach()
        except BaseException:
            conn.close()
            raise
        held = _Held(conn)
        self._threads.held = held
        return held.dbapi_connection

    def _drop(self) -> None:
        """Close this thread's connection; the next call opens a fresh one."""
        self._threads.held = None

    def _roll_back(self, conn: DBAPIConnection) -> None:
        """End the transaction a failed write left open; drop what cannot."""
        try:
            conn.rollback()
        except self._dbapi.Error:
            self._drop()


class _Held:
    """A thread's connection; closed when the last reference goes, in the
    process that opened it only."""

    def __init__(self, connection: PoolProxiedConnection) -> None:
        dbapi_connection = connection.dbapi_connection
        if dbapi_connection is None:  # pragma: no cover - checkout just opened it
            raise BackendUnavailable("SQL token store handed out a closed connection")
        self.dbapi_connection = dbapi_connection
        self.pid = os.getpid()
        weakref.finalize(self, _close, connection, self.pid)


def _close(connection: PoolProxiedConnection, pid: int) -> None:
    if os.getpid() == pid:
        connection.close()


def _call(method: weakref.WeakMethod[Any]) -> None:
    bound = method()
    if bound is not None:
        bound()


def _unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")
