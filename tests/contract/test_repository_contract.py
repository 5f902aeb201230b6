"""The behaviour every ``ConsoleConnectionRepository`` adapter must share.

Runs unchanged over every backend in ``tests/backends.py``; the in-memory
adapter is the reference.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, timedelta, timezone

import pytest

from console_auth.adapters.memcached import MemcachedConsoleConnectionRepository
from console_auth.application import REVOCATION_RETENTION, ConsoleConnectionRepository
from console_auth.domain import (
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
    SerialMode,
)
from tests.builders import a_connection
from tests.fakes import T0


def test_added_connection_comes_back_by_hash(repository: ConsoleConnectionRepository) -> None:
    connection = a_connection()
    repository.add(connection)
    assert repository.get_by_hash(connection.token_hash) == connection


def test_every_field_survives_storage(repository: ConsoleConnectionRepository) -> None:
    connection = a_connection(
        host="2001:db8::7",
        port=65535,
        console_type=ConsoleType.SERIAL,
        options=ConsoleOptions(
            internal_access_path="/websockify?x=1",
            use_tls=True,
            tls_port=5901,
            mode=SerialMode.BIND,
            extra={"a.b": "ünïcode", "n": -(2**63), "f": 0.1, "t": True},
        ),
        access_url_base="wss://proxy.example.com:6083/?lang=en",
        expires_at=T0 + timedelta(microseconds=123_457),
        issued_at=T0 - timedelta(microseconds=1),
    )
    repository.add(connection)
    stored = repository.get_by_hash(connection.token_hash)
    assert stored == connection
    assert stored is not None
    assert stored.expires_at.tzinfo is UTC


def test_non_utc_expiry_is_stored_as_the_same_instant(
    repository: ConsoleConnectionRepository,
) -> None:
    tokyo = timezone(timedelta(hours=9))
    connection = a_connection(expires_at=(T0 + timedelta(hours=1)).astimezone(tokyo))
    repository.add(connection)
    stored = repository.get_by_hash(connection.token_hash)
    assert stored is not None
    assert stored.expires_at == T0 + timedelta(hours=1)


def test_unknown_hash_is_none(repository: ConsoleConnectionRepository) -> None:
    repository.add(a_connection())
    assert repository.get_by_hash("f" * 64) is None


def test_expired_connections_are_still_returned(repository: ConsoleConnectionRepository) -> None:
    connection = a_connection(expires_at=T0 - timedelta(days=365))
    repository.add(connection)
    assert repository.get_by_hash(connection.token_hash) == connection


def test_duplicate_hash_is_refused_and_the_first_kept(
    repository: ConsoleConnectionRepository,
) -> None:
    instance = uuid.uuid4()
    first = a_connection(token="same", instance_uuid=instance, host="compute-1")
    repository.add(first)
    with pytest.raises(InvalidRequest, match="already stored"):
        repository.add(a_connection(token="same", instance_uuid=instance, host="compute-2"))
    assert repository.get_by_hash(first.token_hash) == first


def test_many_tokens_per_instance_host_and_port(repository: ConsoleConnectionRepository) -> None:
    instance = uuid.uuid4()
    shared = [a_connection(instance_uuid=instance, port=5900) for _ in range(3)]
    for connection in shared:
        repository.add(connection)
    assert all(repository.get_by_hash(c.token_hash) == c for c in shared)


def test_delete_by_instance_removes_only_that_instance(
    repository: ConsoleConnectionRepository,
) -> None:
    doomed, kept = uuid.uuid4(), uuid.uuid4()
    theirs = [a_connection(instance_uuid=doomed, host=f"compute-{i}") for i in range(3)]
    ours = a_connection(instance_uuid=kept)
    for connection in [*theirs, ours]:
        repository.add(connection)
    assert repository.delete_by_instance(doomed, T0) == 3
    assert all(repository.get_by_hash(c.token_hash) is None for c in theirs)
    assert repository.get_by_hash(ours.token_hash) == ours
    assert repository.delete_by_instance(doomed, T0) == 0


def test_revoke_keeps_a_record_of_that_instance_only(
    repository: ConsoleConnectionRepository,
) -> None:
    revoked, untouched, without_tokens = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    repository.add(a_connection(instance_uuid=revoked))
    repository.add(a_connection(instance_uuid=untouched))
    assert repository.revocations({revoked, untouched, without_tokens}) == {}
    repository.delete_by_instance(revoked, T0)
    repository.delete_by_instance(without_tokens, T0 + timedelta(microseconds=1))
    assert repository.revocations({revoked, untouched, without_tokens}) == {
        revoked: T0,
        without_tokens: T0 + timedelta(microseconds=1),
    }
    assert repository.revocations({untouched}) == {}
    assert repository.revocations(set()) == {}


def test_the_record_keeps_the_latest_revoke(repository: ConsoleConnectionRepository) -> None:
    instance = uuid.uuid4()
    repository.delete_by_instance(instance, T0)
    later = (T0 + timedelta(hours=1, microseconds=7)).astimezone(timezone(timedelta(hours=-5)))
    repository.delete_by_instance(instance, later)
    (stored,) = repository.revocations([instance]).values()
    assert stored == later
    assert stored.tzinfo is UTC
    repository.delete_by_instance(instance, T0)  # racing, or a clock behind
    assert repository.revocations([instance]) == {instance: later}


def test_revocations_are_read_for_many_instances_at_once(
    repository: ConsoleConnectionRepository,
) -> None:
    instances = [uuid.uuid4() for _ in range(1200)]  # over one IN (...) chunk
    for n, instance in enumerate(instances[::100]):
        repository.delete_by_instance(instance, T0 + timedelta(seconds=n))
    found = repository.revocations(instances)
    assert found == {i: T0 + timedelta(seconds=n) for n, i in enumerate(instances[::100])}


def test_forgetting_old_revocations_keeps_newer_ones(
    repository: ConsoleConnectionRepository,
) -> None:
    old, new = uuid.uuid4(), uuid.uuid4()
    repository.delete_by_instance(old, T0)
    repository.delete_by_instance(new, T0 + timedelta(seconds=1))
    repository.purge_expired(T0 + timedelta(seconds=1) + REVOCATION_RETENTION, None, 100)
    found = repository.revocations({old, new})
    assert found[new] == T0 + timedelta(seconds=1)
    # forgotten now, or (memcached) left to expire by itself in real time
    assert old not in found or isinstance(repository, MemcachedConsoleConnectionRepository)


def test_purge_uses_inclusive_boundary(repository: ConsoleConnectionRepository) -> None:
    at_now = a_connection(expires_at=T0)
    just_after = a_connection(expires_at=T0 + timedelta(microseconds=1))
    for connection in (at_now, just_after):
        repository.add(connection)
    assert repository.purge_expired(T0, None, 100) == 1
    assert repository.get_by_hash(at_now.token_hash) is None
    assert repository.get_by_hash(just_after.token_hash) == just_after


def test_purge_deletes_every_expired_row_batch_by_batch(
    repository: ConsoleConnectionRepository,
) -> None:
    expired = [a_connection(expires_at=T0 - timedelta(seconds=i)) for i in range(1, 6)]
    for connection in expired:
        repository.add(connection)
    assert repository.purge_expired(T0, None, 2) == 5
    assert repository.purge_expired(T0, None, 2) == 0
    assert all(repository.get_by_hash(c.token_hash) is None for c in expired)


def test_purge_of_one_host(repository: ConsoleConnectionRepository) -> None:
    mine = a_connection(host="compute-1", expires_at=T0 - timedelta(seconds=1))
    theirs = a_connection(host="compute-2", expires_at=T0 - timedelta(seconds=1))
    live = a_connection(host="compute-1", expires_at=T0 + timedelta(seconds=1))
    for connection in (mine, theirs, live):
        repository.add(connection)
    assert repository.purge_expired(T0, "compute-1", 100) == 1
    assert repository.get_by_hash(mine.token_hash) is None
    assert repository.get_by_hash(theirs.token_hash) == theirs
    assert repository.get_by_hash(live.token_hash) == live


def test_concurrent_adds_are_all_kept(repository: ConsoleConnectionRepository) -> None:
    batches = [[a_connection(host=f"compute-{t}") for _ in range(25)] for t in range(8)]
    errors: list[BaseException] = []

    def add_all(batch: list[ConsoleConnection]) -> None:
        try:
            for connection in batch:
                repository.add(connection)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add_all, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(repository.get_by_hash(c.token_hash) == c for b in batches for c in b)
