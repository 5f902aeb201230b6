"""The workload both sides run, written down once so they cannot drift apart.

The library and the floor must store the same bytes and read the same rows;
a floor that stored less (no options, no URL base) would flatter it and make
every ratio meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from console_auth.application import ConsoleAuthService
from console_auth.domain import ConsoleOptions, InvalidToken

T0: Final = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
"""A fixed start, so rows seeded with raw SQL and rows the library writes
agree on what is expired without racing the wall clock."""

ROUND_STEP: Final = timedelta(hours=1)
"""Each repetition starts this much later, so its tokens never overlap the
previous repetition's expiry window."""

TTL: Final = timedelta(minutes=10)
TTL_US: Final = TTL // timedelta(microseconds=1)
LONG_TTL: Final = timedelta(days=30)
"""Expiry of background rows: they must survive every purge of the run."""

HOST: Final = "compute-017.cell1.example.org"
PORT: Final = 5900
CONSOLE_TYPE: Final = "novnc"
ACCESS_URL_BASE: Final = "https://console.example.org/vnc_lite.html?path=websockify"
OPTIONS: Final[dict[str, Any]] = {
    "internal_access_path": "/websockify",
    "use_tls": True,
    "tls_port": 5901,
}
TOKENS_PER_INSTANCE: Final = 2
"""An instance typically has a console open and one being reissued, so a
revoke deletes a couple of rows, not one."""

STORED_OPTIONS: Final[dict[str, Any]] = ConsoleOptions.model_validate(OPTIONS).model_dump(
    mode="json"
)
"""The options document as the library stores it, so the floor's JSON is as
long as the library's (computed once, outside any timing)."""


class BenchClock:
    """A clock the benchmark moves between rounds.

    Kept here rather than borrowed from ``tests/``: the benchmark must run
    from an installed tree where the tests are not importable.
    """

    def __init__(self, start: datetime = T0) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How much work one run does; ``--quick`` shrinks all of it."""

    ops: int
    """Operations per timed batch (authorize, validate, ...)."""
    repeat: int
    """Timed repetitions per side; the median is reported."""
    warmup_ops: int
    """Operations per side in the untimed warm-up round."""
    background: int
    """Long-lived rows present throughout, so lookups never hit an empty table."""
    purge_rows: int
    """Expired rows seeded before each timed purge."""
    purge_batch: int
    """``ServicePolicy.purge_batch_size``, used by the floor too."""
    small: int
    """Stored tokens for the small side of the growth measurement."""
    big: int
    """Stored tokens for the big side of the growth measurement."""
    sample: int
    """Validate hits per repetition of the growth measurement."""
    seed: int

    def __post_init__(self) -> None:
        for name in ("ops", "repeat", "purge_rows", "purge_batch", "small", "big", "sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("warmup_ops", "background"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.ops < TOKENS_PER_INSTANCE or self.ops % TOKENS_PER_INSTANCE:
            raise ValueError(f"ops must be a positive multiple of {TOKENS_PER_INSTANCE}")
        if self.warmup_ops % TOKENS_PER_INSTANCE:
            raise ValueError(f"warm-up ops must be a multiple of {TOKENS_PER_INSTANCE}")
        if self.sample > self.small:
            raise ValueError("the growth sample cannot exceed the small table")


def authorize_all(service: ConsoleAuthService, instances: Sequence[UUID]) -> list[str]:
    """The library side of every backend's authorize phase: one console each."""
    authorize = service.authorize
    return [
        authorize(
            instance,
            HOST,
            PORT,
            CONSOLE_TYPE,
            options=OPTIONS,
            access_url_base=ACCESS_URL_BASE,
            ttl=TTL,
        ).token.get_secret_value()
        for instance in instances
    ]


def validate_all(service: ConsoleAuthService, tokens: Sequence[str]) -> int:
    """Validate each token; return how many opened a console."""
    validate = service.validate
    hits = 0
    for token in tokens:
        try:
            validate(token)
        except InvalidToken:
            continue
        hits += 1
    return hits


def revoke_all(service: ConsoleAuthService, instances: Sequence[UUID]) -> int:
    """Revoke each instance; return how many tokens went."""
    revoke = service.revoke_instance
    return sum(revoke(instance) for instance in instances)
