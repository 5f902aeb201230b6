"""Helpers for service-level properties that run over every backend.

Stored data is observed only through the service (validate, purge), never
through an adapter's private state, so the same check works on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from console_auth.application import (
    MAX_TTL,
    ConsoleAuthService,
    ServicePolicy,
    TokenSource,
)
from console_auth.domain import (
    ConsoleConnection,
    InvalidToken,
    InvalidTokenReason,
    IssuedConsole,
)
from tests.backends import Backend
from tests.fakes import T0, FakeClock, FixedTokenSource


class RecordingTokenSource:
    """Hands out another source's tokens and remembers each one, so a test
    knows the token a refused ``authorize`` drew and can prove it unstored."""

    def __init__(self, source: TokenSource | None = None) -> None:
        self._source = source or FixedTokenSource()
        self.handed_out: list[str] = []

    def new_token(self) -> str:
        token = self._source.new_token()
        self.handed_out.append(token)
        return token


@dataclass
class Harness:
    service: ConsoleAuthService
    clock: FakeClock
    tokens: RecordingTokenSource
    issued: dict[str, ConsoleConnection] = field(default_factory=dict)

    def authorize(self, *args: Any, **kwargs: Any) -> IssuedConsole:
        """``service.authorize``, remembering what was issued."""
        issued = self.service.authorize(*args, **kwargs)
        self.issued[issued.token.get_secret_value()] = issued.connection
        return issued

    def assert_store_is_exactly_issued(self, *, purge: bool = True) -> None:
        """Every issued token still validates to its connection, every other
        token drawn was never stored, and (with ``purge``) a purge after the
        last possible expiry removes exactly the issued ones, emptying the store."""
        for token, connection in self.issued.items():
            if not connection.is_expired(self.clock.now()):
                assert self.service.validate(token, connection.instance_uuid) == connection
        for token in self.tokens.handed_out:
            if token not in self.issued:
                with pytest.raises(InvalidToken) as refused:
                    self.service.validate(token)
                assert refused.value.reason is InvalidTokenReason.UNKNOWN
        if not purge:
            return
        latest = max([self.clock.now(), *(c.expires_at for c in self.issued.values())])
        self.clock.set(latest + MAX_TTL)
        assert self.service.purge_expired() == len(self.issued)


@contextmanager
def harness(
    backend: Backend,
    *,
    start: datetime = T0,
    policy: ServicePolicy | None = None,
    source: TokenSource | None = None,
) -> Iterator[Harness]:
    """A service on an empty repository of ``backend``, for one example."""
    with backend.fresh() as repository:
        clock = FakeClock(start)
        tokens = RecordingTokenSource(source)
        yield Harness(ConsoleAuthService(repository, clock, tokens, policy), clock, tokens)
