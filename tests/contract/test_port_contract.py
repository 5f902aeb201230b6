"""The behaviour every port lease and reservation adapter must share."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from console_auth.adapters.sql import SqlPortLeaseRepository
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository
from console_auth.domain import hash_token
from console_auth.domain.leases import LeaseKind, PortLease
from tests.backends import PortBackend
from tests.fakes import T0

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")


@pytest.fixture
def repos(
    port_backend: PortBackend,
) -> Iterator[tuple[PortLeaseRepository, PortReservationRepository]]:
    with port_backend.fresh_ports() as pair:
        yield pair


@pytest.fixture
def leases(repos: tuple[PortLeaseRepository, PortReservationRepository]) -> PortLeaseRepository:
    return repos[0]


@pytest.fixture
def reservations(
    repos: tuple[PortLeaseRepository, PortReservationRepository],
) -> PortReservationRepository:
    return repos[1]


def a_lease(
    kind: LeaseKind = LeaseKind.CONNECTED,
    *,
    port: int = 10000,
    host: str = "compute-1",
    ttl: timedelta = timedelta(seconds=30),
    token: str = "t",
    instance: uuid.UUID = INSTANCE,
    **fields: Any,
) -> PortLease:
    return PortLease(
        host=host,
        port=port,
        instance_uuid=instance,
        kind=kind,
        lease_id=uuid.uuid4().hex,
        token_hash=hash_token(token),
        proxy_id="proxy-a" if kind is LeaseKind.CONNECTED else None,
        since=fields.pop("since", T0),
        expires_at=T0 + ttl,
        **fields,
    )


def test_a_claimed_lease_is_listed_as_stored(leases: PortLeaseRepository) -> None:
    lease = a_lease()
    assert leases.claim(lease, T0) is None
    assert leases.leases(T0) == [lease]


def test_a_live_connection_blocks_every_claim(leases: PortLeaseRepository) -> None:
    connected = a_lease()
    leases.claim(connected, T0)
    assert leases.claim(a_lease(), T0) == connected
    assert leases.claim(a_lease(LeaseKind.HELD), T0) == connected
    assert leases.leases(T0) == [connected]


def test_a_live_hold_blocks_holds_but_not_connections(leases: PortLeaseRepository) -> None:
    hold = a_lease(LeaseKind.HELD)
    leases.claim(hold, T0)
    assert leases.claim(a_lease(LeaseKind.HELD), T0) == hold
    connected = a_lease(token="other")
    assert leases.claim(connected, T0) is None
    assert leases.leases(T0) == [connected]


def test_an_expired_lease_blocks_nothing(leases: PortLeaseRepository) -> None:
    leases.claim(a_lease(ttl=timedelta(seconds=1)), T0)
    later = T0 + timedelta(seconds=1)
    assert leases.leases(later) == []
    fresh = a_lease(since=later, ttl=timedelta(seconds=31))
    assert leases.claim(fresh, later) is None
    assert leases.leases(later) == [fresh]


def test_renew_moves_the_expiry_of_the_same_live_lease_only(leases: PortLeaseRepository) -> None:
    lease = a_lease()
    leases.claim(lease, T0)
    renewed = leases.renew(lease, T0 + timedelta(minutes=5), T0 + timedelta(seconds=10))
    assert renewed == lease.model_copy(update={"expires_at": T0 + timedelta(minutes=5)})
    assert leases.leases(T0 + timedelta(minutes=4)) == [renewed]
    stranger = a_lease()
    assert leases.renew(stranger, T0 + timedelta(hours=1), T0) is None
    assert leases.renew(lease, T0 + timedelta(hours=1), T0 + timedelta(minutes=5)) is None


def test_release_needs_the_same_lease_id(leases: PortLeaseRepository) -> None:
    lease = a_lease()
    leases.claim(lease, T0)
    assert leases.release(a_lease()) is False
    assert leases.leases(T0) == [lease]
    assert leases.release(lease) is True
    assert leases.release(lease) is False
    assert leases.leases(T0) == []


def test_leases_are_filtered_and_ordered(leases: PortLeaseRepository) -> None:
    other = uuid.uuid4()
    stored = [
        a_lease(host="compute-2", port=1),
        a_lease(host="compute-1", port=20),
        a_lease(host="compute-1", port=3, instance=other),
    ]
    for lease in stored:
        leases.claim(lease, T0)
    assert [(x.host, x.port) for x in leases.leases(T0)] == [
        ("compute-1", 3),
        ("compute-1", 20),
        ("compute-2", 1),
    ]
    assert [x.port for x in leases.leases(T0, host="compute-1")] == [3, 20]
    assert [x.port for x in leases.leases(T0, instance_uuid=other)] == [3]
    assert leases.leases(T0, host="Compute-1") == []


def test_purge_by_host_and_in_batches(leases: PortLeaseRepository) -> None:
    leases.claim(a_lease(port=1), T0)
    leases.claim(a_lease(port=2, ttl=timedelta(seconds=1)), T0)
    leases.claim(a_lease(port=3, ttl=timedelta(seconds=1)), T0)
    leases.claim(a_lease(port=4, host="compute-2", ttl=timedelta(seconds=1)), T0)
    later = T0 + timedelta(seconds=1)
    assert leases.purge_expired(later, "compute-2", 10) == 1
    assert leases.purge_expired(later, None, 1) == 2  # batches of one, to the end
    assert leases.purge_expired(later, None, 10) == 0
    assert [x.port for x in leases.leases(T0)] == [1]


def test_delete_by_instance(leases: PortLeaseRepository) -> None:
    other = uuid.uuid4()
    leases.claim(a_lease(port=1), T0)
    leases.claim(a_lease(port=2, ttl=timedelta(seconds=1)), T0)
    leases.claim(a_lease(port=3, instance=other), T0)
    assert leases.delete_by_instance(INSTANCE) == 2
    assert [x.port for x in leases.leases(T0)] == [3]


def _after_the_claims_read(
    leases: PortLeaseRepository, between: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run ``between`` once, in the next ``claim``, right after it reads the
    port and before it writes. The in-memory claim reads and writes under one
    lock, leaving no such window, so there ``between`` runs first."""
    reads: dict[type[PortLeaseRepository], str] = {SqlPortLeaseRepository: "_current"}
    name = reads.get(type(leases))
    if name is None:
        claim = leases.claim

        def claiming(lease: PortLease, now: datetime) -> PortLease | None:
            monkeypatch.setattr(leases, "claim", claim)
            between()
            return claim(lease, now)

        monkeypatch.setattr(leases, "claim", claiming)
        return
    read = getattr(leases, name)

    def reading(*args: Any) -> Any:
        monkeypatch.setattr(leases, name, read)  # once: ``between`` may read too
        found = read(*args)
        between()
        return found

    monkeypatch.setattr(leases, name, reading)


def test_a_heartbeat_between_a_takeovers_read_and_write_keeps_one_holder(
    leases: PortLeaseRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: a proxy takes over a lease it read as expired while the old
    holder, whose clock is a second behind, renews it. Both must not win."""
    old = a_lease()
    assert leases.claim(old, T0) is None
    takeover_at = old.expires_at
    heartbeats: list[PortLease | None] = []

    def heartbeat() -> None:
        later = takeover_at + timedelta(seconds=30)
        heartbeats.append(leases.renew(old, later, takeover_at - timedelta(seconds=1)))

    _after_the_claims_read(leases, heartbeat, monkeypatch)
    new = a_lease(token="new", since=takeover_at, ttl=timedelta(seconds=60))
    blocker = leases.claim(new, takeover_at)

    assert len(heartbeats) == 1
    (renewed,) = heartbeats
    claimed = blocker is None
    assert (renewed is not None) != claimed  # exactly one of them won
    holder = new if claimed else renewed
    assert blocker in (None, renewed)
    assert leases.leases(takeover_at) == [holder]


def test_reservations_are_unique_per_host_and_port(
    reservations: PortReservationRepository,
) -> None:
    assert reservations.reserve("compute-1", 10000) is True
    assert reservations.reserve("compute-1", 10000) is False
    assert reservations.reserve("compute-2", 10000) is True
    assert reservations.reserve("compute-1", 10005) is True
    assert reservations.reserved("compute-1", 10000, 10004) == {10000}
    assert reservations.reserved("compute-1", 1, 65535) == {10000, 10005}
    assert reservations.release("compute-1", 10000) is True
    assert reservations.release("compute-1", 10000) is False
    assert reservations.reserved("compute-1", 1, 65535) == {10005}


def race(threads: int, attempt: Callable[[int], bool]) -> list[int]:
    """Start ``threads`` attempts at once; return the indexes that won."""
    barrier = threading.Barrier(threads)
    winners: list[int] = []
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            if attempt(index):
                winners.append(index)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    return winners


def _claims(leases: PortLeaseRepository, claims: list[PortLease], index: int) -> bool:
    return leases.claim(claims[index], T0) is None


def _reserves(reservations: PortReservationRepository, port: int, _index: int) -> bool:
    return reservations.reserve("compute-1", port)


@pytest.mark.parametrize("kind", [LeaseKind.CONNECTED, LeaseKind.HELD])
def test_sixteen_threads_racing_for_a_port_have_one_winner(
    leases: PortLeaseRepository, kind: LeaseKind
) -> None:
    for round_ in range(5):
        claims = [a_lease(kind, port=20000 + round_, token=str(i)) for i in range(16)]
        winners = race(16, functools.partial(_claims, leases, claims))
        assert len(winners) == 1
        assert leases.leases(T0, host="compute-1")[-1] == claims[winners[0]]


def test_sixteen_threads_racing_to_reserve_a_port_have_one_winner(
    reservations: PortReservationRepository,
) -> None:
    for port in range(30000, 30005):
        assert len(race(16, functools.partial(_reserves, reservations, port))) == 1
