"""The periodic purge against real stores (SQLite, PostgreSQL) on a fake
clock that each wait moves; and bug 1816399: purging a compute node's
guests when the stored host is theirs (libvirt) and when it is not (VMware's
ESX host, Ironic's console host)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from console_auth.application import ConsoleAuthService, ConsoleConnectionRepository, ServicePolicy
from console_auth.application.purge import PeriodicPurge
from console_auth.domain import BackendUnavailable
from tests.backends import opened
from tests.fakes import T0, FakeClock, FixedTokenSource

STORES = ["sqlite", "postgresql"]
COMPUTE = "compute-1"


@pytest.fixture(scope="module", params=STORES)
def store_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def repository(store_name: str) -> Iterator[ConsoleConnectionRepository]:
    with opened(store_name) as backend, backend.fresh() as repo:
        yield repo


def service_on(repository: ConsoleConnectionRepository, clock: FakeClock) -> ConsoleAuthService:
    policy = ServicePolicy(purge_batch_size=3, purge_grace=timedelta(minutes=5))
    return ConsoleAuthService(repository, clock, FixedTokenSource(), policy)


class ClockMovingWaits:
    """Each wait moves the fake clock by its delay; stop after ``rounds``."""

    def __init__(self, clock: FakeClock, rounds: int) -> None:
        self.clock = clock
        self.rounds = rounds
        self.granted = 0

    def __call__(self, stop: threading.Event, seconds: float) -> bool:
        self.granted += 1
        if self.granted > self.rounds:
            stop.set()
        else:
            self.clock.advance(timedelta(seconds=seconds))
        return stop.is_set()


def test_the_loop_purges_each_token_once_it_is_past_the_grace(
    repository: ConsoleConnectionRepository,
) -> None:
    clock = FakeClock(T0)
    service = service_on(repository, clock)
    ttls = [60, 60, 120, 600, 3600, 3600, 3600, 7200]
    issued = [
        service.authorize(uuid.uuid4(), COMPUTE, 5900, "novnc", ttl=timedelta(seconds=ttl))
        for ttl in ttls
    ]
    after_each_round: list[int] = []

    def purge() -> int:
        count = service.purge_expired(COMPUTE)
        after_each_round.append(len(service.connections(expired=True, host=COMPUTE)))
        return count

    waits = ClockMovingWaits(clock, rounds=12)  # 12 rounds of ~10 minutes: just past 2 hours
    loop = PeriodicPurge(purge, 600, jitter=0.05, wait=waits)
    loop.run()
    assert (loop.rounds, loop.failures) == (12, 0)
    assert loop.purged == len(ttls) - sum(
        1 for ttl in ttls if T0 + timedelta(seconds=ttl + 300) > clock.now()
    )
    assert after_each_round == sorted(after_each_round, reverse=True)
    for console in issued:
        stored = repository.get_by_hash(console.connection.token_hash)
        gone = console.connection.expires_at + timedelta(minutes=5) <= clock.now()
        assert (stored is None) == gone


def test_a_store_failing_for_some_rounds_does_not_end_the_loop(
    repository: ConsoleConnectionRepository,
) -> None:
    clock = FakeClock(T0)
    service = service_on(repository, clock)
    service.authorize(uuid.uuid4(), COMPUTE, 5900, "novnc", ttl=timedelta(seconds=1))
    failing = iter([True, True, False, False])

    def purge() -> int:
        if next(failing):
            raise BackendUnavailable("SQL token store unavailable: the server is restarting")
        return service.purge_expired()

    loop = PeriodicPurge(purge, 600, wait=ClockMovingWaits(clock, rounds=4))
    loop.run()
    assert (loop.rounds, loop.failures, loop.purged) == (4, 2, 1)


def test_libvirt_like_the_stored_host_is_the_compute_node(
    repository: ConsoleConnectionRepository,
) -> None:
    clock = FakeClock(T0)
    service = service_on(repository, clock)
    guests = [uuid.uuid4() for _ in range(4)]
    for guest in guests:
        service.authorize(guest, COMPUTE, 5900, "novnc", ttl=timedelta(seconds=60))
    clock.advance(timedelta(minutes=7))
    assert service.purge_expired(COMPUTE) == 4
    for guest in guests:
        service.authorize(guest, COMPUTE, 5900, "novnc", ttl=timedelta(seconds=60))
    clock.advance(timedelta(minutes=7))
    assert service.purge_instances(guests) == 4  # either way


def test_vmware_like_the_stored_host_is_not_the_compute_node(
    repository: ConsoleConnectionRepository,
) -> None:
    """Nova bug 1816399: the console's host is the ESX host (or Ironic's
    console host), so a node purging its own host name finds nothing, and
    purging by the instances it runs finds them all."""
    clock = FakeClock(T0)
    service = service_on(repository, clock)
    guests = [uuid.uuid4() for _ in range(5)]
    for n, guest in enumerate(guests):
        service.authorize(
            guest, f"esx-{n % 2}.example.com", 902, "webmks", ttl=timedelta(seconds=60)
        )
    elsewhere = service.authorize(
        uuid.uuid4(), "esx-0.example.com", 902, "webmks", ttl=timedelta(seconds=60)
    )
    clock.advance(timedelta(minutes=7))
    assert service.purge_expired(COMPUTE) == 0
    assert service.purge_instances(guests) == 5
    assert repository.get_by_hash(elsewhere.connection.token_hash) is not None  # not this node's
