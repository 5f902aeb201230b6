"""Driver faults turned into this library's errors, in one place.

Callers catch ``ConsoleAuthError``; a raw SQLAlchemy error escaping would
make a proxy treat a restarting database as a bug. Messages name the fault
by exception class and driver error code only: driver messages may quote
values (PostgreSQL's ``DETAIL``), so they stay in the chained cause, where
``hide_parameters=True`` has already kept bound values out of the text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import exc as sa_exc

from console_auth.domain import BackendUnavailable, InvalidRequest

DUPLICATE_HASH = "a connection with this token hash is already stored"

RETRYABLE_MYSQL_ERRNOS: Final = frozenset({1213})
"""InnoDB's deadlock victim: the transaction was rolled back, so running it
again is safe. A lock wait timeout (1205) is not retried: the wait is the
engine's ``io_timeout`` bound, and running again would multiply it."""
RETRYABLE_SQLSTATES: Final = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock detected and serialization failure: the
transaction was rolled back whole."""


@contextmanager
def mapped_errors(*, on_conflict: str | None = None) -> Iterator[None]:
    """Map SQLAlchemy errors raised inside the block, most specific first.

    ``on_conflict`` is the ``InvalidRequest`` message for an integrity
    error (an insert's duplicate key); without it an integrity error is a
    store fault like any other.
    """
    try:
        yield
    except sa_exc.IntegrityError as exc:
        if on_conflict is not None:
            raise InvalidRequest(on_conflict) from exc
        raise BackendUnavailable(f"SQL token store refused a write: {describe(exc)}") from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc
    except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
        raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc
    except sa_exc.DBAPIError as exc:  # e.g. a file that is not a database, a missing table
        raise BackendUnavailable(f"SQL token store failed: {describe(exc)}") from exc
    except _driver_errors as exc:  # raw from where SQLAlchemy does not wrap (pool events)
        raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc


_driver_errors: tuple[type[Exception], ...] = ()
"""The ``Error`` base class of every driver an engine was opened with."""
_driver_errors_lock: Final = threading.Lock()


def register_driver(dbapi: Any) -> None:
    """Have ``mapped_errors`` map the raw errors of ``dbapi`` (a DBAPI module)."""
    global _driver_errors
    with _driver_errors_lock:
        if dbapi.Error not in _driver_errors:
            _driver_errors = (*_driver_errors, dbapi.Error)


def describe(exc: BaseException) -> str:
    """Class and code of the fault, e.g. ``sqlite3.OperationalError SQLITE_BUSY``.

    Takes SQLAlchemy's wrapper or a raw driver exception (the lookup path
    talks to the driver directly)."""
    if isinstance(exc, sa_exc.DBAPIError):
        orig: BaseException | None = exc.orig
    elif isinstance(exc, sa_exc.SQLAlchemyError):
        orig = None
    else:
        orig = exc
    if orig is None:
        return type(exc).__name__
    name = f"{type(orig).__module__}.{type(orig).__qualname__}"
    if orig.args and isinstance(orig.args[0], int):
        code: object = orig.args[0]  # MySQL/MariaDB drivers: the server's errno
    else:
        code = (
            getattr(orig, "sqlite_errorname", None)  # sqlite3
            or getattr(orig, "sqlstate", None)  # psycopg 3
            or getattr(orig, "pgcode", None)  # psycopg2
        )
    return name if code is None else f"{name} {code}"


def is_retryable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the driver error it wraps) says that the server
    rolled the work back to break a deadlock or a lock wait, so that the
    same work may simply run again."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:  # psycopg 3
        return True
    args = orig.args  # MySQL/MariaDB drivers: the server's errno first
    return bool(args) and isinstance(args[0], int) and args[0] in RETRYABLE_MYSQL_ERRNOS
