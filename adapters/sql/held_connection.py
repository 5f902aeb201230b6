"""The hot path on a server database: one connection kept out of the pool,
used by whichever thread finds it free; the others go through the pool.

Between two round trips the client process sleeps and the server runs,
often on the same core, so the pool's checkout and return (about 60 Python
calls) run on cold caches: 15-30 us of CPU per call, a tenth of a
PostgreSQL insert (``python -m bench --backend postgresql``). A console
proxy or compute API is mostly one caller at a time per process, and that
caller keeps one connection here instead. Contended calls fall back to
the pool, so the engine still serves as many threads as its pool allows
and at most one connection is added to it.

The held connection gets the same liveness rule as a pooled one at
checkout (``engine.connection_alive``: a socket poll, a ping only when the
server has written or closed), before every call. Any driver error but a
rejected duplicate closes it and the next call opens a fresh one, so a
restarted server costs at most the one call that was in flight. A forked
child opens its own (``driver.Detached``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import DBAPICursor

from console_auth.domain import BackendUnavailable

from .driver import Detached, PooledDriver, Prepared, autocommits, close_on_dispose, conflict
from .engine import checks_sockets, connection_alive
from .errors import describe


class HeldConnectionDriver:
    """``Driver`` for PostgreSQL and MariaDB/MySQL engines from ``open_engine``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._dbapi = engine.dialect.loaded_dbapi
        self._pooled = PooledDriver(engine)
        self._lock = threading.Lock()
        self._held: Detached | None = None
        self._cursor: DBAPICursor | None = None
        close_on_dispose(engine, self.close)

    @staticmethod
    def suits(engine: Engine) -> bool:
        """A server engine whose connections ``connection_alive`` can check
        without a round trip; with ``pool_pre_ping`` the caller asked for a
        ping per call, which the pool does."""
        return checks_sockets(engine)

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        if not self._lock.acquire(blocking=False):
            return self._pooled.fetch_one(statement, params)
        try:
            cursor = self._checked_cursor()
            cursor.execute(statement.sql, statement.bind(params))
            return cast(Sequence[Any] | None, cursor.fetchone())
        except self._dbapi.Error as exc:
            raise self._fault(exc) from exc
        except BaseException:
            self.close()
            raise
        finally:
            self._lock.release()

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        if not self._lock.acquire(blocking=False):
            return self._pooled.write(statement, params, on_conflict=on_conflict)
        try:
            cursor = self._checked_cursor()
            cursor.execute(statement.sql, statement.bind(params))
            count = int(cursor.rowcount)
            held = cast(Detached, self._held)
            if not autocommits(self._dialect, held.dbapi_connection):
                held.dbapi_connection.commit()
            return count
        except self._dbapi.IntegrityError as exc:
            self._roll_back()
            raise conflict(exc, on_conflict) from exc
        except self._dbapi.Error as exc:
            raise self._fault(exc) from exc
        except BaseException:
            self.close()
            raise
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the held connection (also on ``engine.dispose()``); the next
        call opens another."""
        self._cursor = self._held = None

    def _checked_cursor(self) -> DBAPICursor:
        """The held connection's cursor, after the liveness check; a fresh
        connection if there was none or it died."""
        held, cursor = self._held, self._cursor
        if (
            held is not None
            and cursor is not None
            and held.usable()
            and connection_alive(self._dialect, held.dbapi_connection)
        ):
            return cursor
        self.close()
        held = Detached(self._engine)
        self._held, self._cursor = held, held.dbapi_connection.cursor()
        return self._cursor

    def _fault(self, exc: Exception) -> BackendUnavailable:
        self.close()
        return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")

    def _roll_back(self) -> None:
        """Outside autocommit a failed statement leaves a transaction open."""
        held = self._held
        if held is None or autocommits(self._dialect, held.dbapi_connection):
            return
        try:
            held.dbapi_connection.rollback()
        except self._dbapi.Error:
            self.close()
