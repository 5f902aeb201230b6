"""The hot path on a SQLite file: one connection per thread, held, no pool.

SQLite works in-process, so checking a connection out of SQLAlchemy's pool
and back in (and the reset on return) is the largest cost left between this
library and plain ``sqlite3`` (ARCHITECTURE.md, "The hot path is lean"). A
file database has no server to run out
of connections and nothing to drop them, so each thread keeps its own
(``driver.Detached``: pragmas set, no pool slot taken).

It is closed when its thread ends, when the engine is disposed, when the
driver is dropped, or after any driver error (the next call opens a fresh
one). A forked child opens its own. Purge and migrations keep using the
pool.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import QueuePool

from console_auth.domain import BackendUnavailable

from .driver import Detached, Prepared, close_on_dispose, conflict
from .errors import describe


class SqliteThreadDriver:
    """``Driver`` for a SQLite file; safe for threads, each uses its own connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dbapi = engine.dialect.loaded_dbapi
        self._threads = threading.local()
        close_on_dispose(engine, self)

    @staticmethod
    def suits(engine: Engine) -> bool:
        """A SQLite file on its default pool. An in-memory database is one
        shared connection (a new one would be a new, empty database), and a
        pool the caller chose is kept."""
        return engine.dialect.name == "sqlite" and type(engine.pool) is QueuePool

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        held = self._connection()  # the local keeps it open through ``close``
        conn = held.dbapi_connection
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
        held = self._connection()
        conn = held.dbapi_connection
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

        Dropping the thread-local store drops each thread's ``Detached``,
        which closes its connection: at once if idle, else when the call
        using it ends, in that call's thread."""
        self._threads = threading.local()

    def _connection(self) -> Detached:
        held: Detached | None = getattr(self._threads, "held", None)
        if held is None or not held.usable():
            held = self._threads.held = Detached(self._engine)
        return held

    def _drop(self) -> None:
        """Close this thread's connection; the next call opens a fresh one."""
        self._threads.held = None

    def _roll_back(self, conn: DBAPIConnection) -> None:
        """End the transaction a failed write left open; drop what cannot."""
        try:
            conn.rollback()
        except self._dbapi.Error:
            self._drop()


def _unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")
