"""Serial-port repositories on any migrated SQL engine, emptied per use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete

from console_auth.adapters.sql import (
    SqlPortLeaseRepository,
    SqlPortReservationRepository,
    Statements,
)
from console_auth.adapters.sql.tables import PORT_LEASES, PORT_RESERVATIONS
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository


@contextmanager
def fresh_sql_ports(
    statements: Statements,
) -> Iterator[tuple[PortLeaseRepository, PortReservationRepository]]:
    with statements.engine.begin() as conn:
        conn.execute(delete(PORT_LEASES))
        conn.execute(delete(PORT_RESERVATIONS))
    yield SqlPortLeaseRepository(statements), SqlPortReservationRepository(statements)
