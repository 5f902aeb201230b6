"""Tokens split over cells, on in-memory stores: where each operation goes,
what a cell that is down or hung costs, and that only it pays."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta

import pytest

from console_auth.adapters.memory import InMemoryCellLocator, InMemoryConsoleConnectionRepository
from console_auth.application import (
    REVOCATION_RETENTION,
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.domain import (
    BackendUnavailable,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    UnknownCell,
)
from tests.builders import a_connection
from tests.fakes import (
    T0,
    FakeClock,
    FixedTokenSource,
    StalledRepository,
    UnavailableRepository,
)

IN_A, IN_B, NOWHERE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
SEARCH_TIMEOUT = 0.3


def locator() -> InMemoryCellLocator:
    return InMemoryCellLocator(
        {IN_A: "a", IN_B: "b"}, hosts={"compute-a": "a", "compute-b": "b"}, cells=["a", "b"]
    )


def routed(
    cells: Mapping[str, ConsoleConnectionRepository], **options: int
) -> CellRoutedConsoleConnectionRepository:
    return CellRoutedConsoleConnectionRepository(
        cells, locator(), search_timeout=SEARCH_TIMEOUT, **options
    )


def service_on(
    repository: ConsoleConnectionRepository, *, require_instance_uuid: bool = False
) -> ConsoleAuthService:
    policy = ServicePolicy(
        require_instance_uuid=require_instance_uuid, purge_batch_size=2, purge_grace=timedelta(0)
    )
    return ConsoleAuthService(repository, FakeClock(), FixedTokenSource(), policy)


@pytest.fixture
def a() -> InMemoryConsoleConnectionRepository:
    return InMemoryConsoleConnectionRepository()


@pytest.fixture
def b() -> InMemoryConsoleConnectionRepository:
    return InMemoryConsoleConnectionRepository()


@pytest.fixture
def cells(
    a: InMemoryConsoleConnectionRepository, b: InMemoryConsoleConnectionRepository
) -> Iterator[CellRoutedConsoleConnectionRepository]:
    repository = routed({"a": a, "b": b})
    yield repository
    repository.close()


def test_it_is_a_repository_the_service_routes_through(
    cells: CellRoutedConsoleConnectionRepository,
) -> None:
    repository: ConsoleConnectionRepository = cells
    assert repository.get_by_hash("f" * 64, IN_A) is None
    assert cells.cell_names == ("a", "b")


def test_authorize_stores_in_the_instances_cell_only(
    cells: CellRoutedConsoleConnectionRepository,
    a: InMemoryConsoleConnectionRepository,
    b: InMemoryConsoleConnectionRepository,
) -> None:
    service = service_on(cells)
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc").connection
    in_b = service.authorize(IN_B, "compute-b", 5900, "novnc").connection
    assert a.get_by_hash(in_a.token_hash) == in_a
    assert b.get_by_hash(in_a.token_hash) is None
    assert b.get_by_hash(in_b.token_hash) == in_b
    with pytest.raises(UnknownCell, match=str(NOWHERE)):
        service.authorize(NOWHERE, "compute-a", 5900, "novnc")


def test_a_url_goes_straight_to_its_cell_and_never_to_another() -> None:
    a, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    service = service_on(routed({"a": a, "b": down}))
    issued = service.authorize(IN_A, "compute-a", 5900, "novnc", access_url_base="https://c/x")
    token = issued.token.get_secret_value()

    assert issued.access_url is not None
    assert service.validate_url(issued.access_url) == issued.connection
    assert service.validate(token, IN_A) == issued.connection
    assert down.calls == 0
    with pytest.raises(BackendUnavailable, match=r"^1 console tokens .* cell b"):
        service.revoke_instance(IN_A)  # every cell: the map may have moved the instance
    with pytest.raises(InvalidToken) as refused:
        service.validate(token, IN_A)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN
    assert down.calls == 1


def test_a_cell_that_is_down_fails_its_own_lookups_only() -> None:
    a, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    service = service_on(routed({"a": a, "b": down}))
    token = service.authorize(IN_A, "compute-a", 5900, "novnc").token.get_secret_value()

    with pytest.raises(BackendUnavailable, match="cell b") as caught:
        service.validate(token, IN_B)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)  # the driver's error
    with pytest.raises(BackendUnavailable, match="cell b"):
        service.authorize(IN_B, "compute-b", 5900, "novnc")
    with pytest.raises(BackendUnavailable, match="cell b"):
        service.revoke_instance(IN_B)
    assert service.validate(token, IN_A).instance_uuid == IN_A


def test_an_instance_no_cell_holds_is_unknown_cell(
    cells: CellRoutedConsoleConnectionRepository,
) -> None:
    service = service_on(cells)
    token = service.authorize(IN_A, "compute-a", 5900, "novnc").token.get_secret_value()
    with pytest.raises(UnknownCell) as caught:
        service.validate(token, NOWHERE)
    assert isinstance(caught.value, InvalidRequest)
    assert service.revoke_instance(NOWHERE) == 0  # asked in every cell


def test_another_instances_token_is_refused_in_either_cell(
    cells: CellRoutedConsoleConnectionRepository,
) -> None:
    """Same cell: the service sees the other instance (``InstanceMismatch``).
    Other cell: the routed lookup never finds it (``InvalidToken``): searching
    every cell for a better message would undo the routing."""
    service = service_on(cells)
    token = service.authorize(IN_A, "compute-a", 5900, "novnc").token.get_secret_value()
    locator_a_too = uuid.uuid4()
    cells_with_neighbour = CellRoutedConsoleConnectionRepository(
        {"a": cells.cell("a"), "b": cells.cell("b")},
        InMemoryCellLocator({IN_A: "a", locator_a_too: "a", IN_B: "b"}, cells=["a", "b"]),
    )
    try:
        with pytest.raises(InstanceMismatch):
            service_on(cells_with_neighbour).validate(token, locator_a_too)
    finally:
        cells_with_neighbour.close()
    with pytest.raises(InvalidToken) as refused:
        service.validate(token, IN_B)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN


# --- legacy URLs: no instance uuid --------------------------------------------------------------


def test_a_legacy_token_is_searched_for_in_every_cell(
    cells: CellRoutedConsoleConnectionRepository,
) -> None:
    service = service_on(cells)
    in_b = service.authorize(IN_B, "compute-b", 5900, "novnc")
    assert service.validate(in_b.token.get_secret_value()) == in_b.connection
    with pytest.raises(InvalidToken) as refused:
        service.validate("x" * 43)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN


def test_legacy_tokens_are_refused_before_any_lookup_when_the_uuid_is_required() -> None:
    down_a, down_b = UnavailableRepository(), UnavailableRepository()
    service = service_on(routed({"a": down_a, "b": down_b}), require_instance_uuid=True)
    with pytest.raises(InstanceMismatch, match="required"):
        service.validate("x" * 43)
    assert down_a.calls == down_b.calls == 0


def test_a_cell_that_is_down_does_not_hide_a_token_in_another() -> None:
    b, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    service = service_on(routed({"a": down, "b": b}))
    issued = service.authorize(IN_B, "compute-b", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value()) == issued.connection


def test_a_token_not_found_while_a_cell_is_down_is_unavailable_not_unknown() -> None:
    """The token may be in exactly the cell that did not answer."""
    cells = routed({"a": InMemoryConsoleConnectionRepository(), "b": UnavailableRepository()})
    service = service_on(cells)
    with pytest.raises(BackendUnavailable, match="cell b: store unavailable") as caught:
        service.validate("x" * 43)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_hung_cell_costs_a_search_at_most_the_timeout() -> None:
    a, stalled = InMemoryConsoleConnectionRepository(), StalledRepository()
    cells = routed({"a": a, "b": stalled})
    try:
        service = service_on(cells)
        issued = service.authorize(IN_A, "compute-a", 5900, "novnc")
        started = time.monotonic()
        assert service.validate(issued.token.get_secret_value()) == issued.connection
        assert time.monotonic() - started < SEARCH_TIMEOUT  # the first hit wins at once

        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"cell b: no answer within 0\.3 s"):
            service.validate("x" * 43)
        assert SEARCH_TIMEOUT <= time.monotonic() - started < SEARCH_TIMEOUT + 1
    finally:
        stalled.release()
        cells.close()


def test_a_cell_with_a_full_backlog_fails_searches_at_once() -> None:
    """A hung cell holds its threads; past its backlog it is not even queued,
    so a long outage cannot pile work up, and other cells never wait."""
    a, stalled = InMemoryConsoleConnectionRepository(), StalledRepository()
    cells = routed({"a": a, "b": stalled}, search_workers=1, search_backlog=1)
    try:
        service = service_on(cells)
        issued = service.authorize(IN_A, "compute-a", 5900, "novnc")
        with pytest.raises(BackendUnavailable):
            service.validate("x" * 43)  # holds cell b's one worker
        assert stalled.waiting.acquire(timeout=5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="too many searches"):
            service.validate("y" * 43)
        assert time.monotonic() - started < SEARCH_TIMEOUT / 2
        assert service.validate(issued.token.get_secret_value()) == issued.connection
    finally:
        stalled.release()
        cells.close()


def test_one_cell_is_asked_directly() -> None:
    down = UnavailableRepository()
    one = CellRoutedConsoleConnectionRepository({"a": down}, InMemoryCellLocator(cells=["a"]))
    with pytest.raises(BackendUnavailable, match="cell a"):
        one.get_by_hash("0" * 64)
    assert down.calls == 1
    one.close()


# --- purge ---------------------------------------------------------------------------------------


def _expired(repository: ConsoleConnectionRepository, host: str, count: int) -> None:
    for _ in range(count):
        repository.add(a_connection(host=host, expires_at=T0 - timedelta(seconds=1)))


def test_a_hosts_purge_runs_in_its_cell_only() -> None:
    a, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    _expired(a, "compute-a", 5)
    service = service_on(routed({"a": a, "b": down}))
    assert service.purge_expired("compute-a") == 5  # batches of 2: three calls
    assert down.calls == 0


def test_a_purge_of_every_cell_skips_one_that_is_down_and_then_says_so() -> None:
    a, c, down = (
        InMemoryConsoleConnectionRepository(),
        InMemoryConsoleConnectionRepository(),
        UnavailableRepository(),
    )
    _expired(a, "compute-a", 3)
    _expired(c, "compute-c", 4)
    cells = CellRoutedConsoleConnectionRepository(
        {"a": a, "b": down, "c": c}, InMemoryCellLocator(cells=["a", "b", "c"])
    )
    service = service_on(cells)
    with pytest.raises(BackendUnavailable, match=r"purged 7 .* cell b: store unavailable"):
        service.purge_expired()
    assert a.delete_expired(T0, None, 10) == c.delete_expired(T0, None, 10) == 0
    with pytest.raises(BackendUnavailable):  # an unknown host: every cell
        service.purge_expired("compute-x")
    cells.close()


def test_the_ports_purge_goes_through_every_cell_in_its_batches(
    cells: CellRoutedConsoleConnectionRepository,
    a: InMemoryConsoleConnectionRepository,
    b: InMemoryConsoleConnectionRepository,
) -> None:
    _expired(a, "compute-a", 3)
    _expired(b, "compute-b", 3)
    assert cells.purge_expired(T0, None, 4) == 6
    assert a.delete_expired(T0, None, 4) == b.delete_expired(T0, None, 4) == 0


# --- set-up mistakes -----------------------------------------------------------------------------


def test_a_locator_naming_a_cell_without_a_store_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="no store: b"):
        CellRoutedConsoleConnectionRepository(
            {"a": InMemoryConsoleConnectionRepository()}, locator()
        )
    with pytest.raises(InvalidRequest, match="at least one cell"):
        CellRoutedConsoleConnectionRepository({}, InMemoryCellLocator())
    with pytest.raises(InvalidRequest, match="timeout"):
        CellRoutedConsoleConnectionRepository(
            {"a": InMemoryConsoleConnectionRepository()}, InMemoryCellLocator(), search_timeout=0
        )


def test_the_in_memory_locator() -> None:
    cells = locator()
    assert cells.cells() == ("a", "b")
    assert cells.cell_of(IN_A) == "a"
    assert cells.cell_of_host("compute-b") == "b"
    assert cells.cell_of_host("compute-x") is None
    with pytest.raises(UnknownCell):
        cells.cell_of(NOWHERE)
    cells.place(NOWHERE, "b")
    assert cells.cell_of(NOWHERE) == "b"
    with pytest.raises(InvalidRequest, match="no cell is named"):
        cells.place(NOWHERE, "z")
    with pytest.raises(InvalidRequest, match="does not list: z"):
        InMemoryCellLocator({IN_A: "z"}, cells=["a"])


def test_a_duplicate_hash_is_refused_within_a_cell(
    cells: CellRoutedConsoleConnectionRepository,
) -> None:
    first = a_connection(token="same", instance_uuid=IN_A)
    cells.add(first)
    with pytest.raises(InvalidRequest, match="already stored"):
        cells.add(a_connection(token="same", instance_uuid=IN_A, host="compute-2"))
    assert cells.get_by_hash(first.token_hash) == first


def test_revocations_are_asked_of_each_instances_cell(
    cells: CellRoutedConsoleConnectionRepository,
    a: InMemoryConsoleConnectionRepository,
    b: InMemoryConsoleConnectionRepository,
) -> None:
    cells.delete_by_instance(IN_A, T0)
    cells.delete_by_instance(IN_B, T0 + timedelta(seconds=1))
    assert a.revocations({IN_A, IN_B}) == b.revocations({IN_A, IN_B})  # every cell keeps both
    b.delete_revocations(T0 + timedelta(seconds=2))  # so only b's own answer can be wrong
    a.delete_revocations(T0 + timedelta(seconds=2))
    a.delete_by_instance(IN_A, T0)
    b.delete_by_instance(IN_B, T0 + timedelta(seconds=1))
    found = cells.revocations({IN_A, IN_B, NOWHERE})  # NOWHERE was never revoked
    assert found == {IN_A: T0, IN_B: T0 + timedelta(seconds=1)}
    cells.purge_expired(T0 + timedelta(seconds=1) + REVOCATION_RETENTION, None, 10)
    assert a.revocations({IN_A}) == {}
    assert b.revocations({IN_B}) == {IN_B: T0 + timedelta(seconds=1)}


def test_a_cell_that_is_down_leaves_only_its_own_instances_unanswered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    repository = routed({"a": a, "b": down})
    a.delete_by_instance(IN_A, T0)
    assert repository.revocations({IN_A, IN_B}) == {IN_A: T0}  # a's answer is kept
    assert down.calls == 1
    assert "revocations not read in cell b" in caplog.text
    with pytest.raises(BackendUnavailable, match=r"no revocation records read.*cell b"):
        repository.revocations({IN_B})  # no cell answered
    repository.close()


def test_an_instance_the_map_no_longer_places_is_asked_of_every_cell(
    cells: CellRoutedConsoleConnectionRepository, b: InMemoryConsoleConnectionRepository
) -> None:
    """Revoke wrote the record in every cell; the exporter may have dropped
    the deleted instance from the map since."""
    b.delete_by_instance(NOWHERE, T0)
    cells.delete_by_instance(IN_A, T0)
    assert cells.revocations({NOWHERE, IN_A}) == {NOWHERE: T0, IN_A: T0}
