"""Serial-port leases and reservations split over cells, routed by host.

A console port belongs to a compute host and a host to one cell, so its
lease and its reservation live in that cell's store, beside the tokens of
the instances it runs. A cell that is down then takes only its own hosts'
ports with it, and ``claim`` stays one atomic operation in one store.

- Whatever names a host goes to ``locator.cell_of_host``. A host in no cell
  is ``UnknownCell``, never a guess: claims routed to the right cell would
  never see a lease stored in a guessed one, and hand its port out twice.
- By instance without a host (``leases(instance_uuid=...)``,
  ``delete_by_instance``): every cell. A lease lives in its host's cell, and
  an instance moved to a host in another cell leaves its old leases behind.
  ``delete_by_instance`` skips a cell that fails and, once the others are
  done, names it (as revoking tokens does).
- ``leases`` without a host asks every cell, and fails if one fails: a
  partial list would show taken ports as free.
- ``purge_expired`` of every host (or of a host in no cell, as the token
  purge does) purges cell by cell, each in its own batches, with the one
  failure rule of ``in_every_cell``: a cell that fails is skipped, and named
  once the others are purged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Generic, TypeVar
from uuid import UUID

from console_auth.domain import UnknownCell
from console_auth.domain.leases import PortLease

from .cells import check_cell_stores, in_cell, in_every_cell
from .ports import CellLocator, PortLeaseRepository, PortReservationRepository

_S = TypeVar("_S")


class _ByHost(Generic[_S]):
    """One store per cell, and the host-to-cell lookup both routers share."""

    def __init__(self, cells: Mapping[str, _S], locator: CellLocator) -> None:
        check_cell_stores(cells, locator)
        self._cells = dict(cells)
        self._locator = locator

    def _cell_of_host(self, host: str) -> tuple[str, _S]:
        name = self._locator.cell_of_host(host)
        if name is None:
            raise UnknownCell(f"no cell is known to hold compute host {host}")
        return name, self._cells[name]


class CellRoutedPortLeaseRepository(_ByHost[PortLeaseRepository]):
    """A ``PortLeaseRepository`` over one per cell; see the module docstring.
    Thread-safe when the cells' repositories are."""

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        name, cell = self._cell_of_host(lease.host)
        return in_cell(name, cell.claim, lease, now)

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        name, cell = self._cell_of_host(lease.host)
        return in_cell(name, cell.renew, lease, expires_at, now)

    def release(self, lease: PortLease) -> bool:
        name, cell = self._cell_of_host(lease.host)
        return in_cell(name, cell.release, lease)

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        cells = self._cells
        if host is not None:
            name, cell = self._cell_of_host(host)
            cells = {name: cell}
        found: list[PortLease] = []
        for name, cell in cells.items():
            listed = partial(cell.leases, now, host=host, instance_uuid=instance_uuid)
            found += in_cell(name, listed)
        return sorted(found, key=lambda lease: (lease.host, lease.port))

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        return in_every_cell(
            self._cells,
            lambda cell: cell.delete_by_instance(instance_uuid),
            lambda n: f"{n} port leases of instance {instance_uuid} deleted",
        )

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        name = None if host is None else self._locator.cell_of_host(host)
        cells = self._cells if name is None else {name: self._cells[name]}
        return in_every_cell(
            cells,
            lambda cell: cell.purge_expired(now, host, batch_size),
            lambda n: f"purged {n} expired port leases",
        )


class CellRoutedPortReservationRepository(_ByHost[PortReservationRepository]):
    """A ``PortReservationRepository`` over one per cell, by host."""

    def reserve(self, host: str, port: int) -> bool:
        name, cell = self._cell_of_host(host)
        return in_cell(name, cell.reserve, host, port)

    def release(self, host: str, port: int) -> bool:
        name, cell = self._cell_of_host(host)
        return in_cell(name, cell.release, host, port)

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        name, cell = self._cell_of_host(host)
        return in_cell(name, cell.reserved, host, first, last)
