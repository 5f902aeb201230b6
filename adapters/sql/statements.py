"""The one way this adapter runs SQL: ``Statements``, one per engine, with one error map,
duplicate rule, transaction rule and retry rule (ARCHITECTURE.md, "The hot path is lean")."""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Literal, TypeVar, cast

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from console_auth.domain import BackendUnavailable, InvalidRequest

from .engine import HOLDABLE, connection_alive

logger = logging.getLogger(__name__)
_R = TypeVar("_R")

DUPLICATE_HASH: Final = "a connection with this token hash is already stored"
WRITE_ATTEMPTS: Final = 4
"""Runs of work the server rolled back as a deadlock victim."""
RETRY_PAUSE_S: Final = 0.02
"""First pause between runs, doubled and jittered so colliders part."""
RETRYABLE_CODES: Final[frozenset[object]] = frozenset({1213, "40P01", "40001"})
"""InnoDB's deadlock victim (not 1205, a lock wait already as long as ``io_timeout``);
PostgreSQL's deadlock detected and serialization failure."""
POSTGRESQL_BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
"""As MariaDB's sessions (``engine.MYSQL_SESSION_ISOLATION``): no gap locks;
each unit of work re-checks its conditions in its writes."""
MYSQL_BEGIN: Final = "START TRANSACTION"


class Prepared:
    """A Core statement compiled once for one engine's dialect and paramstyle."""

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {type(statement).__name__}")
        self.sql = compiled.string
        names = compiled.positiontup if compiled.positional else None
        self.bind: Callable[[Mapping[str, Any]], Mapping[str, Any] | tuple[Any, ...]] = (
            _identity if names is None else _positional(names)
        )


def _identity(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return params


def _positional(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The parameters in compiled order: ``itemgetter``, the cheapest, but not for one name."""
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    if not names:
        return lambda _params: ()
    return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], operator.itemgetter(*names))


class _Held:
    """Opened through the pool (its listeners set pragmas and bounds), then detached;
    closed with its last reference (a call in flight keeps it), only by its process."""

    __slots__ = ("__weakref__", "cursor", "dbapi")

    def __init__(self, engine: Engine, *, keep_cursor: bool) -> None:
        connection = engine.raw_connection()
        try:
            connection.detach()
            self.dbapi: Any = connection.dbapi_connection
            self.cursor: DBAPICursor | None = connection.cursor() if keep_cursor else None
        except BaseException:
            connection.close()
            raise
        weakref.finalize(self, _close_in, os.getpid(), connection)


def _close_in(pid: int, connection: PoolProxiedConnection) -> None:
    if os.getpid() == pid:
        with contextlib.suppress(Exception):
            connection.close()


class _PerThread(threading.local):
    """Each thread holds its own connection (a SQLite file)."""

    held: _Held | None = None

    def take(self) -> _Held | Literal[False] | None:
        """The held connection; ``None``: open one; ``False``: use the pool."""
        return self.held

    def keep(self, held: _Held | None) -> None:
        self.held = held

    def give_back(self) -> None:
        return None


class _Shared:
    """One connection for whichever thread finds it free (a server engine)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: _Held | None = None

    def take(self) -> _Held | Literal[False] | None:
        return self._held if self._lock.acquire(blocking=False) else False

    def keep(self, held: _Held | None) -> None:
        self._held = held

    def give_back(self) -> None:
        self._lock.release()


class Statements:
    """Runs SQL on one engine; safe for threads. Its owner (the container,
    a test's fixture) closes it; ``engine.dispose()`` closes it too."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect: Dialect = engine.dialect
        dbapi = engine.dialect.loaded_dbapi
        self._fault: type[Exception] = dbapi.Error
        self._duplicate: type[Exception] = dbapi.IntegrityError
        self._server = engine.dialect.name != "sqlite"
        self._holder = _holder_for(engine)
        self._pid = os.getpid()
        self._inherited: list[object] = []  # a forked child's parent's: never used nor closed
        event.listen(engine, "engine_disposed", _closer(weakref.ref(self)))

    @property
    def holds_connections(self) -> bool:
        return self._holder is not None

    def fetch_one(self, statement: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        return cast(Sequence[Any] | None, self._call(statement, params, None, read=True))

    def write(
        self, statement: Prepared, params: Mapping[str, Any], *, on_conflict: str | None = None
    ) -> int:
        """The rows one committed statement changed; ``on_conflict`` turns a
        duplicate key into that ``InvalidRequest``."""
        call = self._call
        return cast(int, retry_rolled_back(lambda: call(statement, params, on_conflict)))

    def run(self, work: Callable[[Connection], _R], *, on_conflict: str | None = None) -> _R:
        """``work`` in one transaction on a pooled connection (Core)."""

        def once() -> _R:
            with (
                mapped_errors(self.engine, on_conflict=on_conflict),
                transaction(self.engine) as connection,
            ):
                return work(connection)

        return retry_rolled_back(once)

    def close(self) -> None:
        """Let go of the held connections; the next call opens another."""
        if self._holder is not None:
            self._holder = type(self._holder)()

    def _call(
        self,
        statement: Prepared,
        params: Mapping[str, Any],
        on_conflict: str | None,
        *,
        read: bool = False,
    ) -> Any:
        if self._pid != os.getpid():
            self._forked()
        holder = self._holder
        held = False if holder is None else holder.take()
        if held is False or holder is None:
            return self._pooled(statement, params, on_conflict, read)
        try:
            if held is None or (self._server and not self._alive(held)):
                holder.keep(None)
                with mapped_errors(self.engine):
                    held = _Held(self.engine, keep_cursor=self._server)
                holder.keep(held)
            return self._execute(held.dbapi, held.cursor, statement, params, on_conflict, read)
        except InvalidRequest:  # a rejected duplicate keeps its connection
            raise
        except BaseException:
            holder.keep(None)
            raise
        finally:
            holder.give_back()

    def _alive(self, held: _Held) -> bool:
        try:
            return connection_alive(self._dialect, held.dbapi)
        except self._fault as exc:
            raise unavailable(exc) from exc

    def _pooled(
        self, statement: Prepared, params: Mapping[str, Any], on_conflict: str | None, read: bool
    ) -> Any:
        with mapped_errors(self.engine):
            connection = self.engine.raw_connection()
        try:
            return self._execute(connection, None, statement, params, on_conflict, read)
        except InvalidRequest:
            raise
        except BaseException:
            connection.invalidate()
            raise
        finally:
            connection.close()  # back to the pool; rolled back there if left open

    def _execute(
        self,
        connection: Any,
        kept: DBAPICursor | None,
        statement: Prepared,
        params: Mapping[str, Any],
        on_conflict: str | None,
        read: bool,
    ) -> Any:
        cursor = kept
        try:
            if cursor is None:
                cursor = connection.cursor()
            cursor.execute(statement.sql, statement.bind(params))
            if read:
                return cursor.fetchone()
            count = int(cursor.rowcount)
            if not autocommits(self._dialect, connection):
                connection.commit()
            return count
        except self._duplicate as exc:
            if on_conflict is None:
                raise unavailable(exc) from exc
            if not autocommits(self._dialect, connection):
                connection.rollback()  # else a failed SQLite insert keeps the write lock
            raise InvalidRequest(on_conflict) from exc
        except self._fault as exc:
            raise unavailable(exc) from exc
        finally:
            if kept is None and cursor is not None:  # an open SQLite cursor keeps its snapshot
                cursor.close()

    def _forked(self) -> None:
        """Closing a parent's connection would end the parent's session."""
        self._inherited.append(self._holder)
        self.close()
        self._pid = os.getpid()


def _holder_for(engine: Engine) -> _PerThread | _Shared | None:
    """Not an in-memory database (one shared connection) nor a server engine
    that may sit in a transaction or wants a ping per call (``engine.HOLDABLE``)."""
    if engine.dialect.name == "sqlite":
        return _PerThread() if type(engine.pool) is QueuePool else None
    return _Shared() if engine.get_execution_options().get(HOLDABLE) else None


def _closer(statements: weakref.ref[Statements]) -> Callable[[Engine], None]:
    def close(_engine: Engine) -> None:
        alive = statements()
        if alive is not None:
            alive.close()

    return close


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in one transaction; an autocommitting one runs its own BEGIN,
    as switching its isolation level back at check-in is a round trip outside every error map."""
    with engine.connect() as connection:
        if not autocommits(connection.dialect, connection.connection.dbapi_connection):
            with connection.begin():
                yield connection
            return
        postgresql = connection.dialect.name == "postgresql"
        connection.exec_driver_sql(POSTGRESQL_BEGIN if postgresql else MYSQL_BEGIN)
        try:
            yield connection
            connection.exec_driver_sql("COMMIT")
        except BaseException:
            if not connection.invalidated:  # the pool does not roll back an autocommitting one
                try:
                    connection.exec_driver_sql("ROLLBACK")
                except Exception:
                    with contextlib.suppress(Exception):
                        connection.invalidate()
            raise


def autocommits(dialect: Dialect, dbapi_connection: Any) -> bool:
    """No round trip: psycopg keeps a flag, PyMySQL reads the last reply's status."""
    if dialect.name == "sqlite":
        return False
    try:
        return bool(dialect.detect_autocommit_setting(dbapi_connection))
    except NotImplementedError:
        return False


@contextmanager
def mapped_errors(engine: Engine, *, on_conflict: str | None = None) -> Iterator[None]:
    """SQLAlchemy's and the driver's errors inside the block as ours."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        if on_conflict is not None:
            raise InvalidRequest(on_conflict) from exc
        raise unavailable(exc) from exc
    except (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
        raise unavailable(exc) from exc
    except engine.dialect.loaded_dbapi.Error as exc:  # raw where SQLAlchemy does not wrap
        raise unavailable(exc) from exc


def unavailable(exc: BaseException) -> BackendUnavailable:
    """By class and driver code only: driver messages may quote values."""
    return BackendUnavailable(f"SQL token store unavailable: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """E.g. ``sqlite3.OperationalError SQLITE_BUSY``, wrapped or raw."""
    orig = _driver_error(exc)
    if orig is None:
        return type(exc).__name__
    name = f"{type(orig).__module__}.{type(orig).__qualname__}"
    code = _code(orig)
    return name if code is None else f"{name} {code}"


def is_retryable(exc: BaseException | None) -> bool:
    """Whether the server rolled the work back whole to break a deadlock."""
    orig = None if exc is None else _driver_error(exc)
    return orig is not None and _code(orig) in RETRYABLE_CODES


def _driver_error(exc: BaseException) -> BaseException | None:
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.orig
    return None if isinstance(exc, sa_exc.SQLAlchemyError) else exc


def _code(orig: BaseException) -> object:
    """MySQL/MariaDB drivers: the server's errno; SQLite's error name; else the SQLSTATE."""
    if orig.args and isinstance(orig.args[0], int):
        return orig.args[0]
    return getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)


def retry_rolled_back(write: Callable[[], _R]) -> _R:
    """Not a lost connection: an insert may have committed before the answer was lost."""
    for attempt in range(1, WRITE_ATTEMPTS):
        try:
            return write()
        except BackendUnavailable as exc:
            if not is_retryable(exc.__cause__):
                raise
            pause = RETRY_PAUSE_S * 2 ** (attempt - 1) * (0.5 + random.random())  # noqa: S311
            logger.warning(
                "SQL token store rolled a write back (%s); attempt %d of %d in %.0f ms",
                exc,
                attempt + 1,
                WRITE_ATTEMPTS,
                pause * 1000,
            )
            time.sleep(pause)
    return write()  # the last run: its fault is the caller's
