"""Engines, one per database (a cell each), configured so SQL never leaks a value.

Why servers autocommit, bound every wait and poll sockets: ARCHITECTURE.md,
"Server databases: one round trip per call, bounded waits".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from console_auth.domain import BackendUnavailable, InvalidRequest

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

JOURNAL_MODE_PRAGMA: Final = "PRAGMA journal_mode=WAL"
SQLITE_PRAGMAS: Final[tuple[str, ...]] = (
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",  # before journal_mode, which may wait for a lock
    JOURNAL_MODE_PRAGMA,  # readers never block the writer (file databases only)
    "PRAGMA synchronous=NORMAL",  # with WAL: durable across crashes, not power loss
)
"""Applied to every SQLite connection, in order (and by the benchmark's raw floor)."""

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_IO_TIMEOUT: Final = 5.0
DEFAULT_POOL_TIMEOUT: Final = 5.0
"""Seconds: far above a healthy server's milliseconds, under a proxy user's patience."""
CLIENT_GRACE_S: Final = 1.0
"""Seconds the client waits past ``io_timeout``: a live server reports its own bound first."""
WATCHDOG_TICK_S: Final = 0.25
"""How often the PostgreSQL watchdog looks for statements past their deadline."""

POSTGRESQL_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""A peer gone without a word (host down, NAT state lost) errors within about a minute."""

MYSQL_SESSION_ISOLATION: Final = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
"""As PostgreSQL: no gap locks (ARCHITECTURE.md). Needs ``binlog_format`` ROW or MIXED (the
default); with STATEMENT (error 1665 on writes) pass ``connect_args={"init_command": ""}``."""

HOLDABLE: Final = "console_auth_holdable"
"""An execution option: connections that autocommit and get the socket poll may be held."""

_SERVER_DRIVERS: Final = {("postgresql", "psycopg"), ("mysql", "pymysql"), ("mariadb", "pymysql")}
"""Whose timeouts and socket this module knows; others get SQLAlchemy's defaults."""


def open_engine(
    url: str,
    *,
    auto_migrate: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    io_timeout: float | None = DEFAULT_IO_TIMEOUT,
    **engine_options: Any,
) -> Engine:
    """Create the engine for ``url``; with ``auto_migrate``, upgrade the schema.

    ``engine_options`` go to ``create_engine`` and win over the defaults chosen here.
    """
    parsed = _parse(url)
    given = engine_options.get("connect_args", {})
    sqlite = parsed.get_backend_name() == "sqlite"
    server = (parsed.get_backend_name(), _driver_name(parsed)) in _SERVER_DRIVERS
    if sqlite:
        defaults = _sqlite_defaults(parsed, given)
    elif server:
        defaults = _server_defaults(parsed, given, connect_timeout, io_timeout)
    else:
        defaults = {"pool_pre_ping": True, "connect_args": given}
    options = {**defaults, **engine_options, "connect_args": defaults["connect_args"]}
    options["hide_parameters"] = True  # else bound values reach error texts and echo logs
    try:
        engine = create_engine(parsed, **options)
    except sa_exc.NoSuchModuleError:
        raise InvalidRequest(f"SQLAlchemy has no dialect {parsed.drivername!r}") from None
    except ImportError as exc:
        raise InvalidRequest(f"database driver {exc.name!r} is not installed") from None
    except sa_exc.ArgumentError as exc:  # names options, never the URL
        raise InvalidRequest(f"invalid engine options: {exc}") from None
    if sqlite:
        _listen_sqlite(engine, parsed)
    elif server:
        _listen_server(engine, options, io_timeout)
    if auto_migrate:
        from .migrate import upgrade  # Alembic is imported only by those who migrate

        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _listen_sqlite(engine: Engine, url: URL) -> None:
    """Pragmas on every connection; a new database file created 0600."""
    memory = _is_memory(url)
    pragmas = [p for p in SQLITE_PRAGMAS if not (memory and p == JOURNAL_MODE_PRAGMA)]
    event.listen(engine, "connect", _session_setup(pragmas))
    if not memory and not url.query.get("uri"):
        path = url.database or ""

        def create(*_args: Any) -> None:  # a missing file 0600, not the umask's mode
            with contextlib.suppress(OSError):  # it exists; or sqlite3 will say why it cannot
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

        event.listen(engine, "do_connect", create)


def _listen_server(engine: Engine, options: dict[str, Any], io_timeout: float | None) -> None:
    """MariaDB's session bounds, and the socket poll instead of a pre-ping."""
    dialect = engine.dialect
    if dialect.name != "postgresql" and io_timeout is not None:
        # only MariaDB runs /*M! */: MySQL lacks max_statement_time
        seconds = max(1, math.ceil(io_timeout))
        bounds = (
            f"SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"
            f" /*M! , max_statement_time = {io_timeout:.3f} */"
        )
        event.listen(engine, "connect", _session_setup([bounds]))
    if not options["pool_pre_ping"]:

        def check(dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any) -> None:
            # InvalidatePoolError: SQLAlchemy's documented way to drop this and
            # every older connection and hand out a fresh one
            if not connection_alive(dialect, dbapi_connection):
                raise sa_exc.InvalidatePoolError("the server closed the pooled connection")

        event.listen(engine, "checkout", check)
        if options["isolation_level"] == "AUTOCOMMIT":
            engine.update_execution_options(**{HOLDABLE: True})


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # from None: the text of the error quotes the URL, password included
        raise InvalidRequest("database URL is not a valid SQLAlchemy URL") from None


def _driver_name(url: URL) -> str:
    """The URL's driver, or the dialect's default one; empty for an unknown dialect
    (``create_engine`` then says so)."""
    try:
        return url.get_driver_name()
    except sa_exc.NoSuchModuleError:
        return ""


def _sqlite_defaults(url: URL, given: dict[str, Any]) -> dict[str, Any]:
    """No pre-ping: a file cannot drop a connection. An in-memory database dies
    with its connection, so every thread shares one (for tests and tools)."""
    if _is_memory(url):
        connect_args = {"check_same_thread": False, **given}
        return {"pool_pre_ping": False, "poolclass": StaticPool, "connect_args": connect_args}
    if not url.query.get("uri"):
        directory = os.path.dirname(os.path.abspath(url.database or ""))
        if not os.path.isdir(directory):  # a typo must not start an empty store elsewhere
            raise BackendUnavailable(f"SQLite database directory {directory} does not exist")
    return {"pool_pre_ping": False, "connect_args": given}


def _server_defaults(
    url: URL, given: dict[str, Any], connect_timeout: float, io_timeout: float | None
) -> dict[str, Any]:
    """Autocommit, bounded waits, and the socket poll instead of a pre-ping. The URL's
    query and ``given`` connect_args win; a PostgreSQL ``options`` there is appended."""
    postgresql = url.get_backend_name() == "postgresql"
    driver: dict[str, Any]
    if postgresql:  # libpq takes whole seconds, and treats anything under 2 as 2
        driver = {"connect_timeout": max(2, round(connect_timeout)), **POSTGRESQL_KEEPALIVES}
        if io_timeout is not None:
            driver["tcp_user_timeout"] = round(io_timeout * 1000)
            driver["cursor_factory"] = _bounded_cursor(io_timeout + CLIENT_GRACE_S)
    else:
        driver = {"connect_timeout": connect_timeout, "charset": "utf8mb4"}
        driver["init_command"] = MYSQL_SESSION_ISOLATION
        if io_timeout is not None:
            driver["read_timeout"] = driver["write_timeout"] = io_timeout + CLIENT_GRACE_S
    connect_args = {k: v for k, v in driver.items() if k not in url.query} | given
    if postgresql and io_timeout is not None:  # the server ends statements and lock waits
        ms = max(1, round(io_timeout * 1000))
        own = connect_args.get("options", url.query.get("options", ()))
        bounds = [f"-c statement_timeout={ms} -c lock_timeout={ms}"]
        connect_args["options"] = " ".join(bounds + ([own] if isinstance(own, str) else list(own)))
    return {
        "connect_args": connect_args,
        "pool_pre_ping": False,
        "pool_timeout": DEFAULT_POOL_TIMEOUT,
        # the most recently used connection first: the hot one stays hot (its
        # server process cached, its statements prepared), the spare ones idle
        "pool_use_lifo": True,
        "isolation_level": "AUTOCOMMIT",
        "skip_autocommit_rollback": True,
    }


def _session_setup(statements: list[str]) -> Callable[[Any, ConnectionPoolEntry], None]:
    """A pool ``connect`` listener: ``statements`` run on each new connection, in order."""

    def set_up(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            for sql in statements:
                cursor.execute(sql)
                mode = cursor.fetchone() if sql == JOURNAL_MODE_PRAGMA else None
                if mode and str(mode[0]).lower() != "wal":
                    logger.warning("SQLite kept journal mode %s instead of WAL", mode[0])

    return set_up


def connection_alive(dialect: Dialect, dbapi_connection: Any) -> bool:
    """Ping only a connection whose socket is readable (closed, reset, or spoken
    to unasked). A driver error other than a disconnect propagates."""
    fileno = _socket_of(dbapi_connection)
    if fileno is not None and fileno >= 0 and not _readable(fileno):
        return True  # nothing from the server since the last answer
    try:
        return fileno is not None and bool(dialect.do_ping(dbapi_connection))
    except dialect.loaded_dbapi.Error as exc:
        if not dialect.is_disconnect(exc, dbapi_connection, None):
            raise
        return False


def _socket_of(dbapi_connection: Any) -> int | None:
    """The connection's socket descriptor; ``None`` if it is closed or lost."""
    try:
        pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
        if pgconn is not None:
            return None if dbapi_connection.closed else int(pgconn.socket)
        sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL: None once closed
        return None if sock is None else int(sock.fileno())
    except Exception:  # psycopg raises for a connection it has given up on
        return None


def _readable(fileno: int) -> bool:
    if not hasattr(select, "poll"):  # Windows: select() takes any socket there
        return bool(select.select([fileno], [], [], 0)[0])
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class _Deadline:
    """When the statement in flight on one connection is due; 0 when idle."""

    __slots__ = ("__weakref__", "bound", "connection", "due", "lock")

    def __init__(self, connection: Any, bound: float) -> None:
        self.connection = weakref.ref(connection)
        self.bound = bound
        self.due = 0.0
        # held to disarm or cut: once a statement ends, its descriptor may be another's
        self.lock = threading.Lock()

    def arm(self) -> None:
        self.due = time.monotonic() + self.bound

    def disarm(self) -> None:
        with self.lock:
            self.due = 0.0

    def cut_if_late(self, now: float) -> None:
        with self.lock:
            if not 0.0 < self.due < now:
                return
            self.due = 0.0
            fileno = _socket_of(self.connection())
            if fileno is None or fileno < 0:
                return
            try:  # a duplicate descriptor: closing it leaves the driver's own
                with socket.socket(fileno=os.dup(fileno)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return
        logger.warning("SQL token store gave no answer in %.1f s; connection cut off", self.bound)


class _Watchdog:
    """One daemon thread per process, while any bounded connection lives: it cuts
    off the socket of a statement past its deadline, so the blocked read fails."""

    def __init__(self) -> None:
        self._deadlines: weakref.WeakSet[_Deadline] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        with self._lock:
            self._deadlines.add(deadline)
            if self._thread is None or not self._thread.is_alive():  # a forked child has none
                self._thread = threading.Thread(
                    target=self._run, name="console-auth-sql-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK_S)
            with self._lock:
                deadlines = list(self._deadlines)
                if not deadlines:
                    self._thread = None
                    return
            now = time.monotonic()
            for deadline in deadlines:
                deadline.cut_if_late(now)


_WATCHDOG: Final = _Watchdog()
_DEADLINE: Final = "_console_auth_deadline"


@functools.cache
def _bounded_cursor(bound: float) -> type[psycopg.Cursor[Any]]:
    """A psycopg cursor class whose statements the watchdog cuts off after ``bound``
    seconds; as every connection's ``cursor_factory``, it bounds every path."""
    import psycopg
    from psycopg.abc import Params, Query

    class BoundedCursor(psycopg.Cursor[Any]):
        __slots__ = ("_deadline",)

        def __init__(self, connection: psycopg.Connection[Any], **options: Any) -> None:
            super().__init__(connection, **options)
            deadline = getattr(connection, _DEADLINE, None)
            if deadline is None:
                deadline = _Deadline(connection, bound)
                setattr(connection, _DEADLINE, deadline)
                _WATCHDOG.watch(deadline)
            self._deadline: _Deadline = deadline

        def execute(
            self,
            query: Query,
            params: Params | None = None,
            *,
            prepare: bool | None = None,
            binary: bool | None = None,
        ) -> BoundedCursor:  # the hot path's signature spelled out: no args tuple or dict
            self._deadline.arm()
            try:
                return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[misc, arg-type]
            finally:
                self._deadline.disarm()

        def executemany(self, *args: Any, **kwargs: Any) -> None:
            self._deadline.arm()
            try:
                super().executemany(*args, **kwargs)
            finally:
                self._deadline.disarm()

    return BoundedCursor


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or (url.query.get("mode") == "memory")
    )
