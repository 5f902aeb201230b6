"""A fallback pair of in-memory stores, as while switching backends: the
contract must hold for the composite as for any store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application import (
    ConsoleConnectionRepository,
    FallbackConsoleConnectionRepository,
)


class MemoryFallbackBackend:
    name = "memory-fallback"

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        yield FallbackConsoleConnectionRepository(
            InMemoryConsoleConnectionRepository(), InMemoryConsoleConnectionRepository()
        )

    def close(self) -> None:
        pass


def open_backend(name: str, workdir: str) -> MemoryFallbackBackend:
    return MemoryFallbackBackend()
