"""One engine per process, configured so that SQL never leaks a value.

``hide_parameters=True`` is forced: SQLAlchemy otherwise writes bound values
(token hashes, hosts) into exception text and echo logs. SQLite gets its
pragmas on every new DBAPI connection, since they are per connection.

Server databases (PostgreSQL through psycopg 3, MariaDB/MySQL through
PyMySQL) get bounded waits everywhere, so a stopped or unreachable server
is a ``BackendUnavailable`` within seconds, never a hang:

============== ======= ==========================================================
option         default what it bounds
============== ======= ==========================================================
connect_timeout   5 s  opening a connection, handshake included (psycopg:
                       libpq ``connect_timeout``; PyMySQL: ``connect_timeout``,
                       and the handshake by ``io_timeout``)
io_timeout        5 s  one read or write on an open connection (PyMySQL
                       ``read_timeout``/``write_timeout``); on PostgreSQL,
                       libpq has no read timeout, so it is ``tcp_user_timeout``
                       (data the peer never acknowledges) plus TCP keepalives
pool_timeout      5 s  waiting for a free pooled connection (SQLAlchemy's own)
============== ======= ==========================================================

A value in the URL's query (``?connect_timeout=10``) or in ``connect_args``
wins over these defaults; ``io_timeout=None`` turns the read/write bound off
(a migration of a very large table may need that).

Server connections autocommit: a token lookup or insert is one statement,
and BEGIN/COMMIT or the pool's ROLLBACK on return would double or triple its
round trips. Units of work spanning statements use
``transactions.transaction(engine)``. Instead of SQLAlchemy's pre-ping (one
more round trip per checkout: about 90 us on a loopback PostgreSQL, half a
lookup), each checkout polls the connection's socket, which costs no round
trip: a server that closed the connection (restart, kill, idle timeout) or
sent anything unasked has made it readable, and only then is it pinged and,
if dead, the pool invalidated and a fresh connection opened. Passing
``pool_pre_ping=True`` restores the full ping.
"""

from __future__ import annotations

import logging
import os
import select
import weakref
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool

from console_auth.domain import BackendUnavailable, InvalidRequest

logger = logging.getLogger(__name__)

JOURNAL_MODE_PRAGMA: Final = "PRAGMA journal_mode=WAL"
SQLITE_PRAGMAS: Final[tuple[str, ...]] = (
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",  # before journal_mode, which may wait for a lock
    JOURNAL_MODE_PRAGMA,  # readers never block the writer (file databases only)
    "PRAGMA synchronous=NORMAL",  # with WAL: durable across crashes, not power loss
)
"""Applied to every SQLite connection, in order; the benchmark's raw
``sqlite3`` floor applies the same statements."""

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_IO_TIMEOUT: Final = 5.0
DEFAULT_POOL_TIMEOUT: Final = 5.0
"""Seconds; see the module docstring. Far above a healthy server's
milliseconds, well under what a proxy's user waits before giving up."""

POSTGRESQL_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""A pooled connection whose peer vanished without a word (host down, NAT
state lost) errors within about a minute, which the checkout poll then sees."""

MYSQL_SESSION_ISOLATION: Final = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
"""What every MariaDB/MySQL statement runs under, as on PostgreSQL by
default. Under InnoDB's REPEATABLE READ an autocommitted revoke locks the
gaps around its rows too, so an authorize whose row falls in such a gap
waits for the revoke, and a revoke waiting for a lock stalls the inserts
behind it. It needs ``binlog_format`` ROW or MIXED (the servers' defaults):
with STATEMENT, InnoDB refuses writes under READ COMMITTED (error 1665);
such a server needs ``connect_args={"init_command": ""}``."""

_SERVER_DRIVERS: Final = {("postgresql", "psycopg"), ("mysql", "pymysql"), ("mariadb", "pymysql")}
"""Backends and drivers whose timeouts and socket this module knows; other
drivers work, with SQLAlchemy's defaults and its full pre-ping."""


def open_engine(
    url: str,
    *,
    auto_migrate: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    io_timeout: float | None = DEFAULT_IO_TIMEOUT,
    **engine_options: Any,
) -> Engine:
    """Create the engine for ``url``; with ``auto_migrate``, upgrade the schema.

    ``engine_options`` go to ``sqlalchemy.create_engine`` and win over the
    defaults chosen here (``pool_timeout``, ``isolation_level``, ...).
    A SQLite file whose directory is missing raises ``BackendUnavailable``
    at once rather than creating directories: a typo in a path should not
    silently start an empty token store somewhere else.
    """
    parsed = _parse(url)
    backend, driver = parsed.get_backend_name(), _driver_name(parsed)
    options: dict[str, Any] = {"pool_pre_ping": True, **engine_options}
    options["hide_parameters"] = True
    if backend == "sqlite":
        options.update(_sqlite_options(parsed, engine_options))
    elif (backend, driver) in _SERVER_DRIVERS:
        options.update(_server_options(parsed, engine_options, connect_timeout, io_timeout))
    try:
        engine = create_engine(parsed, **options)
    except sa_exc.NoSuchModuleError:
        raise InvalidRequest(f"SQLAlchemy has no dialect {parsed.drivername!r}") from None
    except ImportError as exc:
        raise InvalidRequest(f"database driver {exc.name!r} is not installed") from None
    except sa_exc.ArgumentError as exc:  # names options, never the URL
        raise InvalidRequest(f"invalid engine options: {exc}") from None
    if backend == "sqlite":
        event.listen(engine, "connect", _pragma_setter(memory=_is_memory(parsed)))
    elif (backend, driver) in _SERVER_DRIVERS and not options["pool_pre_ping"]:
        event.listen(engine, "checkout", _liveness_check(engine.dialect))
        if options["isolation_level"] == "AUTOCOMMIT":
            _HOLDABLE.add(engine)
    if auto_migrate:
        from .migrate import upgrade  # Alembic is imported only by those who migrate

        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # from None: the text of the error quotes the URL, password included
        raise InvalidRequest("database URL is not a valid SQLAlchemy URL") from None


def _sqlite_options(url: URL, requested: dict[str, Any]) -> dict[str, Any]:
    """A file cannot drop a connection, so no pre-ping round trip (it would
    add about 60% to a lookup). An in-memory database lives and dies with
    its connection, so every thread shares one: right for tests and tools,
    wrong for a concurrent server, which should use a file."""
    options: dict[str, Any] = {"pool_pre_ping": requested.get("pool_pre_ping", False)}
    if _is_memory(url):
        options["poolclass"] = requested.get("poolclass", StaticPool)
        options["connect_args"] = {"check_same_thread": False, **requested.get("connect_args", {})}
    elif not url.query.get("uri"):
        directory = os.path.dirname(os.path.abspath(url.database or ""))
        if not os.path.isdir(directory):
            raise BackendUnavailable(f"SQLite database directory {directory} does not exist")
    return options


def _driver_name(url: URL) -> str:
    """The URL's driver, or the dialect's default one; empty for an unknown dialect
    (``create_engine`` then says so)."""
    try:
        return url.get_driver_name()
    except sa_exc.NoSuchModuleError:
        return ""


def _server_options(
    url: URL, requested: dict[str, Any], connect_timeout: float, io_timeout: float | None
) -> dict[str, Any]:
    """Autocommit, bounded waits, and the socket poll instead of a pre-ping."""
    if url.get_backend_name() == "postgresql":
        defaults: dict[str, Any] = {
            # libpq takes whole seconds, and treats anything under 2 as 2
            "connect_timeout": max(2, round(connect_timeout)),
            **POSTGRESQL_KEEPALIVES,
        }
        if io_timeout is not None:
            defaults["tcp_user_timeout"] = round(io_timeout * 1000)
    else:
        defaults = {
            "connect_timeout": connect_timeout,
            "charset": "utf8mb4",
            "init_command": MYSQL_SESSION_ISOLATION,
        }
        if io_timeout is not None:
            defaults.update(read_timeout=io_timeout, write_timeout=io_timeout)
    connect_args = {k: v for k, v in defaults.items() if k not in url.query}
    connect_args.update(requested.get("connect_args", {}))
    return {
        "connect_args": connect_args,
        "pool_pre_ping": requested.get("pool_pre_ping", False),
        "pool_timeout": requested.get("pool_timeout", DEFAULT_POOL_TIMEOUT),
        # the most recently used connection first: the hot one stays hot (its
        # server process cached, its statements prepared), the spare ones idle
        "pool_use_lifo": requested.get("pool_use_lifo", True),
        "isolation_level": requested.get("isolation_level", "AUTOCOMMIT"),
        "skip_autocommit_rollback": requested.get("skip_autocommit_rollback", True),
    }


_HOLDABLE: Final[weakref.WeakSet[Engine]] = weakref.WeakSet()


def holdable(engine: Engine) -> bool:
    """Whether a connection of ``engine`` may be held between calls: a
    PostgreSQL or MariaDB/MySQL server engine from ``open_engine`` whose
    connections autocommit (so a held one never sits in a transaction or
    on an old snapshot) and get the socket poll (so ``connection_alive``
    can check one without a round trip)."""
    return engine in _HOLDABLE


def connection_alive(dialect: Dialect, dbapi_connection: Any) -> bool:
    """Ping only a connection whose socket is readable (closed, reset, or
    holding a message nobody asked for); one with a quiet socket is alive
    for all the client can tell without a round trip. A driver error other
    than a disconnect propagates."""
    fileno = _socket_of(dbapi_connection)
    if fileno is not None and fileno >= 0 and not _readable(fileno):
        return True  # nothing from the server since the last answer
    try:
        return fileno is not None and bool(dialect.do_ping(dbapi_connection))
    except dialect.loaded_dbapi.Error as exc:
        if not dialect.is_disconnect(exc, dbapi_connection, None):
            raise
        return False


def _liveness_check(
    dialect: Dialect,
) -> Callable[[Any, ConnectionPoolEntry, PoolProxiedConnection], None]:
    """A pool ``checkout`` listener around ``connection_alive``.

    Raising ``InvalidatePoolError`` makes the pool drop this connection and
    every older one, and hand out a fresh connection instead (SQLAlchemy's
    documented checkout protocol, the one its own pre-ping uses).
    """

    def check(dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any) -> None:
        if not connection_alive(dialect, dbapi_connection):
            raise sa_exc.InvalidatePoolError("the server closed the pooled connection")

    return check


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


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or (url.query.get("mode") == "memory")
    )


def _pragma_setter(*, memory: bool) -> Callable[[Any, ConnectionPoolEntry], None]:
    pragmas = [p for p in SQLITE_PRAGMAS if not (memory and p == JOURNAL_MODE_PRAGMA)]

    def set_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                result = cursor.execute(pragma).fetchone()
                if pragma == JOURNAL_MODE_PRAGMA and result and str(result[0]).lower() != "wal":
                    logger.warning("SQLite kept journal mode %s instead of WAL", result[0])
        finally:
            cursor.close()

    return set_pragmas
