"""Tokens and serial ports split over two in-memory cells: the contracts
must hold when an instance (tokens) or a lease's host (ports) decides the
store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final
from uuid import UUID

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleConnectionRepository,
)
from console_auth.application.cell_ports import (
    CellRoutedPortLeaseRepository,
    CellRoutedPortReservationRepository,
)
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository
from tests.fakes import ParityCellLocator


class SplitLocator:
    """``compute-1`` is in cell ``a``, every other host in ``b``; every
    instance is in ``a``, since the contract's instances all run on
    ``compute-1``. Listing every host then merges both cells."""

    CELLS: Final = ("a", "b")

    def cell_of(self, instance_uuid: UUID) -> str:
        return "a"

    def cell_of_host(self, host: str) -> str | None:
        return "a" if host == "compute-1" else "b"

    def cells(self) -> Sequence[str]:
        return self.CELLS


class MemoryCellsBackend:
    name = "memory-cells"

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        """Instances spread over both cells by the parity of their uuid."""
        stores = {name: InMemoryConsoleConnectionRepository() for name in ParityCellLocator.CELLS}
        cells = CellRoutedConsoleConnectionRepository(stores, ParityCellLocator())
        try:
            yield cells
        finally:
            cells.close()

    @contextmanager
    def fresh_ports(self) -> Iterator[tuple[PortLeaseRepository, PortReservationRepository]]:
        locator = SplitLocator()
        yield (
            CellRoutedPortLeaseRepository(
                {name: InMemoryPortLeaseRepository() for name in locator.CELLS}, locator
            ),
            CellRoutedPortReservationRepository(
                {name: InMemoryPortReservationRepository() for name in locator.CELLS}, locator
            ),
        )

    def close(self) -> None:
        pass


def open_backend(name: str, workdir: str) -> MemoryCellsBackend:
    return MemoryCellsBackend()
