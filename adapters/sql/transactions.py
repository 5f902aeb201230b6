"""Explicit transactions on engines whose connections autocommit.

Server engines from ``open_engine`` run in autocommit: the hot path's
statements stand alone, and a BEGIN/COMMIT (or the pool's ROLLBACK on
return) would double or triple their round trips. A unit of work that spans
statements (a purge batch, a serial-port write) asks for a real transaction
here: its own BEGIN, COMMIT or ROLLBACK on the autocommitting connection.

The connection's isolation level is never switched: SQLAlchemy would
switch it back when the pool takes the connection in, one more round trip,
whose driver error, after a fault, escapes every error mapping (it is
raised from the pool's check-in) and loses the pool a slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy import Connection, Engine

from .driver import autocommits

POSTGRESQL_BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
"""What a multi-statement unit of work runs under on PostgreSQL (its
default, pinned here at no cost) and MariaDB/MySQL (the session's level,
``engine.MYSQL_SESSION_ISOLATION``): every statement sees what is
committed, and InnoDB takes no gap locks, so concurrent purges, revokes
and inserts rarely deadlock. Each unit re-checks its conditions in its
writes, so it needs nothing stronger."""
MYSQL_BEGIN: Final = "START TRANSACTION"


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A pooled connection inside one transaction, committed at the end.

    On a connection that does not autocommit (SQLite, whose driver begins
    at the first write; an engine opened with another isolation level)
    SQLAlchemy's own transaction is used.
    """
    with engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        if not autocommits(connection.dialect, dbapi_connection):
            with connection.begin():
                yield connection
            return
        postgresql = connection.dialect.name == "postgresql"
        connection.exec_driver_sql(POSTGRESQL_BEGIN if postgresql else MYSQL_BEGIN)
        try:
            yield connection
            connection.exec_driver_sql("COMMIT")
        except BaseException:
            _roll_back(connection)
            raise


def _roll_back(connection: Connection) -> None:
    """End the transaction, or drop a connection that cannot: it must not
    go back to the pool inside one (the pool does not roll back an
    autocommitting connection)."""
    if connection.invalidated:
        return
    try:
        connection.exec_driver_sql("ROLLBACK")
    except Exception:
        with contextlib.suppress(Exception):
            connection.invalidate()
