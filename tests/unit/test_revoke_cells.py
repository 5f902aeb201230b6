"""Revoking an instance reaches every cell (issue 10): the cell map may have
moved the instance since a token was issued, and a token left in its old
cell would still validate from a URL without the uuid. The same holds for
the fallback of a backend switch and for serial-port leases. A cell that is
down is skipped, the others are revoked, and the error says so."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest

from console_auth.adapters.memory import (
    InMemoryCellLocator,
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
)
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    FallbackConsoleConnectionRepository,
)
from console_auth.application.cell_ports import CellRoutedPortLeaseRepository
from console_auth.domain import BackendUnavailable, InvalidToken, InvalidTokenReason
from tests.builders import a_connection
from tests.contract.test_port_contract import a_lease
from tests.fakes import T0, FakeClock, FixedTokenSource, UnavailableRepository
from tests.unit.test_cell_ports import DownCell

MOVED, STAYED = uuid.uuid4(), uuid.uuid4()
BASE = "https://console.example.com/vnc_lite.html"
HOSTS = {"compute-a": "a", "compute-b": "b", "compute-c": "c"}


def _locator(cells: tuple[str, ...] = ("a", "b")) -> InMemoryCellLocator:
    """``MOVED`` starts in cell ``a``; ``STAYED`` lives in ``a``."""
    hosts = {host: cell for host, cell in HOSTS.items() if cell in cells}
    return InMemoryCellLocator({MOVED: "a", STAYED: "a"}, hosts=hosts, cells=cells)


@pytest.fixture
def routed() -> Iterator[dict[str, CellRoutedConsoleConnectionRepository]]:
    opened: dict[str, CellRoutedConsoleConnectionRepository] = {}
    yield opened
    for cells in opened.values():
        cells.close()


def _split(
    opened: dict[str, CellRoutedConsoleConnectionRepository],
    stores: Mapping[str, ConsoleConnectionRepository],
    locator: InMemoryCellLocator,
) -> CellRoutedConsoleConnectionRepository:
    cells = CellRoutedConsoleConnectionRepository(stores, locator, search_timeout=0.3)
    opened[str(len(opened))] = cells
    return cells


def _service(repository: ConsoleConnectionRepository) -> ConsoleAuthService:
    return ConsoleAuthService(repository, FakeClock(), FixedTokenSource())


def _assert_refused_everywhere(service: ConsoleAuthService, token: str) -> None:
    """With the uuid, and without it (the legacy search of every cell)."""
    validations: list[Callable[[], object]] = [
        lambda: service.validate(token, MOVED),
        lambda: service.validate(token),
        lambda: service.validate_url(f"{BASE}?token={token}"),
    ]
    for validate in validations:
        with pytest.raises(InvalidToken) as refused:
            validate()
        assert refused.value.reason is InvalidTokenReason.UNKNOWN


def test_a_token_left_in_the_old_cell_of_a_moved_instance_is_revoked(
    routed: dict[str, CellRoutedConsoleConnectionRepository],
) -> None:
    a, b = InMemoryConsoleConnectionRepository(), InMemoryConsoleConnectionRepository()
    locator = _locator()
    service = _service(_split(routed, {"a": a, "b": b}, locator))
    old = service.authorize(MOVED, "compute-a", 5900, "novnc", access_url_base=BASE)
    kept = service.authorize(STAYED, "compute-a", 5900, "novnc")
    locator.place(MOVED, "b")  # migrated to a host of cell b
    new = service.authorize(MOVED, "compute-b", 5900, "novnc")
    token = old.token.get_secret_value()
    assert service.validate(token) == old.connection  # the legacy search still finds it

    revoked = service.revoke_instance(MOVED)
    _assert_refused_everywhere(service, token)
    assert revoked == 2
    assert old.access_url is not None
    with pytest.raises(InvalidToken):
        service.validate_url(old.access_url)
    assert a.get_by_hash(old.connection.token_hash) is None
    assert b.get_by_hash(new.connection.token_hash) is None
    assert service.validate(kept.token.get_secret_value(), STAYED) == kept.connection


def test_an_instance_the_map_no_longer_knows_is_revoked_in_every_cell(
    routed: dict[str, CellRoutedConsoleConnectionRepository],
) -> None:
    """A deleted instance may leave the map before its tokens are revoked."""
    a, b = InMemoryConsoleConnectionRepository(), InMemoryConsoleConnectionRepository()
    gone = uuid.uuid4()
    for store in (a, b):
        store.add(a_connection(instance_uuid=gone))
    assert _service(_split(routed, {"a": a, "b": b}, _locator())).revoke_instance(gone) == 2


def test_a_cell_that_is_down_is_skipped_and_named_after_the_others_are_revoked(
    routed: dict[str, CellRoutedConsoleConnectionRepository],
) -> None:
    a, down, c = (
        InMemoryConsoleConnectionRepository(),
        UnavailableRepository(),
        InMemoryConsoleConnectionRepository(),
    )
    locator = _locator(("a", "b", "c"))
    service = _service(_split(routed, {"a": a, "b": down, "c": c}, locator))
    old = service.authorize(MOVED, "compute-a", 5900, "novnc")
    locator.place(MOVED, "c")
    new = service.authorize(MOVED, "compute-c", 5900, "novnc")

    with pytest.raises(
        BackendUnavailable,
        match=rf"^2 console tokens of instance {MOVED} deleted, but not in every cell: "
        r"cell b: store unavailable$",
    ) as caught:
        service.revoke_instance(MOVED)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert down.calls == 1
    assert a.get_by_hash(old.connection.token_hash) is None
    assert c.get_by_hash(new.connection.token_hash) is None
    for issued in (old, new):
        with pytest.raises(InvalidToken):
            service.validate(issued.token.get_secret_value(), MOVED)


# --- the fallback of a backend switch ------------------------------------------------------------


def test_the_fallback_revokes_in_the_new_store_and_every_cell_of_the_old(
    routed: dict[str, CellRoutedConsoleConnectionRepository],
) -> None:
    a, b, new_store = (InMemoryConsoleConnectionRepository() for _ in range(3))
    locator = _locator()
    old_store = _split(routed, {"a": a, "b": b}, locator)
    old = _service(old_store).authorize(MOVED, "compute-a", 5900, "novnc")
    locator.place(MOVED, "b")
    service = _service(FallbackConsoleConnectionRepository(new_store, old_store))
    new = service.authorize(MOVED, "compute-b", 5900, "novnc")

    assert service.revoke_instance(MOVED) == 2
    _assert_refused_everywhere(service, old.token.get_secret_value())
    assert new_store.get_by_hash(new.connection.token_hash) is None


def test_the_fallback_revokes_the_stores_that_answer_and_names_the_one_that_did_not(
    routed: dict[str, CellRoutedConsoleConnectionRepository],
) -> None:
    a, down, new_store = (
        InMemoryConsoleConnectionRepository(),
        UnavailableRepository(),
        InMemoryConsoleConnectionRepository(),
    )
    old_store = _split(routed, {"a": a, "b": down}, _locator())
    old = _service(old_store).authorize(MOVED, "compute-a", 5900, "novnc")
    service = _service(FallbackConsoleConnectionRepository(new_store, old_store))
    new = service.authorize(MOVED, "compute-a", 5900, "novnc")
    with pytest.raises(BackendUnavailable, match=r"^2 console .* cell b: store unavailable$"):
        service.revoke_instance(MOVED)
    assert new_store.get_by_hash(new.connection.token_hash) is None
    assert a.get_by_hash(old.connection.token_hash) is None

    plain = FallbackConsoleConnectionRepository(UnavailableRepository(), new_store)
    kept = a_connection(instance_uuid=MOVED)
    new_store.add(kept)
    with pytest.raises(BackendUnavailable, match=r"^1 console .* cell \(primary\): store"):
        plain.delete_by_instance(MOVED, T0)  # the secondary is revoked all the same
    assert new_store.get_by_hash(kept.token_hash) is None


def test_a_cell_name_both_stores_use_is_revoked_in_both() -> None:
    """Two split stores whose cells share names keep both sets of cells."""
    stores = [InMemoryConsoleConnectionRepository() for _ in range(4)]
    first = CellRoutedConsoleConnectionRepository({"a": stores[0], "b": stores[1]}, _locator())
    second = CellRoutedConsoleConnectionRepository({"a": stores[2], "b": stores[3]}, _locator())
    try:
        hashes = []
        for store in stores:
            connection = a_connection(instance_uuid=MOVED)
            store.add(connection)
            hashes.append(connection.token_hash)
        pair = FallbackConsoleConnectionRepository(first, second)
        assert pair.delete_by_instance(MOVED, T0) == 4
        assert all(store.get_by_hash(h) is None for store in stores for h in hashes)
    finally:
        first.close()
        second.close()


# --- serial-port leases --------------------------------------------------------------------------


def test_the_leases_of_a_moved_instance_are_listed_and_released_in_every_cell() -> None:
    a, b = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository()
    locator = _locator()
    leases = CellRoutedPortLeaseRepository({"a": a, "b": b}, locator)
    old = a_lease(host="compute-a", instance=MOVED)
    assert leases.claim(old, T0) is None
    locator.place(MOVED, "b")
    new = a_lease(host="compute-b", instance=MOVED)
    assert leases.claim(new, T0) is None

    assert leases.leases(T0, instance_uuid=MOVED) == [old, new]
    assert leases.delete_by_instance(MOVED) == 2
    assert a.leases(T0) == b.leases(T0) == []
    assert leases.claim(a_lease(host="compute-a"), T0) is None  # the old port is free


def test_a_lease_cell_that_is_down_is_skipped_and_named() -> None:
    a, down = InMemoryPortLeaseRepository(), DownCell()
    leases = CellRoutedPortLeaseRepository({"a": a, "b": down}, _locator())
    assert leases.claim(a_lease(host="compute-a", instance=MOVED), T0) is None
    with pytest.raises(
        BackendUnavailable,
        match=rf"^1 port leases of instance {MOVED} deleted, but not in every cell: cell b: ",
    ):
        leases.delete_by_instance(MOVED)
    assert a.leases(T0) == []
    with pytest.raises(BackendUnavailable, match="cell b"):  # a partial list would lie
        leases.leases(T0, instance_uuid=MOVED)
