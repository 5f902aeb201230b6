"""Explicit transactions on engines whose connections autocommit.

Server engines from ``open_engine`` run in autocommit: the hot path's
statements stand alone, and a BEGIN/COMMIT (or the pool's ROLLBACK on
return) would double or triple their round trips. A unit of work that spans
statements (a purge batch, a migration) asks for a real transaction here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy import Connection, Engine

TRANSACTION_ISOLATION: Final = "READ COMMITTED"
"""What a multi-statement unit of work runs under on PostgreSQL and
MariaDB/MySQL: every statement sees what is committed, and InnoDB takes no
gap locks, so concurrent purges, revokes and inserts rarely deadlock. Each
unit re-checks its conditions in its writes, so it needs nothing stronger."""


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A pooled connection inside one transaction, committed at the end.

    SQLite keeps the engine's own behaviour (its driver begins at the first
    write; ``migrate`` takes the write lock itself).
    """
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            connection.execution_options(isolation_level=TRANSACTION_ISOLATION)
        with connection.begin():
            yield connection
