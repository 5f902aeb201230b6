"""Hot-path statements run on the driver's cursor, through SQLAlchemy's pool.

A token lookup or insert is one short statement; Core's per-call execution
context costs several times the database's own work for it (measured in
``bench/``). Statements are still written in Core and compiled once per
engine for its dialect, and connections still come from the engine's pool,
so pre-ping, invalidation and reset-on-return keep working. Driver errors are
mapped here as ``errors.mapped_errors`` maps Core's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import DBAPICursor
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
        self._names = compiled.positiontup if compiled.positional else None

    def bind(self, params: Mapping[str, Any]) -> Mapping[str, Any] | tuple[Any, ...]:
        if self._names is None:
            return params
        return tuple(params[name] for name in self._names)


@contextmanager
def driver_cursor(
    engine: Engine, *, commit: bool = False, on_conflict: str | None = None
) -> Iterator[DBAPICursor]:
    """A cursor on a pooled connection, committed at the end when asked.

    On any error the connection goes back to the pool, which rolls it back;
    a disconnect also invalidates it, so the next call gets a fresh one.
    ``on_conflict`` turns an integrity error into that ``InvalidRequest``.
    """
    dbapi = engine.dialect.loaded_dbapi
    with mapped_errors():  # the pool's own errors (a checkout timeout) come wrapped
        try:
            conn = engine.raw_connection()
        except dbapi.Error as exc:  # a failed first connect comes raw
            raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc
    try:
        cursor = conn.cursor()
        try:
            yield cursor
            if commit:
                conn.commit()
        finally:
            cursor.close()
    except dbapi.IntegrityError as exc:
        if on_conflict is None:
            raise BackendUnavailable(f"SQL token store refused a write: {describe(exc)}") from exc
        raise InvalidRequest(on_conflict) from exc
    except dbapi.Error as exc:
        if engine.dialect.is_disconnect(exc, conn.dbapi_connection, None):
            conn.invalidate(exc)
        raise BackendUnavailable(f"SQL token store unavailable: {describe(exc)}") from exc
    finally:
        conn.close()  # back to the pool
