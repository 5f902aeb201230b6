"""The fallback of a backend switch when one store is split over cells: it
keeps the cell routing (a lookup with the uuid asks one cell, purge goes
cell by cell) instead of hiding it, because it passes the uuid on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from console_auth.adapters.memory import InMemoryCellLocator, InMemoryConsoleConnectionRepository
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    FallbackConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.domain import BackendUnavailable
from tests.builders import a_connection
from tests.fakes import T0, FakeClock, FixedTokenSource, UnavailableRepository

IN_A, IN_B = uuid.uuid4(), uuid.uuid4()


def _cells(
    a: ConsoleConnectionRepository, b: ConsoleConnectionRepository
) -> CellRoutedConsoleConnectionRepository:
    locator = InMemoryCellLocator({IN_A: "a", IN_B: "b"}, hosts={"compute-a": "a"})
    return CellRoutedConsoleConnectionRepository({"a": a, "b": b}, locator, search_timeout=0.3)


@pytest.fixture
def cell_a() -> InMemoryConsoleConnectionRepository:
    return InMemoryConsoleConnectionRepository()


@pytest.fixture
def cell_b() -> UnavailableRepository:
    return UnavailableRepository()


@pytest.fixture
def split(
    cell_a: InMemoryConsoleConnectionRepository, cell_b: UnavailableRepository
) -> Iterator[CellRoutedConsoleConnectionRepository]:
    """Cell ``a`` works, cell ``b`` is down (and counts who asks it)."""
    routed = _cells(cell_a, cell_b)
    yield routed
    routed.close()


def _service(repository: ConsoleConnectionRepository) -> ConsoleAuthService:
    policy = ServicePolicy(purge_batch_size=2, purge_grace=timedelta(0))
    return ConsoleAuthService(repository, FakeClock(), FixedTokenSource(), policy)


def test_the_pair_keeps_cell_routing_with_the_split_store_on_either_side(
    split: CellRoutedConsoleConnectionRepository,
    cell_a: InMemoryConsoleConnectionRepository,
    cell_b: UnavailableRepository,
) -> None:
    issued = _service(cell_a).authorize(IN_A, "compute-a", 5900, "novnc")
    token = issued.token.get_secret_value()
    plain = InMemoryConsoleConnectionRepository()
    for pair in (
        FallbackConsoleConnectionRepository(plain, split),
        FallbackConsoleConnectionRepository(split, plain),
    ):
        assert _service(pair).validate(token, IN_A) == issued.connection
    assert cell_b.calls == 0  # a search of every cell would have asked it


def test_a_url_with_its_uuid_asks_only_its_cell_of_the_old_store(
    split: CellRoutedConsoleConnectionRepository,
    cell_a: InMemoryConsoleConnectionRepository,
    cell_b: UnavailableRepository,
) -> None:
    """The switch away from cells: a token issued before it is in cell ``a``
    of the old store; validating it asks cell ``a`` only (behind the plain
    fallback it would search every cell, the down one included)."""
    new_store = InMemoryConsoleConnectionRepository()
    pair = FallbackConsoleConnectionRepository(new_store, split)
    old = _service(cell_a).authorize(IN_A, "compute-a", 5900, "novnc")
    service = _service(pair)
    assert service.validate(old.token.get_secret_value(), IN_A) == old.connection
    assert pair.secondary_hits == 1
    fresh = service.authorize(IN_B, "compute-b", 5900, "novnc")
    assert new_store.get_by_hash(fresh.connection.token_hash) == fresh.connection
    assert service.validate(fresh.token.get_secret_value(), IN_B) == fresh.connection
    assert pair.secondary_hits == 1
    assert cell_b.calls == 0


def test_purge_goes_store_by_store_and_cell_by_cell_naming_the_cell_that_failed(
    split: CellRoutedConsoleConnectionRepository,
    cell_a: InMemoryConsoleConnectionRepository,
    cell_b: UnavailableRepository,
) -> None:
    new_store = InMemoryConsoleConnectionRepository()
    pair = FallbackConsoleConnectionRepository(new_store, split)
    for store in (new_store, cell_a):
        for _ in range(3):
            store.add(a_connection(expires_at=T0 - timedelta(seconds=1)))
    with pytest.raises(BackendUnavailable, match=r"purged 6 .* cell b") as caught:
        _service(pair).purge_expired()
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    asked = cell_b.calls
    for store in (new_store, cell_a):
        store.add(a_connection(host="compute-a", expires_at=T0 - timedelta(seconds=1)))
    assert _service(pair).purge_expired("compute-a") == 2  # the primary and cell a only
    assert cell_b.calls == asked
