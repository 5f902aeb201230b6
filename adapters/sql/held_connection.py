"""The hot path on a server database: one connection kept out of the pool,
used by whichever thread finds it free; the others go through the pool.

Between two round trips the client process sleeps and the server runs,
often on the same core, so the pool's checkout and return run on cold
caches (ARCHITECTURE.md, "The hot path is lean"). A console
proxy or compute API is mostly one caller at a time per process, and that
caller keeps one connection here instead. Contended calls fall back to
the pool, so the engine still serves as many threads as its pool allows
and at most one connection is added to it.

The held connection gets the same liveness rule as a pooled one at
checkout (``engine.connection_alive``: a socket poll, a ping only when the
server has written or closed), before every call. Any driver error but a
rejected duplicate closes it and the next call opens a fresh one, so a
restarted server costs at most the one call that was in flight. A forked
child opens its own (``driver.Detached``); one forked while a call held
the connection finds the lock taken for good and uses the pool.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import DBAPICursor

from console_auth.domain import BackendUnavailable

from .driver import Detached, PooledDriver, Prepared, close_on_dispose, conflict
from .engine import connection_alive, holdable
from .errors import describe


class HeldConnectionDriver:
    """``Driver`` for PostgreSQL and MariaDB/MySQL engines from ``open_engine``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._dbapi = engine.dialect.loaded_dbapi
        self._pooled = PooledDriver(engine)
        self._lock = threading.Lock()
        """Taken without waiting: whoever does not get it uses the pool."""
        self._held: tuple[Detached, DBAPICursor] | None = None
        close_on_dispose(engine, self)

    @staticmethod
    def suits(engine: Engine) -> bool:
        """A server engine that autocommits and polls sockets on checkout
        (``engine.holdable``): not with ``pool_pre_ping`` (a ping per call
        was asked for, which the pool does) or another isolation level."""
        return holdable(engine)

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        if not self._lock.acquire(blocking=False):
            return self._pooled.fetch_one(statement, params)
        try:
            _held, cursor = self._checked()  # the local keeps the connection open
            cursor.execute(statement.sql, statement.bind(params))
            return cast(Sequence[Any] | None, cursor.fetchone())
        except self._dbapi.Error as exc:
            raise self._fault(exc) from exc
        except BaseException:
            self._held = None
            raise
        finally:
            self._lock.release()

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        """One autocommitted statement: nothing to commit or roll back."""
        if not self._lock.acquire(blocking=False):
            return self._pooled.write(statement, params, on_conflict=on_conflict)
        try:
            _held, cursor = self._checked()
            cursor.execute(statement.sql, statement.bind(params))
            return int(cursor.rowcount)
        except self._dbapi.IntegrityError as exc:
            raise conflict(exc, on_conflict) from exc
        except self._dbapi.Error as exc:
            raise self._fault(exc) from exc
        except BaseException:
            self._held = None
            raise
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the held connection (also on ``engine.dispose()``): now if
        no call is using it, else when that call ends, since the call holds
        its own reference (closing it under a running statement would pull
        the socket away). The next call opens another."""
        self._held = None

    def _checked(self) -> tuple[Detached, DBAPICursor]:
        """The held connection and its cursor, after the liveness check; a
        fresh connection if there was none or it died."""
        held = self._held
        if (
            held is not None
            and held[0].usable()
            and connection_alive(self._dialect, held[0].dbapi_connection)
        ):
            return held
        self._held = None
        connection = Detached(self._engine)
        held = self._held = (connection, connection.dbapi_connection.cursor())
        return held

    def _fault(self, exc: Exception) -> BackendUnavailable:
        self._held = None
        return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")
