"""The reference backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import ConsoleConnectionRepository
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository


class MemoryBackend:
    name = "memory"

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        yield InMemoryConsoleConnectionRepository()

    @contextmanager
    def fresh_ports(self) -> Iterator[tuple[PortLeaseRepository, PortReservationRepository]]:
        yield InMemoryPortLeaseRepository(), InMemoryPortReservationRepository()

    def close(self) -> None:
        pass


def open_backend(name: str, workdir: str) -> MemoryBackend:
    return MemoryBackend()
