"""Serial ports split over cells, on in-memory stores: each operation that
names a host goes to its host's cell and nowhere else, a host in no cell
stores nothing, and a purge shares its batch across cells. By instance,
every cell is asked (``tests/unit/test_revoke_cells.py``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final, NoReturn
from uuid import UUID

import pytest

from console_auth.adapters.memory import (
    InMemoryCellLocator,
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import ConsoleAuthService, ServicePolicy
from console_auth.application.cell_ports import (
    CellRoutedPortLeaseRepository,
    CellRoutedPortReservationRepository,
)
from console_auth.application.ports import PortLeaseRepository
from console_auth.application.serial import ConsolePortService
from console_auth.domain import BackendUnavailable, InvalidRequest, UnknownCell
from console_auth.domain.leases import PortLease
from tests.contract.test_port_contract import a_lease
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource

IN_A, IN_B, NOWHERE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
LATER: Final = T0 + timedelta(minutes=1)
"""When every lease ``a_lease`` builds (30 s) has expired."""


def locator(cells: tuple[str, ...] = ("a", "b")) -> InMemoryCellLocator:
    return InMemoryCellLocator(
        {IN_A: "a", IN_B: "b"},
        hosts={"compute-a": "a", "compute-b": "b", "compute-c": "a"},
        cells=cells,
    )


class DownCell:
    """A cell whose store is down: every call raises ``BackendUnavailable``,
    as an adapter maps a refused connection, and is counted."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> NoReturn:
        self.calls += 1
        raise BackendUnavailable("store unavailable") from ConnectionRefusedError(111, "refused")

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        self._fail()

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        self._fail()

    def release(self, *args: object, **kwargs: object) -> bool:
        self._fail()

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        self._fail()

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        self._fail()

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        self._fail()

    def reserve(self, host: str, port: int) -> bool:
        self._fail()

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        self._fail()


def port_service(leases: PortLeaseRepository) -> ConsolePortService:
    consoles = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        FakeClock(LATER),
        FixedTokenSource(),
        ServicePolicy(purge_batch_size=2, purge_grace=timedelta(0)),
    )
    return ConsolePortService(
        consoles, leases, InMemoryPortReservationRepository(), FixedLeaseIdSource()
    )


def _expired(leases: PortLeaseRepository, host: str, count: int) -> None:
    for port in range(1, count + 1):
        assert leases.claim(a_lease(host=host, port=port, ttl=timedelta(seconds=1)), T0) is None


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "instance", "cell"), [("compute-a", IN_A, "a"), ("compute-b", IN_B, "b")]
)
def test_every_lease_operation_goes_to_its_hosts_cell_and_nowhere_else(
    host: str, instance: UUID, cell: str
) -> None:
    """The other cell is down: any question put to it would fail the test."""
    store, down = InMemoryPortLeaseRepository(), DownCell()
    cells = {name: store if name == cell else down for name in ("a", "b")}
    routed = CellRoutedPortLeaseRepository(cells, locator())
    lease = a_lease(host=host, instance=instance)
    assert routed.claim(lease, T0) is None
    assert store.leases(T0) == [lease]
    assert routed.claim(a_lease(host=host, instance=instance), T0) == lease  # atomic in one store
    renewed = routed.renew(lease, T0 + timedelta(minutes=5), T0)
    assert renewed is not None
    assert store.leases(T0) == [renewed]
    assert routed.leases(T0, host=host) == [renewed]
    assert routed.release(lease) is True
    assert store.leases(T0) == []

    _expired(routed, host, 3)
    assert routed.purge_expired(LATER, host, 2) == 3
    assert store.leases(T0) == []
    assert down.calls == 0


def test_every_reservation_goes_to_its_hosts_cell_and_nowhere_else() -> None:
    a, down = InMemoryPortReservationRepository(), DownCell()
    routed = CellRoutedPortReservationRepository({"a": a, "b": down}, locator())
    assert routed.reserve("compute-a", 10000) is True
    assert routed.reserve("compute-a", 10000) is False
    assert routed.reserve("compute-c", 10000) is True  # another host of cell a
    assert a.reserved("compute-a", 1, 65535) == {10000}
    assert routed.reserved("compute-a", 10000, 10005) == {10000}
    assert routed.release("compute-a", 10000) is True
    assert routed.release("compute-a", 10000) is False
    assert a.reserved("compute-a", 1, 65535) == set()
    assert down.calls == 0
    with pytest.raises(BackendUnavailable, match="cell b: store unavailable"):
        routed.reserve("compute-b", 10000)


def test_every_hosts_leases_are_merged_in_host_and_port_order() -> None:
    a, b = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository()
    routed = CellRoutedPortLeaseRepository({"a": a, "b": b}, locator())
    for host, port in [("compute-c", 1), ("compute-b", 7), ("compute-a", 9), ("compute-a", 2)]:
        routed.claim(a_lease(host=host, port=port), T0)
    assert [(x.host, x.port) for x in routed.leases(T0)] == [
        ("compute-a", 2),
        ("compute-a", 9),
        ("compute-b", 7),
        ("compute-c", 1),
    ]
    assert [x.host for x in b.leases(T0)] == ["compute-b"]


# --- what no cell holds --------------------------------------------------------------------------


def test_a_host_in_no_cell_is_unknown_cell_and_nothing_is_stored() -> None:
    leases = {"a": InMemoryPortLeaseRepository(), "b": InMemoryPortLeaseRepository()}
    reservations = {
        "a": InMemoryPortReservationRepository(),
        "b": InMemoryPortReservationRepository(),
    }
    routed = CellRoutedPortLeaseRepository(leases, locator())
    reserving = CellRoutedPortReservationRepository(reservations, locator())
    lease = a_lease(host="compute-x", token="secret")
    for call in (
        lambda: routed.claim(lease, T0),
        lambda: routed.renew(lease, LATER, T0),
        lambda: routed.release(lease),
        lambda: routed.leases(T0, host="compute-x"),
        lambda: reserving.reserve("compute-x", 10000),
        lambda: reserving.release("compute-x", 10000),
        lambda: reserving.reserved("compute-x", 1, 65535),
    ):
        with pytest.raises(UnknownCell, match="compute host compute-x") as caught:
            call()
        assert lease.token_hash not in str(caught.value)
    for cell in ("a", "b"):
        assert leases[cell].leases(T0) == []
        assert reservations[cell].reserved("compute-x", 1, 65535) == set()


def test_an_instance_in_no_cell_is_looked_for_in_every_cell_as_for_its_tokens() -> None:
    """A deleted instance may leave the map before its leases are released."""
    a, b = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository()
    routed = CellRoutedPortLeaseRepository({"a": a, "b": b}, locator())
    for host in ("compute-a", "compute-b"):
        routed.claim(a_lease(host=host, instance=NOWHERE), T0)
    assert [x.host for x in routed.leases(T0, instance_uuid=NOWHERE)] == ["compute-a", "compute-b"]
    assert routed.delete_by_instance(NOWHERE) == 2
    assert a.leases(T0) == b.leases(T0) == []


def test_a_host_in_no_cell_is_purged_in_every_cell() -> None:
    """Leases stored before the host left the map still get purged."""
    a, b = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository()
    _expired(a, "compute-old", 2)
    _expired(b, "compute-old", 3)
    routed = CellRoutedPortLeaseRepository({"a": a, "b": b}, locator())
    assert port_service(routed).purge_expired("compute-old") == 5


# --- purging every cell --------------------------------------------------------------------------


def test_a_purge_goes_through_every_cell_in_its_batches() -> None:
    a, b = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository()
    routed = CellRoutedPortLeaseRepository({"a": a, "b": b}, locator())
    _expired(routed, "compute-a", 3)
    _expired(routed, "compute-b", 3)
    assert routed.purge_expired(LATER, None, 4) == 6
    assert routed.purge_expired(LATER, None, 4) == 0

    _expired(routed, "compute-a", 4)
    _expired(routed, "compute-b", 3)
    assert port_service(routed).purge_expired() == 7  # batches of 2, cell by cell
    assert a.leases(T0) == b.leases(T0) == []


def test_a_purge_of_every_cell_skips_one_that_is_down_and_then_says_so() -> None:
    a, c, down = InMemoryPortLeaseRepository(), InMemoryPortLeaseRepository(), DownCell()
    routed = CellRoutedPortLeaseRepository({"a": a, "b": down, "c": c}, locator(("a", "b", "c")))
    _expired(a, "compute-a", 4)
    _expired(c, "compute-z", 3)
    purged_but_b = r"^purged 7 expired port leases, but not in every cell: cell b: store"
    with pytest.raises(BackendUnavailable, match=purged_but_b) as caught:
        port_service(routed).purge_expired()
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert a.leases(T0) == c.leases(T0) == []  # the cells that are up were purged all the same


def test_a_cell_that_is_down_fails_its_own_hosts_and_a_list_of_every_host() -> None:
    a, down = InMemoryPortLeaseRepository(), DownCell()
    routed = CellRoutedPortLeaseRepository({"a": a, "b": down}, locator())
    with pytest.raises(BackendUnavailable, match="cell b: store unavailable"):
        routed.claim(a_lease(host="compute-b"), T0)
    with pytest.raises(BackendUnavailable, match="cell b"):
        routed.purge_expired(LATER, "compute-b", 10)
    assert routed.claim(a_lease(host="compute-a"), T0) is None
    with pytest.raises(BackendUnavailable, match="cell b"):  # a partial list would lie
        routed.leases(T0)


def test_a_locator_naming_a_cell_without_a_store_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="no store: b"):
        CellRoutedPortLeaseRepository({"a": InMemoryPortLeaseRepository()}, locator())
    with pytest.raises(InvalidRequest, match="at least one cell"):
        CellRoutedPortReservationRepository({}, InMemoryCellLocator())
