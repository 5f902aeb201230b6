"""What an operator's tools need of every ``ConsoleConnectionRepository``:
a paged listing, one token deleted by hash, and a purge by instances.

Runs over every backend in ``tests/backends``, composites included.
memcached lists one instance at a time, and refuses the rest naming the
database backend.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from console_auth.adapters.memcached import MemcachedConsoleConnectionRepository
from console_auth.application import ConsoleConnectionRepository
from console_auth.application.ports import StoredConnection
from console_auth.domain import ConsoleConnection, InvalidRequest
from tests.builders import a_connection
from tests.fakes import T0


def walk(
    repository: ConsoleConnectionRepository, limit: int, **filters: object
) -> list[list[StoredConnection]]:
    """Every page, each starting after the last hash of the one before."""
    pages: list[list[StoredConnection]] = []
    after: str | None = None
    while True:
        page = repository.connections(after, limit, **filters)  # type: ignore[arg-type]
        assert len(page) <= limit
        if not page:
            return pages
        pages.append(page)
        after = page[-1].connection.token_hash


def connections_of(pages: list[list[StoredConnection]]) -> list[ConsoleConnection]:
    return [stored.connection for page in pages for stored in page]


def by_hash(connections: list[ConsoleConnection]) -> list[ConsoleConnection]:
    return sorted(connections, key=lambda c: c.token_hash)


def test_one_instance_is_listed_page_by_page_in_hash_order(
    repository: ConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    mine = [a_connection(instance_uuid=instance, port=5900 + i) for i in range(5)]
    for connection in [*mine, a_connection()]:
        repository.add(connection)
    pages = walk(repository, 2, instance_uuid=instance)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert connections_of(pages) == by_hash(mine)


def test_everything_is_listed_across_instances_except_on_memcached(
    repository: ConsoleConnectionRepository,
) -> None:
    every = [a_connection() for _ in range(7)]  # instances of both cells, on memory-cells
    for connection in every:
        repository.add(connection)
    if isinstance(repository, MemcachedConsoleConnectionRepository):
        with pytest.raises(InvalidRequest, match="needs the database backend"):
            repository.connections(None, 10)
        with pytest.raises(InvalidRequest, match="needs the database backend"):
            repository.connections(None, 10, host="compute-1")
        return
    assert connections_of(walk(repository, 3)) == by_hash(every)
    assert connections_of(walk(repository, 1000)) == by_hash(every)


def test_the_listing_filters_by_host_and_liveness(
    repository: ConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    live = a_connection(instance_uuid=instance, host="compute-1", expires_at=T0 + timedelta(1))
    at_expiry = a_connection(instance_uuid=instance, host="compute-1", expires_at=T0)
    elsewhere = a_connection(instance_uuid=instance, host="esx-7", expires_at=T0 + timedelta(1))
    for connection in (live, at_expiry, elsewhere):
        repository.add(connection)
    listed = connections_of(walk(repository, 10, instance_uuid=instance, host="compute-1"))
    assert listed == by_hash([live, at_expiry])
    listed = connections_of(walk(repository, 10, instance_uuid=instance, live_at=T0))
    assert listed == by_hash([live, elsewhere])  # at its expiry instant a token is gone
    if not isinstance(repository, MemcachedConsoleConnectionRepository):
        listed = connections_of(walk(repository, 10, host="esx-7", live_at=T0))
        assert listed == [elsewhere]


def test_a_listing_never_holds_what_it_was_not_asked_for(
    repository: ConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    repository.add(a_connection())
    assert repository.connections(None, 10, instance_uuid=instance) == []
    assert repository.connections("f" * 64, 10, instance_uuid=instance) == []


def test_delete_by_hash_deletes_that_token_only_and_records_no_revocation(
    repository: ConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    doomed, kept = (a_connection(instance_uuid=instance) for _ in range(2))
    repository.add(doomed)
    repository.add(kept)
    assert repository.delete_by_hash(doomed.token_hash) == 1
    assert repository.get_by_hash(doomed.token_hash) is None
    assert repository.get_by_hash(kept.token_hash) == kept
    assert repository.delete_by_hash(doomed.token_hash) == 0
    assert repository.revocations({instance}) == {}
    assert connections_of(walk(repository, 10, instance_uuid=instance)) == [kept]


def test_purge_by_instances_deletes_their_expired_tokens_whatever_the_host(
    repository: ConsoleConnectionRepository,
) -> None:
    """Bug 1816399: the stored host is the console's (an ESX host, an Ironic
    console host), not the compute node's, so a node purges by instance."""
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    expired = [
        a_connection(instance_uuid=mine, host=host, expires_at=T0 - timedelta(seconds=i))
        for i, host in enumerate(["compute-1", "esx-7.example.com", "esx-8", "ironic-c", "x"], 1)
    ]
    live = a_connection(instance_uuid=mine, expires_at=T0 + timedelta(microseconds=1))
    other = a_connection(instance_uuid=theirs, expires_at=T0 - timedelta(seconds=1))
    for connection in [*expired, live, other]:
        repository.add(connection)
    assert repository.purge_instances(T0, [mine, uuid.uuid4()], 2) == 5
    assert all(repository.get_by_hash(c.token_hash) is None for c in expired)
    assert repository.get_by_hash(live.token_hash) == live
    assert repository.get_by_hash(other.token_hash) == other
    assert repository.purge_instances(T0, [mine], 2) == 0
    assert repository.purge_instances(T0, [], 2) == 0


def test_purge_by_instances_takes_many_instances_at_once(
    repository: ConsoleConnectionRepository,
) -> None:
    instances = [uuid.uuid4() for _ in range(1200)]  # over one IN (...) chunk
    expired = [
        a_connection(instance_uuid=i, expires_at=T0 - timedelta(seconds=1))
        for i in instances[::100]
    ]
    for connection in expired:
        repository.add(connection)
    assert repository.purge_instances(T0, instances, 1000) == len(expired)
    assert all(repository.get_by_hash(c.token_hash) is None for c in expired)
