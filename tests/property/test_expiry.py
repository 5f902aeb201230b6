"""Expiry is exact to the microsecond; purge removes exactly what expired.

Both run over every backend: each example builds its service on an empty
repository from ``backend.fresh()``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.application import DEFAULT_PURGE_GRACE, ServicePolicy
from console_auth.domain import ConsoleType, InvalidRequest, InvalidToken, InvalidTokenReason
from tests.backends import Backend
from tests.fakes import T0
from tests.property.strategies import ONE_US, aware_datetimes, fixed_offsets, ttls
from tests.property.support import harness

INSTANCE = uuid.UUID("0b7e5a52-8d8b-4f43-9d1e-3f0f5b3c2a10")
MINUS_5 = timezone(timedelta(hours=-5))


@st.composite
def ttl_and_check_offsets(draw: st.DrawFn) -> tuple[timedelta, timedelta]:
    """A TTL and when to check, relative to issue: often right at the edge."""
    ttl = draw(ttls)
    offset = draw(
        st.one_of(
            st.sampled_from([ttl - ONE_US, ttl, ttl + ONE_US, timedelta(0)]),
            st.timedeltas(min_value=-ttl, max_value=2 * ttl),
        )
    )
    return ttl, offset


@given(issued=aware_datetimes(), ttl_offset=ttl_and_check_offsets())
@example(issued=T0, ttl_offset=(timedelta(seconds=60), timedelta(seconds=60)))  # at expiry
@example(issued=T0, ttl_offset=(timedelta(seconds=60), timedelta(seconds=60) - ONE_US))
@example(issued=T0.astimezone(MINUS_5), ttl_offset=(ONE_US, ONE_US))
@example(issued=T0.astimezone(MINUS_5), ttl_offset=(ONE_US, timedelta(0)))
def test_valid_iff_checked_before_expiry(
    backend: Backend, issued: datetime, ttl_offset: tuple[timedelta, timedelta]
) -> None:
    ttl, offset = ttl_offset
    with harness(backend, start=issued) as h:
        console = h.authorize(INSTANCE, "compute-1", 5900, ConsoleType.NOVNC, ttl=ttl)
        h.clock.set(issued + offset)
        secret = console.token.get_secret_value()
        if offset < ttl:
            connection = h.service.validate(secret, INSTANCE)
            assert connection.expires_at == issued + ttl
            assert connection.expires_at.utcoffset() == timedelta(0)
            assert connection.issued_at is not None
            assert connection.issued_at == issued
            assert connection.issued_at.utcoffset() == timedelta(0)
        else:
            with pytest.raises(InvalidToken) as refused:
                h.service.validate(secret, INSTANCE)
            assert refused.value.reason is InvalidTokenReason.EXPIRED


@given(
    issued=st.datetimes(min_value=datetime(9999, 11, 1), timezones=fixed_offsets)
    | st.datetimes(max_value=datetime(1, 1, 3), timezones=fixed_offsets),
    ttl=ttls,
)
@example(issued=datetime.max.replace(tzinfo=UTC), ttl=ONE_US)
@example(issued=datetime.max.replace(tzinfo=UTC) - ONE_US, ttl=ONE_US)
def test_an_expiry_beyond_the_calendar_is_an_invalid_request(
    backend: Backend, issued: datetime, ttl: timedelta
) -> None:
    try:
        expires_at: datetime | None = issued.astimezone(UTC) + ttl
    except OverflowError:
        expires_at = None
    with harness(backend, start=issued) as h:
        try:
            console = h.authorize(INSTANCE, "compute-1", 5900, ConsoleType.NOVNC, ttl=ttl)
        except InvalidRequest:
            # A clock must give UTC; for one that does not, only the error type is pinned.
            assert expires_at is None or issued.utcoffset() != timedelta(0)
            h.assert_store_is_exactly_issued(purge=False)
            return
        assert console.connection.expires_at == expires_at
        assert h.service.validate(console.token.get_secret_value()) == console.connection


PURGE_HOSTS = {
    # canonical form -> spellings a caller may use for it
    "compute-1": ("compute-1",),
    "Compute-1": ("Compute-1",),  # the reference store compares host text exactly
    "2001:db8::1": ("2001:db8::1", "2001:DB8:0:0::1", "2001:0db8::0001"),
}


@dataclass(frozen=True)
class PurgeScenario:
    issues: tuple[tuple[timedelta, timedelta, str, str], ...]
    """(clock advance before issuing, ttl, canonical host, spelling used)."""
    now: datetime
    host: tuple[str, str] | None
    """(canonical, spelling) of the purge's host filter, or no filter."""
    batch: int
    grace: timedelta
    """The policy's purge grace: only what expired longer ago is purged."""


host_choices = st.sampled_from(sorted(PURGE_HOSTS)).flatmap(
    lambda canonical: st.tuples(st.just(canonical), st.sampled_from(PURGE_HOSTS[canonical]))
)


@st.composite
def purge_scenarios(draw: st.DrawFn) -> PurgeScenario:
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0, 1, 10**6]).map(lambda us: timedelta(microseconds=us))
                | st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=3)),
                st.sampled_from([ONE_US, timedelta(seconds=1), timedelta(seconds=2)])
                | st.timedeltas(min_value=ONE_US, max_value=timedelta(seconds=5)),
                host_choices,
            ),
            max_size=10,
        )
    )
    grace = draw(
        st.sampled_from([timedelta(0), ONE_US, timedelta(seconds=1)])
        | st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=5))
    )
    issued_at = T0
    expiries = []
    for advance, ttl, _ in steps:
        issued_at += advance
        expiries.append(issued_at + ttl)
    edges = [e + grace + nudge for e in expiries for nudge in (-ONE_US, timedelta(0), ONE_US)]
    now = draw(
        (st.sampled_from(edges) if edges else st.nothing())
        | st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=40)).map(
            lambda d: T0 + d
        )
    )
    return PurgeScenario(
        issues=tuple((a, t, c, s) for a, t, (c, s) in steps),
        now=now,
        host=draw(st.none() | host_choices),
        batch=draw(st.sampled_from([1, 2, 3])),
        grace=grace,
    )


@given(scenario=purge_scenarios())
@example(  # an exact multiple of the batch: the loop must make one more empty call
    scenario=PurgeScenario(
        issues=tuple((timedelta(0), ONE_US, "compute-1", "compute-1") for _ in range(4)),
        now=T0 + ONE_US,
        host=None,
        batch=2,
        grace=timedelta(0),
    )
)
@example(  # the host filter matches another spelling of the same address
    scenario=PurgeScenario(
        issues=(
            (timedelta(0), ONE_US, "2001:db8::1", "2001:DB8:0:0::1"),
            (timedelta(0), ONE_US, "compute-1", "compute-1"),
            (timedelta(0), timedelta(seconds=1), "2001:db8::1", "2001:db8::1"),
        ),
        now=T0 + ONE_US,
        host=("2001:db8::1", "2001:0db8::0001"),
        batch=1,
        grace=timedelta(0),
    )
)
@example(  # the default grace: expired exactly that long ago is purged, a microsecond less is not
    scenario=PurgeScenario(
        issues=(
            (timedelta(0), ONE_US, "compute-1", "compute-1"),
            (timedelta(0), ONE_US * 2, "compute-1", "compute-1"),
        ),
        now=T0 + ONE_US + DEFAULT_PURGE_GRACE,
        host=None,
        batch=1,
        grace=DEFAULT_PURGE_GRACE,
    )
)
def test_purge_removes_exactly_the_expired(backend: Backend, scenario: PurgeScenario) -> None:
    policy = ServicePolicy(purge_batch_size=scenario.batch, purge_grace=scenario.grace)
    with harness(backend, policy=policy) as h:
        canonical_of: dict[str, str] = {}
        for advance, ttl, canonical, spelling in scenario.issues:
            h.clock.advance(advance)
            issued = h.authorize(INSTANCE, spelling, 5900, ConsoleType.SERIAL, ttl=ttl)
            assert issued.connection.host == canonical
            canonical_of[issued.token.get_secret_value()] = canonical
        h.clock.set(scenario.now)
        wanted_host = None if scenario.host is None else scenario.host[0]
        cutoff = scenario.now - scenario.grace
        doomed = {
            token
            for token, connection in h.issued.items()
            if connection.expires_at <= cutoff and wanted_host in (None, canonical_of[token])
        }
        host_filter = None if scenario.host is None else scenario.host[1]

        assert h.service.purge_expired(host_filter) == len(doomed)

        for token, connection in h.issued.items():
            if connection.expires_at > scenario.now:
                assert h.service.validate(token, INSTANCE) == connection
                continue
            with pytest.raises(InvalidToken) as refused:
                h.service.validate(token, INSTANCE)
            expected = (
                InvalidTokenReason.UNKNOWN if token in doomed else InvalidTokenReason.EXPIRED
            )
            assert refused.value.reason is expected
        assert h.service.purge_expired(host_filter) == 0
        assert h.service.purge_expired() == sum(
            1 for c in h.issued.values() if c.expires_at <= cutoff
        ) - len(doomed)
