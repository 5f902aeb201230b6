"""Constrained values, each rule written once: ports, TTLs, proxy ids, and
exact UTC times as integer microseconds.

Models take the annotated types; code that checks a value outside a model
(request arguments, settings text) uses the predicates and constants here,
so a bound is never spelled twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, TypeGuard

from pydantic import AfterValidator, Field

from .errors import InvalidRequest

MIN_PORT: Final = 1
MAX_PORT: Final = 65535

Port = Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT, strict=True)]
"""A TCP port: an ``int`` (never ``bool`` or text) from ``MIN_PORT`` to ``MAX_PORT``."""


def is_port(value: object) -> TypeGuard[int]:
    """``Port``'s rule for a value outside a model."""
    return type(value) is int and MIN_PORT <= value <= MAX_PORT


MAX_TTL: Final = timedelta(days=30)
"""Tokens are for opening a console now, not for bookmarking; the bound also
keeps memcached's relative expiry meaningful."""
MAX_TTL_SECONDS: Final = MAX_TTL // timedelta(seconds=1)

TtlSeconds = Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)]
"""A lifetime in whole seconds, as settings and the command line give it: 1 to ``MAX_TTL``."""


def parse_ttl(value: object) -> timedelta:
    """A token lifetime for callers outside a model: a ``timedelta`` above
    zero and at most ``MAX_TTL``, else ``InvalidRequest``."""
    if not isinstance(value, timedelta) or not timedelta(0) < value <= MAX_TTL:
        raise InvalidRequest(f"ttl must be a timedelta above zero and at most {MAX_TTL}")
    return value


MAX_PROXY_ID: Final = 255
_PROXY_ID_PROBLEM: Final = f"must be printable text of 1-{MAX_PROXY_ID} characters"


def _is_proxy_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_PROXY_ID and value.isprintable()


def _check_proxy_id(value: str) -> str:
    if not _is_proxy_id(value):
        raise ValueError(_PROXY_ID_PROBLEM)
    return value


def parse_proxy_id(value: object) -> str:
    """``ProxyId`` for callers outside a model: ``InvalidRequest``."""
    if not _is_proxy_id(value):
        raise InvalidRequest(f"proxy id {_PROXY_ID_PROBLEM}")
    return value


ProxyId = Annotated[str, Field(strict=True), AfterValidator(_check_proxy_id)]
"""Names a proxy process in serial-port leases: printable ``str`` of 1-255 characters."""


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_microseconds(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (no float on the way); a
    naive time is refused, never read as local time."""
    if moment.tzinfo is not UTC and moment.utcoffset() is None:  # UTC first: the common case
        raise InvalidRequest("time must be timezone-aware")
    return (moment - EPOCH) // _MICROSECOND


def from_microseconds(value: int) -> datetime:
    """Inverse of ``to_microseconds``, in UTC; covers all of ``datetime``'s years 1-9999."""
    return EPOCH + timedelta(microseconds=value)
