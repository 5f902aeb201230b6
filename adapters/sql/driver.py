"""Hot-path statements run on the driver's cursor, through SQLAlchemy's pool.

A token lookup or insert is one short statement; Core's per-call execution
context costs several times the database's own work for it (measured in
``bench/``). Statements are still written in Core and compiled once per
engine for its dialect, and connections still come from the engine's pool,
so the checkout liveness check, invalidation and reset-on-return keep
working. Driver errors are mapped here as ``errors.mapped_errors`` maps
Core's.

Paramstyles: psycopg and PyMySQL both take named ``%(name)s`` parameters and
a mapping; SQLite's ``?`` and other positional styles get a tuple in the
compiled order. On server engines the connection autocommits (see
``engine``), so a statement here is its own transaction and ``commit`` costs
nothing; on an engine built without autocommit the commit is real, and
anything left open is rolled back when the pool takes the connection back.
The repository uses it where neither ``sqlite_threads`` (SQLite files)
nor ``held_connection`` (PostgreSQL, MariaDB) applies, and those two fall
back to it.
"""

from __future__ import annotations

import operator
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, cast

from sqlalchemy import Engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from console_auth.domain import BackendUnavailable, InvalidRequest

from .errors import describe, mapped_errors


class Prepared:
    """A Core statement compiled once for one engine's dialect and paramstyle."""

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {type(statement).__name__}")
        self.sql = compiled.string
        self._values = _positional(compiled.positiontup) if compiled.positional else None

    def bind(self, params: Mapping[str, Any]) -> Mapping[str, Any] | tuple[Any, ...]:
        return params if self._values is None else self._values(params)


def _positional(names: Sequence[str] | None) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The parameters in compiled order; ``itemgetter`` is the cheapest way,
    but returns a bare value for one name."""
    if not names:
        return lambda _params: ()
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], operator.itemgetter(*names))


class Driver(Protocol):
    """How the repository runs one statement; one per engine."""

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row the statement reads, or ``None``."""
        ...

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        """Run and commit one statement; the rows it changed.

        ``on_conflict`` turns an integrity error into that ``InvalidRequest``;
        without it, like every other driver fault, it is ``BackendUnavailable``.
        """
        ...


class PooledDriver:
    """Each call checks a connection out of the engine's pool and back in."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._dbapi = engine.dialect.loaded_dbapi
        self._keep_cursors = engine.dialect.name != "sqlite"

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        conn = checkout(self._engine)
        try:
            cursor = self._cursor(conn)
            try:
                cursor.execute(statement.sql, statement.bind(params))
                return cast(Sequence[Any] | None, cursor.fetchone())
            except BaseException:
                conn.info.pop(_CURSOR, None)
                raise
            finally:
                if not self._keep_cursors:
                    cursor.close()
        except self._dbapi.Error as exc:
            raise _unavailable(self._dialect, conn, exc) from exc
        finally:
            conn.close()  # back to the pool

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        conn = checkout(self._engine)
        try:
            cursor = self._cursor(conn)
            try:
                cursor.execute(statement.sql, statement.bind(params))
                count = int(cursor.rowcount)
                if not autocommits(self._dialect, conn.dbapi_connection):
                    conn.commit()
                return count
            except BaseException:
                conn.info.pop(_CURSOR, None)
                raise
            finally:
                if not self._keep_cursors:
                    cursor.close()
        except self._dbapi.IntegrityError as exc:
            raise conflict(exc, on_conflict) from exc
        except self._dbapi.Error as exc:
            raise _unavailable(self._dialect, conn, exc) from exc
        finally:
            conn.close()  # back to the pool; rolled back there if left open

    def _cursor(self, conn: PoolProxiedConnection) -> DBAPICursor:
        return _kept_cursor(conn) if self._keep_cursors else conn.cursor()


class Detached:
    """A connection opened through the pool, then detached from it.

    Opened through the pool so that the engine's ``connect`` and
    ``checkout`` listeners run (SQLite pragmas, the liveness check);
    detached so that holding it takes none of the pool's slots. It is
    closed when the last reference to this goes, by the process that opened
    it only: a forked child must neither use nor close its parent's
    connection (SQLite forbids it; closing a server connection would end
    the parent's session).
    """

    def __init__(self, engine: Engine) -> None:
        conn = checkout(engine)
        try:
            conn.detach()
        except BaseException:
            conn.close()
            raise
        dbapi_connection = conn.dbapi_connection
        if dbapi_connection is None:  # pragma: no cover - checkout has just opened it
            raise BackendUnavailable("SQL token store handed out a closed connection")
        self.dbapi_connection: DBAPIConnection = dbapi_connection
        self.pid = os.getpid()
        weakref.finalize(self, _close_in, self.pid, conn)

    def usable(self) -> bool:
        """Whether this process opened it (and so may use it)."""
        return self.pid == os.getpid()


def _close_in(pid: int, conn: PoolProxiedConnection) -> None:
    if os.getpid() == pid:
        conn.close()
    else:  # kept from garbage collection too, whose cleanup might close it
        _INHERITED.append(conn)


_INHERITED: Final[list[PoolProxiedConnection]] = []
"""Connections a forked child inherited and dropped: never touched again."""


class Closeable(Protocol):
    def close(self) -> None: ...


def close_on_dispose(engine: Engine, holder: Closeable) -> None:
    """Call ``holder.close()`` on ``engine.dispose()``, for as long as
    ``holder`` lives (it is held weakly). One listener per engine, however
    many holders come and go."""
    with _HOLDERS_LOCK:
        holders = _HOLDERS.get(engine)
        if holders is None:
            holders = _HOLDERS[engine] = weakref.WeakSet()
            event.listen(engine, "engine_disposed", _close_holders)
        holders.add(holder)


def _close_holders(engine: Engine) -> None:
    with _HOLDERS_LOCK:
        holders = list(_HOLDERS.get(engine, ()))
    for holder in holders:
        holder.close()


_HOLDERS: Final[weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Closeable]]] = (
    weakref.WeakKeyDictionary()
)
_HOLDERS_LOCK: Final = threading.Lock()


def checkout(engine: Engine) -> PoolProxiedConnection:
    """A pooled connection, or ``BackendUnavailable``."""
    with mapped_errors():  # the pool's own errors (a checkout timeout) come wrapped
        try:
            return engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as exc:  # a failed first connect comes raw
            raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc


def conflict(exc: Exception, on_conflict: str | None) -> InvalidRequest | BackendUnavailable:
    """An integrity error as ``write`` reports it."""
    if on_conflict is None:
        return BackendUnavailable(f"SQL token store refused a write: {describe(exc)}")
    return InvalidRequest(on_conflict)


def _unavailable(
    dialect: Dialect, conn: PoolProxiedConnection, exc: Exception
) -> BackendUnavailable:
    """A driver fault as ours; a disconnect also drops the pooled connection."""
    if dialect.is_disconnect(exc, conn.dbapi_connection, None):  # type: ignore[arg-type]
        conn.invalidate(exc)
    return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")


_CURSOR: Final = "console_auth.driver_cursor"


def _kept_cursor(conn: PoolProxiedConnection) -> DBAPICursor:
    """One cursor per pooled connection, kept in the pool's per-connection
    ``info`` (cleared when the connection is replaced).

    A new psycopg cursor rebuilds its adapters and row loaders
    (ARCHITECTURE.md, "The hot path is lean"). Safe because a pooled
    connection serves one caller at a time, and the cursors of psycopg and
    PyMySQL hold no server state once a result is read. SQLite's are closed
    instead: an unexhausted one would keep its read snapshot, and an
    in-memory database's one connection serves every thread at once.
    """
    kept = conn.info.get(_CURSOR)
    if kept is not None and kept[0] is conn.dbapi_connection:
        return cast(DBAPICursor, kept[1])
    cursor = conn.cursor()
    conn.info[_CURSOR] = (conn.dbapi_connection, cursor)
    return cursor


def autocommits(dialect: Dialect, dbapi_connection: Any) -> bool:
    """Whether the driver connection is in autocommit mode (no round trip:
    psycopg keeps a flag, PyMySQL reads the last reply's status bits)."""
    if dialect.name == "sqlite":
        return False
    try:
        return bool(dialect.detect_autocommit_setting(dbapi_connection))
    except NotImplementedError:
        return False
