"""Doubles for the clock and token ports: tests decide time and tokens."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

from console_auth.domain import TOKEN_LENGTH

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
