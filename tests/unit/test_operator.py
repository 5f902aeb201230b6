"""The operator's use cases on memory stores: revoke one token by a hash
prefix, a paged listing, a purge by instances, and where cells and a
fallback pair send them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
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
from console_auth.application.ports import MAX_PAGE
from console_auth.domain import BackendUnavailable, ConsoleConnection, InvalidRequest
from console_auth.domain.errors import AmbiguousTokenHash, UnknownTokenHash
from tests.builders import a_connection
from tests.fakes import T0, FakeClock, FixedTokenSource, UnavailableRepository

IN_A, IN_B, NOWHERE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def service_on(
    repository: ConsoleConnectionRepository, clock: FakeClock | None = None
) -> ConsoleAuthService:
    policy = ServicePolicy(purge_batch_size=2, purge_grace=timedelta(0))
    return ConsoleAuthService(repository, clock or FakeClock(), FixedTokenSource(), policy)


def with_hash(token_hash: str, **fields: object) -> ConsoleConnection:
    return a_connection(**fields).model_copy(update={"token_hash": token_hash})  # type: ignore[arg-type]


def routed(
    cells: Mapping[str, ConsoleConnectionRepository],
) -> CellRoutedConsoleConnectionRepository:
    locator = InMemoryCellLocator(
        {IN_A: "a", IN_B: "b"}, hosts={"compute-a": "a"}, cells=["a", "b"]
    )
    return CellRoutedConsoleConnectionRepository(cells, locator)


# --- revoke one token ------------------------------------------------------------------------


def test_a_unique_prefix_revokes_that_token_only() -> None:
    store = InMemoryConsoleConnectionRepository()
    doomed = with_hash("abcdef012345" + "0" * 52)
    neighbour = with_hash("abcdef012346" + "0" * 52, instance_uuid=doomed.instance_uuid)
    store.add(doomed)
    store.add(neighbour)
    service = service_on(store)
    assert service.revoke_token("ABCDEF012345") == doomed  # hex in either case
    assert store.get_by_hash(doomed.token_hash) is None
    assert store.get_by_hash(neighbour.token_hash) == neighbour
    assert store.revocations({doomed.instance_uuid}) == {}  # the instance's sessions run on


def test_a_whole_hash_revokes_too_and_expired_tokens_can_be_revoked() -> None:
    store = InMemoryConsoleConnectionRepository()
    expired = a_connection(expires_at=T0 - timedelta(days=1))
    store.add(expired)
    assert service_on(store).revoke_token(expired.token_hash) == expired
    assert store.get_by_hash(expired.token_hash) is None


def test_an_ambiguous_prefix_revokes_nothing_and_names_no_hash() -> None:
    store = InMemoryConsoleConnectionRepository()
    one, two = with_hash("abcdef012345" + "1" * 52), with_hash("abcdef012345" + "2" * 52)
    store.add(one)
    store.add(two)
    with pytest.raises(AmbiguousTokenHash) as refused:
        service_on(store).revoke_token("abcdef012345")
    assert "1111" not in str(refused.value)
    assert "2222" not in str(refused.value)
    assert store.get_by_hash(one.token_hash) == one
    assert store.get_by_hash(two.token_hash) == two
    assert service_on(store).revoke_token("abcdef0123451") == one


def test_an_unknown_prefix_is_a_typed_error() -> None:
    store = InMemoryConsoleConnectionRepository()
    store.add(with_hash("abcdef012346" + "0" * 52))
    with pytest.raises(UnknownTokenHash, match="abcdef012345"):
        service_on(store).revoke_token("abcdef012345")
    with pytest.raises(UnknownTokenHash):
        service_on(store).revoke_token("f" * 64)


@pytest.mark.parametrize(
    "prefix", ["abcdef01234", "abcdef01234g", "a" * 65, "", "abcdef012345 ", "tok" + "0" * 40]
)
def test_a_prefix_is_12_to_64_hex_digits_and_never_echoed(prefix: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        service_on(InMemoryConsoleConnectionRepository()).revoke_token(prefix)
    assert not isinstance(refused.value, UnknownTokenHash)
    assert prefix not in str(refused.value) or not prefix


# --- listing ---------------------------------------------------------------------------------


def test_the_listing_shows_live_tokens_unless_asked_for_expired_ones() -> None:
    store = InMemoryConsoleConnectionRepository()
    live = a_connection(expires_at=T0 + timedelta(seconds=1))
    gone = a_connection(expires_at=T0)
    store.add(live)
    store.add(gone)
    service = service_on(store)
    assert [s.connection for s in service.connections()] == [live]
    listed = [s.connection for s in service.connections(expired=True)]
    assert listed == sorted([live, gone], key=lambda c: c.token_hash)


@pytest.mark.parametrize("limit", [0, MAX_PAGE + 1, True])
def test_a_page_is_bounded(limit: int) -> None:
    with pytest.raises(InvalidRequest, match="page"):
        service_on(InMemoryConsoleConnectionRepository()).connections(limit=limit)


def test_a_listing_continues_after_a_whole_hash_only() -> None:
    with pytest.raises(InvalidRequest, match="whole token hash"):
        service_on(InMemoryConsoleConnectionRepository()).connections("abc")


# --- purge by instances ------------------------------------------------------------------------


def test_purge_by_instances_honours_the_grace_and_checks_the_uuids() -> None:
    store = InMemoryConsoleConnectionRepository()
    clock = FakeClock(T0)
    policy = ServicePolicy(purge_grace=timedelta(minutes=5))
    service = ConsoleAuthService(store, clock, FixedTokenSource(), policy)
    instance = uuid.uuid4()
    recent = a_connection(instance_uuid=instance, expires_at=T0 - timedelta(minutes=4))
    old = a_connection(instance_uuid=instance, expires_at=T0 - timedelta(minutes=5))
    store.add(recent)
    store.add(old)
    assert service.purge_instances([str(instance)]) == 1
    assert store.get_by_hash(recent.token_hash) == recent
    assert service.purge_instances([]) == 0
    with pytest.raises(InvalidRequest):
        service.purge_instances(["not-a-uuid"])


# --- cells and the fallback pair -------------------------------------------------------------


def test_cells_list_every_cell_merged_in_hash_order_each_row_with_its_cell() -> None:
    a, b = InMemoryConsoleConnectionRepository(), InMemoryConsoleConnectionRepository()
    cells = routed({"a": a, "b": b})
    in_a = [a_connection(instance_uuid=IN_A) for _ in range(3)]
    in_b = [a_connection(instance_uuid=IN_B) for _ in range(3)]
    for connection in [*in_a, *in_b]:
        cells.add(connection)
    listed, after = [], None
    while page := cells.connections(after, 2):
        listed += page
        after = page[-1].connection.token_hash
    assert [s.connection for s in listed] == sorted([*in_a, *in_b], key=lambda c: c.token_hash)
    assert {s.cell for s in listed if s.connection in in_a} == {"a"}
    assert {s.cell for s in listed if s.connection in in_b} == {"b"}
    assert {s.cell for s in cells.connections(None, 10, instance_uuid=IN_B)} == {"b"}


def test_cells_list_one_instance_from_its_cell_only() -> None:
    down = UnavailableRepository()
    a = InMemoryConsoleConnectionRepository()
    cells = routed({"a": a, "b": down})
    mine = a_connection(instance_uuid=IN_A, host="compute-a")
    cells.add(mine)
    assert [s.connection for s in cells.connections(None, 10, instance_uuid=IN_A)] == [mine]
    assert [s.connection for s in cells.connections(None, 10, host="compute-a")] == [mine]
    assert down.calls == 0


def test_a_cell_that_is_down_fails_the_page_naming_it_after_asking_the_others() -> None:
    down = UnavailableRepository()
    a = InMemoryConsoleConnectionRepository()
    cells = routed({"a": a, "b": down})
    cells.add(a_connection(instance_uuid=IN_A))
    with pytest.raises(BackendUnavailable, match="cell b") as refused:
        cells.connections(None, 10)
    assert "cell a" not in str(refused.value)
    assert down.calls == 1


def test_cells_purge_instances_in_their_cells_and_skip_a_cell_that_is_down() -> None:
    a, down = InMemoryConsoleConnectionRepository(), UnavailableRepository()
    cells = routed({"a": a, "b": down})
    expired = a_connection(instance_uuid=IN_A, expires_at=T0)
    a.add(expired)
    assert cells.purge_instances(T0, [IN_A], 10) == 1  # only a is asked
    assert down.calls == 0
    a.add(expired)
    with pytest.raises(BackendUnavailable, match="cell b") as refused:
        cells.purge_instances(T0, [IN_A, IN_B], 10)
    assert "purged 1" in str(refused.value)
    assert a.get_by_hash(expired.token_hash) is None
    a.add(expired)
    with pytest.raises(BackendUnavailable, match="cell b"):  # unplaced: every cell
        cells.purge_instances(T0, [NOWHERE], 10)


def test_cells_delete_by_hash_in_every_cell() -> None:
    a, b = InMemoryConsoleConnectionRepository(), InMemoryConsoleConnectionRepository()
    cells = routed({"a": a, "b": b})
    moved = a_connection(instance_uuid=IN_A)
    b.add(moved)  # stored before the instance moved to a
    assert cells.delete_by_hash(moved.token_hash) == 1
    assert b.get_by_hash(moved.token_hash) is None


def test_cells_say_where_a_lookup_goes() -> None:
    cells = routed({"a": InMemoryConsoleConnectionRepository(), "b": UnavailableRepository()})
    assert cells.looked_in(IN_B) == "cell b"
    assert cells.looked_in(None) == "every cell (a, b)"


def test_the_fallback_pair_lists_both_once_and_purges_and_deletes_in_both() -> None:
    primary, secondary = (
        InMemoryConsoleConnectionRepository(),
        InMemoryConsoleConnectionRepository(),
    )
    both = FallbackConsoleConnectionRepository(primary, secondary)
    new, old = a_connection(expires_at=T0), a_connection(expires_at=T0)
    shared = a_connection()
    primary.add(new)
    secondary.add(old)
    primary.add(shared)
    secondary.add(shared)
    listed = [s.connection for s in both.connections(None, 10)]
    assert listed == sorted([new, old, shared], key=lambda c: c.token_hash)
    assert [s.connection for s in both.connections(None, 1)] == listed[:1]
    assert both.purge_instances(T0, [new.instance_uuid, old.instance_uuid], 10) == 2
    assert both.delete_by_hash(shared.token_hash) == 2
    assert both.looked_in(None) == "the primary store, then the fallback store"
