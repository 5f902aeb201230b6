"""Every repository adapter, behind one way of getting a fresh, empty one.

The contract suite and the stateful tests run over ``BACKENDS``; a new
backend is added here and must then pass them unchanged. ``fresh()`` is a
context manager so that a backend can reuse one expensive resource (an
engine, a server) and only empty it between tests or hypothesis examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from sqlalchemy import delete

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.sql import SqlConsoleConnectionRepository, open_engine
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from console_auth.application import ConsoleConnectionRepository


class Backend(Protocol):
    name: str

    def fresh(self) -> AbstractContextManager[ConsoleConnectionRepository]: ...

    def close(self) -> None: ...


class MemoryBackend:
    name = "memory"

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        yield InMemoryConsoleConnectionRepository()

    def close(self) -> None:
        pass


class SqliteBackend:
    """One migrated SQLite file per session; emptying it is cheaper than
    migrating a new one per test or hypothesis example."""

    name = "sqlite"

    def __init__(self, workdir: str) -> None:
        self.engine = open_engine(f"sqlite:///{workdir}/tokens.sqlite3", auto_migrate=True)

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        with self.engine.begin() as conn:
            conn.execute(delete(CONSOLE_CONNECTIONS))
        yield SqlConsoleConnectionRepository(self.engine)

    def close(self) -> None:
        self.engine.dispose()


BACKEND_NAMES = ["memory", "sqlite"]


def open_backend(name: str, workdir: str) -> Backend:
    """Open the named backend; ``workdir`` is a private temporary directory."""
    if name == "memory":
        return MemoryBackend()
    if name == "sqlite":
        return SqliteBackend(workdir)
    raise LookupError(name)
