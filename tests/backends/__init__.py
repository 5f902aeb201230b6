"""Every repository adapter, behind one way of getting a fresh, empty one.

The contract suite, the property tests and the stateful tests run over
``BACKEND_NAMES``; a new backend gets a module here, a line in ``_MODULES``,
and must then pass them unchanged. ``fresh()`` is a context manager so that a
backend can reuse one expensive resource (an engine, a server) and only empty
it between tests or hypothesis examples.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Final, Protocol

from console_auth.application import ConsoleConnectionRepository
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository
from console_auth.application.service import BatchPurgeable


class Backend(Protocol):
    name: str

    def fresh(self) -> AbstractContextManager[ConsoleConnectionRepository]: ...

    def close(self) -> None: ...


class SingleStore(ConsoleConnectionRepository, BatchPurgeable, Protocol):
    """A repository that is one store, not a composite of others."""


class PortBackend(Backend, Protocol):
    """A backend that also stores serial-port leases and reservations."""

    def fresh_ports(
        self,
    ) -> AbstractContextManager[tuple[PortLeaseRepository, PortReservationRepository]]: ...


_MODULES = {
    "memory": "tests.backends.memory",
    "sqlite": "tests.backends.sqlite",
    "postgresql": "tests.backends.sql_servers",
    "mariadb": "tests.backends.sql_servers",
    "memcached": "tests.backends.memcached",
    "memory-cells": "tests.backends.memory_cells",
    "memory-fallback": "tests.backends.memory_fallback",
}
BACKEND_NAMES = list(_MODULES)
"""Every adapter and both composites (cells, a fallback pair), unexempted."""
ROUTED_BY_INSTANCE: Final = frozenset({"memory-cells"})
"""Backends whose lookup with another instance's uuid asks that instance's
cell (the port's routing hint), so a token presented for the wrong instance
may be refused as unknown there rather than as ``InstanceMismatch``."""
SINGLE_STORE_NAMES = ["memory", "sqlite", "postgresql", "mariadb", "memcached"]
"""The backends whose repository is one store (``SingleStore``)."""
PORT_BACKEND_NAMES = ["memory", "sqlite", "postgresql", "mariadb", "memory-cells"]
"""Backends whose adapters store serial-port leases (issue 5); memcached refuses
them (``tests/integration/test_memcached.py``)."""


@contextmanager
def opened(name: str) -> Iterator[Backend]:
    """The named backend in a private temporary directory, closed at the end."""
    with tempfile.TemporaryDirectory(prefix=f"console-auth-{name}-") as workdir:
        backend = open_backend(name, workdir)
        try:
            yield backend
        finally:
            backend.close()


def open_backend(name: str, workdir: str) -> Backend:
    """Open the named backend; ``workdir`` is a private temporary directory.

    Each module's ``open_backend(name, workdir)`` finds or starts what it
    needs, and fails (never skips) when a required server is missing.
    """
    opened: Backend = importlib.import_module(_MODULES[name]).open_backend(name, workdir)
    return opened
