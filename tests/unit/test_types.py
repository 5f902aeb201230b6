"""The constrained types: each rule once, the same at a model field and at a
check outside one, and exact microsecond times over all of ``datetime``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import console_auth.application
from console_auth.domain import InvalidRequest
from console_auth.domain.types import (
    EPOCH,
    MAX_PORT,
    MAX_PROXY_ID,
    MAX_TTL,
    MAX_TTL_SECONDS,
    MIN_PORT,
    Port,
    ProxyId,
    TtlSeconds,
    from_microseconds,
    is_port,
    parse_proxy_id,
    parse_ttl,
    to_microseconds,
)

ONE_US: Final = timedelta(microseconds=1)
PORT: Final = TypeAdapter(Port)
PROXY_ID: Final = TypeAdapter(ProxyId)
TTL_SECONDS: Final = TypeAdapter(TtlSeconds)
FIRST_US: Final = -62_135_596_800_000_000
"""0001-01-01T00:00:00Z."""
LAST_US: Final = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999Z."""


def accepts(adapter: TypeAdapter[Any], value: object) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def test_the_bounds() -> None:
    assert (MIN_PORT, MAX_PORT) == (1, 65535)
    assert timedelta(days=30) == MAX_TTL
    assert MAX_TTL_SECONDS == 2_592_000
    assert MAX_PROXY_ID == 255


def test_the_application_exports_the_domains_max_ttl() -> None:
    assert console_auth.application.MAX_TTL is MAX_TTL


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (0, False),
        (1, True),
        (65535, True),
        (65536, False),
        (-1, False),
        (True, False),
        (False, False),
        ("1", False),
        (b"1", False),
        (1.0, False),
        (None, False),
    ],
)
def test_port_boundaries(value: object, valid: bool) -> None:
    assert accepts(PORT, value) is valid
    assert is_port(value) is valid


@given(st.integers() | st.booleans() | st.floats() | st.text(max_size=6) | st.none())
@example(MIN_PORT - 1)
@example(MAX_PORT + 1)
def test_is_port_is_the_port_types_rule(value: object) -> None:
    assert is_port(value) is accepts(PORT, value)


@pytest.mark.parametrize(
    ("value", "valid"),
    [(0, False), (1, True), (MAX_TTL_SECONDS, True), (MAX_TTL_SECONDS + 1, False), ("600", True)],
)
def test_ttl_seconds_boundaries(value: object, valid: bool) -> None:
    """Lax, like every setting: the environment gives text."""
    assert accepts(TTL_SECONDS, value) is valid


@pytest.mark.parametrize("ttl", [ONE_US, timedelta(minutes=10), MAX_TTL])
def test_a_ttl_in_bounds_is_returned(ttl: timedelta) -> None:
    assert parse_ttl(ttl) is ttl


@pytest.mark.parametrize("ttl", [timedelta(0), -ONE_US, MAX_TTL + ONE_US, 60, 60.0, "60", True])
def test_a_ttl_out_of_bounds_is_an_invalid_request(ttl: object) -> None:
    with pytest.raises(InvalidRequest, match="ttl must be a timedelta"):
        parse_ttl(ttl)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", False),
        ("p", True),
        ("compute-1:4242", True),
        ("é" * MAX_PROXY_ID, True),
        ("p" * (MAX_PROXY_ID + 1), False),
        ("proxy\n", False),
        ("proxy\x00", False),
        (b"proxy", False),
        (7, False),
        (None, False),
    ],
)
def test_proxy_id_boundaries(value: object, valid: bool) -> None:
    assert accepts(PROXY_ID, value) is valid
    if valid:
        assert parse_proxy_id(value) == value
    else:
        with pytest.raises(InvalidRequest, match="proxy id must be printable") as caught:
            parse_proxy_id(value)
        assert repr(value) not in str(caught.value)


@given(st.text(max_size=MAX_PROXY_ID + 2))
def test_parse_proxy_id_is_the_proxy_id_types_rule(value: str) -> None:
    try:
        parse_proxy_id(value)
    except InvalidRequest:
        assert not accepts(PROXY_ID, value)
    else:
        assert accepts(PROXY_ID, value)


def test_microsecond_ends_of_the_datetime_range() -> None:
    first = datetime.min.replace(tzinfo=UTC)
    last = datetime.max.replace(tzinfo=UTC)
    assert (to_microseconds(first), to_microseconds(last)) == (FIRST_US, LAST_US)
    assert (from_microseconds(FIRST_US), from_microseconds(LAST_US)) == (first, last)
    assert to_microseconds(EPOCH) == 0


@given(st.datetimes(timezones=st.just(UTC)))
@example(datetime.min.replace(tzinfo=UTC))
@example(datetime.max.replace(tzinfo=UTC))
def test_utc_to_microseconds_and_back_is_exact(moment: datetime) -> None:
    back = from_microseconds(to_microseconds(moment))
    assert back == moment
    assert back.tzinfo is UTC


@given(st.integers(FIRST_US, LAST_US))
@example(FIRST_US)
@example(LAST_US)
def test_microseconds_to_utc_and_back_is_exact(value: int) -> None:
    assert to_microseconds(from_microseconds(value)) == value


@given(st.integers(max_value=FIRST_US - 1) | st.integers(min_value=LAST_US + 1))
def test_microseconds_outside_the_range_overflow(value: int) -> None:
    with pytest.raises(OverflowError):
        from_microseconds(value)


offsets = st.builds(
    timezone,
    st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23)),
)


@given(
    st.datetimes(
        min_value=datetime.min + timedelta(days=1),
        max_value=datetime.max - timedelta(days=1),
        timezones=offsets,
    )
)
def test_an_aware_time_is_its_utc_instant(moment: datetime) -> None:
    assert to_microseconds(moment) == to_microseconds(moment.astimezone(UTC))
    assert from_microseconds(to_microseconds(moment)) == moment


@given(st.datetimes(timezones=st.just(UTC)), st.datetimes(timezones=st.just(UTC)))
def test_microseconds_keep_the_order(a: datetime, b: datetime) -> None:
    assert (a < b) is (to_microseconds(a) < to_microseconds(b))


@given(st.datetimes(timezones=st.none()))
@example(datetime(1970, 1, 1))
def test_a_naive_time_is_refused(moment: datetime) -> None:
    with pytest.raises(InvalidRequest, match="time must be timezone-aware"):
        to_microseconds(moment)
