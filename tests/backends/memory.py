"""The reference backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application import ConsoleConnectionRepository


class MemoryBackend:
    name = "memory"

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        yield InMemoryConsoleConnectionRepository()

    def close(self) -> None:
        pass


def open_backend(name: str, workdir: str) -> MemoryBackend:
    return MemoryBackend()
