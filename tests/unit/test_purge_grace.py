"""Purge deletes only what expired more than a grace period ago: validity is
decided at ``validate``, so a purger whose clock runs ahead must not delete
live tokens (or live serial-port leases)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import (
    DEFAULT_PURGE_GRACE,
    ConsoleAuthService,
    ConsolePortService,
    ServicePolicy,
)
from console_auth.domain import InvalidRequest, InvalidToken, InvalidTokenReason
from console_auth.domain.errors import PortAlreadyConnected
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource

INSTANCE = uuid.UUID("0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70")
US = timedelta(microseconds=1)


def test_the_default_grace_is_a_few_minutes() -> None:
    assert ServicePolicy().purge_grace == DEFAULT_PURGE_GRACE == timedelta(minutes=5)


def test_a_purger_whose_clock_runs_30_s_ahead_deletes_no_live_token() -> None:
    repository = InMemoryConsoleConnectionRepository()
    clock, ahead = FakeClock(T0), FakeClock(T0 + timedelta(seconds=30))
    tokens = FixedTokenSource()
    service = ConsoleAuthService(repository, clock, tokens)
    purger = ConsoleAuthService(repository, ahead, tokens)
    issued = [
        service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=s))
        for s in range(1, 101)  # expiring one a second, over the purger's skew
    ]
    assert purger.purge_expired() == 0
    assert [service.validate(i.token.get_secret_value()) for i in issued] == [
        i.connection for i in issued
    ]


def test_tokens_expired_longer_ago_than_the_grace_are_purged_at_the_exact_boundary() -> None:
    clock = FakeClock(T0)
    service = ConsoleAuthService(InMemoryConsoleConnectionRepository(), clock, FixedTokenSource())
    early = service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=10))
    late = service.authorize(INSTANCE, "compute-1", 5901, "novnc", ttl=timedelta(seconds=10) + US)
    clock.set(T0 + timedelta(seconds=10) + DEFAULT_PURGE_GRACE - US)
    assert service.purge_expired() == 0  # expired, but not a grace ago: validate says expired
    clock.advance(US)  # early expired exactly the grace ago: purged; late a microsecond less
    assert service.purge_expired() == 1
    with pytest.raises(InvalidToken) as gone:
        service.validate(early.token.get_secret_value())
    assert gone.value.reason is InvalidTokenReason.UNKNOWN
    with pytest.raises(InvalidToken) as kept:
        service.validate(late.token.get_secret_value())
    assert kept.value.reason is InvalidTokenReason.EXPIRED
    clock.advance(US)
    assert service.purge_expired("compute-1") == 1


def test_a_zero_grace_purges_at_expiry() -> None:
    clock = FakeClock(T0)
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        clock,
        FixedTokenSource(),
        ServicePolicy(purge_grace=timedelta(0)),
    )
    service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=10))
    clock.advance(timedelta(seconds=10) - US)
    assert service.purge_expired() == 0
    clock.advance(US)
    assert service.purge_expired() == 1


def test_a_clock_at_the_start_of_time_purges_nothing() -> None:
    clock = FakeClock(T0)
    service = ConsoleAuthService(InMemoryConsoleConnectionRepository(), clock, FixedTokenSource())
    service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    clock.set(datetime.min.replace(tzinfo=UTC))
    assert service.purge_expired() == 0


@pytest.mark.parametrize(
    "grace", [timedelta(seconds=-1), timedelta(days=1) + US, 300, 300.0, "PT5M", None]
)
def test_a_bad_grace_is_refused(grace: object) -> None:
    with pytest.raises(InvalidRequest, match="purge grace"):
        ServicePolicy(purge_grace=grace)  # type: ignore[arg-type]


@pytest.mark.parametrize("grace", [timedelta(0), US, timedelta(days=1)])
def test_the_edges_of_the_grace_are_accepted(grace: timedelta) -> None:
    assert ServicePolicy(purge_grace=grace).purge_grace == grace


def test_a_lease_purger_whose_clock_runs_ahead_frees_no_live_port() -> None:
    """A deleted live lease is a free port: a second client would get it."""
    leases, reservations = InMemoryPortLeaseRepository(), InMemoryPortReservationRepository()
    clock, ahead, tokens = FakeClock(T0), FakeClock(T0 + timedelta(seconds=30)), FixedTokenSource()
    repository, lease_ids = InMemoryConsoleConnectionRepository(), FixedLeaseIdSource()
    policy = ServicePolicy(lease_ttl=timedelta(seconds=20))
    consoles = ConsoleAuthService(repository, clock, tokens, policy)
    ports = ConsolePortService(consoles, leases, reservations, lease_ids)
    ahead_consoles = ConsoleAuthService(repository, ahead, tokens, policy)
    purger = ConsolePortService(ahead_consoles, leases, reservations, lease_ids)
    token = ports.authorize_serial(INSTANCE, "compute-1", [10000]).token.get_secret_value()
    lease = ports.connect(token, INSTANCE, "proxy-a")
    assert purger.purge_expired() == 0  # the lease has 20 s left; the purger thinks -10 s
    with pytest.raises(PortAlreadyConnected):
        ports.connect(token, INSTANCE, "proxy-b")
    assert ports.heartbeat(lease).lease_id == lease.lease_id
    clock.advance(timedelta(seconds=20) + DEFAULT_PURGE_GRACE)  # expired a grace ago
    assert ports.purge_expired() == 1
