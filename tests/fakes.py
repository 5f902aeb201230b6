"""Doubles for the ports: tests decide time and tokens, and stores that fail."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, NoReturn
from uuid import UUID

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application.events import ConsoleEvent, UseCase, validated_event
from console_auth.application.ports import StoredConnection
from console_auth.domain import TOKEN_LENGTH, BackendUnavailable, ConsoleConnection

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class FixedTokenSource:
    """Predictable, distinct, well-shaped tokens: ``tok...0001``, ``tok...0002``."""

    def __init__(self, prefix: str = "tok") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def new_token(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{self._prefix}{n:0{TOKEN_LENGTH - len(self._prefix)}d}"


class FixedLeaseIdSource:
    """Predictable, distinct lease ids: ``lease...0001``, ``lease...0002``."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def new_lease_id(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"lease{n:027d}"


class UnavailableRepository:
    """A store that is down: every call raises ``BackendUnavailable``, as an
    adapter maps a refused connection. ``calls`` counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> NoReturn:
        self.calls += 1
        raise BackendUnavailable("store unavailable") from ConnectionRefusedError(111, "refused")

    def add(self, connection: ConsoleConnection) -> None:
        self._fail()

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        self._fail()

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        self._fail()

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        self._fail()

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        self._fail()

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        self._fail()

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        self._fail()

    def delete_by_hash(self, token_hash: str) -> int:
        self._fail()

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        return None


class StalledRepository(InMemoryConsoleConnectionRepository):
    """A store that hangs on lookups (a blackholed server) until ``release()``;
    everything else works."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Semaphore(0)
        self._released = threading.Event()

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        self.waiting.release()
        self._released.wait(timeout=30)
        return super().get_by_hash(token_hash, instance_uuid)

    def release(self) -> None:
        self._released.set()


class ParityCellLocator:
    """Every instance has a cell: ``even`` or ``odd``, by its uuid's last bit;
    no host is placed, so a per-host purge asks both cells."""

    CELLS: Final = ("even", "odd")

    def cell_of(self, instance_uuid: UUID) -> str:
        return self.CELLS[instance_uuid.int % 2]

    def cell_of_host(self, host: str) -> str | None:
        return None

    def cells(self) -> Sequence[str]:
        return self.CELLS


class RecordingEvents:
    """A ``ConsoleEvents`` that keeps every event, and which use case was
    running (entered ``around``) when each was recorded."""

    def __init__(self) -> None:
        self.events: list[ConsoleEvent] = []
        self.running: list[UseCase] = []
        self.recorded_inside: list[UseCase | None] = []

    @contextlib.contextmanager
    def around(self, use_case: UseCase) -> Iterator[None]:
        self.running.append(use_case)
        try:
            yield
        finally:
            self.running.pop()

    def record(self, event: ConsoleEvent) -> None:
        self.events.append(event)
        self.recorded_inside.append(self.running[-1] if self.running else None)

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        self.record(validated_event(connection, duration))
