"""The fallback repository of a backend switch, on two in-memory stores."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from uuid import UUID

import pytest

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application import (
    REVOCATION_RETENTION,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    FallbackConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.application.ports import StoredConnection
from console_auth.domain import (
    BackendUnavailable,
    ConsoleConnection,
    InvalidToken,
    InvalidTokenReason,
)
from tests.builders import a_connection
from tests.fakes import T0, FakeClock, FixedTokenSource


@pytest.fixture
def primary() -> InMemoryConsoleConnectionRepository:
    return InMemoryConsoleConnectionRepository()


@pytest.fixture
def secondary() -> InMemoryConsoleConnectionRepository:
    return InMemoryConsoleConnectionRepository()


@pytest.fixture
def both(
    primary: InMemoryConsoleConnectionRepository, secondary: InMemoryConsoleConnectionRepository
) -> FallbackConsoleConnectionRepository:
    return FallbackConsoleConnectionRepository(primary, secondary)


def test_it_is_a_repository(both: FallbackConsoleConnectionRepository) -> None:
    repository: ConsoleConnectionRepository = both
    assert repository is both


def test_add_writes_to_the_primary_only(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    connection = a_connection()
    both.add(connection)
    assert primary.get_by_hash(connection.token_hash) == connection
    assert secondary.get_by_hash(connection.token_hash) is None


def test_a_miss_in_the_primary_asks_the_secondary(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    old, new = a_connection(), a_connection()
    secondary.add(old)
    primary.add(new)

    assert both.get_by_hash(new.token_hash) == new
    assert both.secondary_hits == 0
    assert both.get_by_hash(old.token_hash) == old
    assert both.secondary_hits == 1
    assert both.get_by_hash("f" * 64) is None
    assert both.secondary_hits == 1


def test_the_primary_wins_when_both_hold_a_hash(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    mine = a_connection(token="same", host="compute-1")
    stale = a_connection(token="same", host="compute-2")
    primary.add(mine)
    secondary.add(stale)
    assert both.get_by_hash(mine.token_hash) == mine


def test_revoke_reaches_both_stores(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    old = [a_connection(instance_uuid=instance) for _ in range(2)]
    new = a_connection(instance_uuid=instance)
    other = a_connection()
    for connection in [*old, other]:
        secondary.add(connection)
    primary.add(new)

    assert both.delete_by_instance(instance, T0) == 3
    assert all(both.get_by_hash(c.token_hash) is None for c in [*old, new])
    assert both.get_by_hash(other.token_hash) == other


def test_purge_goes_through_both_stores_in_their_batches(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    for store, count in ((primary, 3), (secondary, 4)):
        for n in range(count):
            store.add(a_connection(expires_at=T0 - timedelta(seconds=n + 1)))

    assert both.purge_expired(T0, None, 2) == 7
    assert primary.delete_expired(T0, None, 5) == secondary.delete_expired(T0, None, 5) == 0


def test_the_service_purges_both_in_batches(
    both: FallbackConsoleConnectionRepository,
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    for store in (primary, secondary):
        for n in range(3):
            store.add(a_connection(expires_at=T0 - timedelta(seconds=n + 1)))
    service = ConsoleAuthService(
        both,
        FakeClock(T0),
        FixedTokenSource(),
        ServicePolicy(purge_batch_size=2, purge_grace=timedelta(0)),
    )
    assert service.purge_expired() == 6


def test_a_console_issued_before_the_switch_keeps_working(
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    clock = FakeClock(T0)
    tokens = FixedTokenSource()
    before = ConsoleAuthService(secondary, clock, tokens)
    during = ConsoleAuthService(
        FallbackConsoleConnectionRepository(primary, secondary), clock, tokens
    )
    issued = before.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()

    assert during.validate(token) == issued.connection
    fresh = during.authorize(issued.connection.instance_uuid, "compute-1", 5900, "novnc")
    assert primary.get_by_hash(fresh.connection.token_hash) == fresh.connection
    assert during.revoke_instance(issued.connection.instance_uuid) == 2
    with pytest.raises(InvalidToken) as refused:
        during.validate(token)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN


class _Down:
    """A store that cannot answer."""

    def add(self, connection: ConsoleConnection) -> None:
        raise BackendUnavailable("down")

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        raise BackendUnavailable("down")

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        raise BackendUnavailable("down")

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        raise BackendUnavailable("down")

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        raise BackendUnavailable("down")

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        raise BackendUnavailable("down")

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        raise BackendUnavailable("down")

    def delete_by_hash(self, token_hash: str) -> int:
        raise BackendUnavailable("down")

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        return None


def test_a_primary_that_cannot_answer_is_not_skipped(
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    connection = a_connection()
    secondary.add(connection)
    both = FallbackConsoleConnectionRepository(_Down(), secondary)
    with pytest.raises(BackendUnavailable):
        both.get_by_hash(connection.token_hash)


def test_a_secondary_that_cannot_answer_fails_misses_and_revokes(
    primary: InMemoryConsoleConnectionRepository,
) -> None:
    both = FallbackConsoleConnectionRepository(primary, _Down())
    kept = a_connection()
    both.add(kept)
    assert both.get_by_hash(kept.token_hash) == kept  # a hit never asks the secondary
    with pytest.raises(BackendUnavailable):
        both.get_by_hash("f" * 64)
    with pytest.raises(BackendUnavailable):
        both.delete_by_instance(kept.instance_uuid, T0)


def test_one_store_cannot_be_its_own_fallback(
    primary: InMemoryConsoleConnectionRepository,
) -> None:
    with pytest.raises(ValueError, match="differ"):
        FallbackConsoleConnectionRepository(primary, primary)


def test_both_stores_keep_the_revocation_and_the_primary_answers(
    primary: InMemoryConsoleConnectionRepository,
    secondary: InMemoryConsoleConnectionRepository,
) -> None:
    both = FallbackConsoleConnectionRepository(primary, secondary)
    only_in_the_secondary = uuid.uuid4()  # the primary was down when it was revoked
    secondary.delete_by_instance(only_in_the_secondary, T0)
    assert both.revocations([only_in_the_secondary]) == {only_in_the_secondary: T0}
    instance = uuid.uuid4()
    both.delete_by_instance(instance, T0)
    assert primary.revocations([instance]) == secondary.revocations([instance]) == {instance: T0}
    secondary.delete_revocations(T0 + timedelta(seconds=1))
    assert both.revocations([instance]) == {instance: T0}
    assert both.purge_expired(T0 + timedelta(seconds=1) + REVOCATION_RETENTION, None, 10) == 0
    assert both.revocations([instance]) == {}
