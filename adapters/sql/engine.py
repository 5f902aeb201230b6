"""One engine per process, configured so that SQL never leaks a value.

``hide_parameters=True`` is forced: SQLAlchemy otherwise writes bound values
(token hashes, hosts) into exception text and echo logs. SQLite gets its
pragmas on every new DBAPI connection, since they are per connection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from console_auth.domain import BackendUnavailable, InvalidRequest

from .migrate import upgrade

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


def open_engine(url: str, *, auto_migrate: bool = False, **engine_options: Any) -> Engine:
    """Create the engine for ``url``; with ``auto_migrate``, upgrade the schema.

    A SQLite file whose directory is missing raises ``BackendUnavailable``
    at once rather than creating directories: a typo in a path should not
    silently start an empty token store somewhere else.
    """
    parsed = _parse(url)
    options: dict[str, Any] = {"pool_pre_ping": True, **engine_options}
    options["hide_parameters"] = True
    if parsed.get_backend_name() == "sqlite":
        options.update(_sqlite_options(parsed, engine_options))
    try:
        engine = create_engine(parsed, **options)
    except sa_exc.NoSuchModuleError:
        raise InvalidRequest(f"SQLAlchemy has no dialect {parsed.drivername!r}") from None
    except ImportError as exc:
        raise InvalidRequest(f"database driver {exc.name!r} is not installed") from None
    except sa_exc.ArgumentError as exc:  # names options, never the URL
        raise InvalidRequest(f"invalid engine options: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _pragma_setter(memory=_is_memory(parsed)))
    if auto_migrate:
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
