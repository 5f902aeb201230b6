"""Serial-port leases and reservations on SQL; claims are optimistic, without
``SELECT ... FOR UPDATE`` (ARCHITECTURE.md, "Serial-port claims are optimistic")."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import RowMapping, Table, delete, insert, select, update

from console_auth.application.service import in_batches
from console_auth.domain import BackendUnavailable, InvalidRequest
from console_auth.domain.leases import PortLease
from console_auth.domain.model import invalid_request
from console_auth.domain.types import from_microseconds, to_microseconds

from .repository import delete_selected
from .statements import Statements
from .tables import PORT_LEASES, PORT_RESERVATIONS

logger = logging.getLogger(__name__)

CLAIM_ATTEMPTS: Final = 16
"""Each lost race means another claim won, so this bound only stops a livelock."""

_L: Final = PORT_LEASES
_R: Final = PORT_RESERVATIONS
_LEASE_COLUMNS: Final = tuple(c for c in _L.c if c.key != "id")


class SqlPortLeaseRepository:
    """Leases in ``console_port_leases``, one row per (host, port)."""

    def __init__(self, statements: Statements) -> None:
        self._statements = statements

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        row = _lease_row(lease)
        for _ in range(CLAIM_ATTEMPTS):
            current = self._current(lease.host, lease.port)
            if current is None:
                if _insert(self._statements, _L, row):
                    return None
                continue
            if current.blocks(lease, now):
                return current
            replace = (
                update(_L)
                .where(_L.c.host == lease.host, _L.c.port == lease.port)
                .where(_L.c.lease_id == current.lease_id)
                .where(_L.c.expires_at_us == to_microseconds(current.expires_at))
                .values(row)
            )
            if _write(self._statements, replace) == 1:
                return None
        raise BackendUnavailable(
            f"serial port {lease.host}:{lease.port} stayed contended over {CLAIM_ATTEMPTS} reads"
        )

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        renew = (
            update(_L)
            .where(_L.c.host == lease.host, _L.c.port == lease.port)
            .where(_L.c.lease_id == lease.lease_id)
            .where(_L.c.expires_at_us > to_microseconds(now))
            .values(expires_at_us=to_microseconds(expires_at))
        )
        if _write(self._statements, renew) != 1:
            return None
        return lease.model_copy(update={"expires_at": expires_at})

    def release(self, lease: PortLease) -> bool:
        release = delete(_L).where(
            _L.c.host == lease.host, _L.c.port == lease.port, _L.c.lease_id == lease.lease_id
        )
        return _write(self._statements, release) == 1

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        query = select(*_LEASE_COLUMNS).where(_L.c.expires_at_us > to_microseconds(now))
        if host is not None:
            query = query.where(_L.c.host == host)
        if instance_uuid is not None:
            query = query.where(_L.c.instance_uuid == str(instance_uuid))
        ordered = query.order_by(_L.c.host, _L.c.port)
        rows = self._statements.run(lambda conn: conn.execute(ordered).mappings().all())
        return [_lease(row) for row in rows]

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        return _write(self._statements, delete(_L).where(_L.c.instance_uuid == str(instance_uuid)))

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        return in_batches(functools.partial(self.delete_expired, now, host), batch_size)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """One bounded batch by id, as for connections."""
        if limit < 1:
            return 0
        expired = _L.c.expires_at_us <= to_microseconds(now)
        where = expired if host is None else expired & (_L.c.host == host)
        oldest = select(_L.c.id).where(where).order_by(_L.c.expires_at_us, _L.c.id).limit(limit)
        return delete_selected(self._statements, _L, oldest, where)

    def _current(self, host: str, port: int) -> PortLease | None:
        query = select(*_LEASE_COLUMNS).where(_L.c.host == host, _L.c.port == port)
        row = self._statements.run(lambda conn: conn.execute(query).mappings().first())
        return None if row is None else _lease(row)


class SqlPortReservationRepository:
    """Reservations in ``console_port_reservations``, keyed by (host, port)."""

    def __init__(self, statements: Statements) -> None:
        self._statements = statements

    def reserve(self, host: str, port: int) -> bool:
        row = {"host": host, "port": port, "reserved_at_us": to_microseconds(datetime.now(UTC))}
        return _insert(self._statements, _R, row)

    def release(self, host: str, port: int) -> bool:
        one = delete(_R).where(_R.c.host == host, _R.c.port == port)
        return _write(self._statements, one) == 1

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        query = select(_R.c.port).where(_R.c.host == host, _R.c.port.between(first, last))
        return self._statements.run(lambda conn: set(conn.scalars(query).all()))


def _insert(statements: Statements, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert one row; ``False`` when its unique key is already taken."""
    try:
        statements.run(lambda conn: conn.execute(insert(table), dict(row)), on_conflict="taken")
    except InvalidRequest:
        return False
    return True


def _write(statements: Statements, statement: Any) -> int:
    """Run one UPDATE or DELETE in its own transaction; return its row count."""
    return statements.run(lambda conn: int(conn.execute(statement).rowcount))


def _lease_row(lease: PortLease) -> dict[str, Any]:
    since, expires_at = to_microseconds(lease.since), to_microseconds(lease.expires_at)
    row = lease.model_dump(mode="json", exclude={"since", "expires_at"})
    return {**row, "since_us": since, "expires_at_us": expires_at}


def _lease(row: RowMapping) -> PortLease:
    times = {"since": row["since_us"], "expires_at": row["expires_at_us"]}
    try:
        return PortLease.model_validate(
            {key: value for key, value in row.items() if not key.endswith("_us")}
            | {key: from_microseconds(us) for key, us in times.items()}
        )
    except (ValidationError, OverflowError) as exc:
        problem = str(invalid_request(exc)) if isinstance(exc, ValidationError) else "bad time"
        logger.error("unreadable port lease row: %s", problem)
        raise BackendUnavailable(f"stored port lease is unreadable: {problem}") from None
