"""The embedded default: one migrated SQLite file per session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import delete

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS, REVOCATIONS
from console_auth.application import ConsoleConnectionRepository
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository
from tests.backends.sql_ports import fresh_sql_ports


class SqliteBackend:
    """Emptying one file is cheaper than migrating a new one per test or
    hypothesis example."""

    name = "sqlite"

    def __init__(self, workdir: str) -> None:
        self.engine = open_engine(f"sqlite:///{workdir}/tokens.sqlite3", auto_migrate=True)
        self.statements = Statements(self.engine)  # one per engine, as the container keeps

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        with self.engine.begin() as conn:
            conn.execute(delete(CONSOLE_CONNECTIONS))
            conn.execute(delete(REVOCATIONS))
        yield SqlConsoleConnectionRepository(self.statements)

    def fresh_ports(
        self,
    ) -> AbstractContextManager[tuple[PortLeaseRepository, PortReservationRepository]]:
        return fresh_sql_ports(self.statements)

    def close(self) -> None:
        self.engine.dispose()


def open_backend(name: str, workdir: str) -> SqliteBackend:
    return SqliteBackend(workdir)
