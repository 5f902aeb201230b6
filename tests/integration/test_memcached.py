"""The memcached adapter against real servers: what it stores, how long,
under contention, and when servers die or hold garbage.

The contract, property and stateful suites run on memcached through
``tests/backends/memcached.py``; this module covers what only memcached has.
Tests that stop a server start their own; the rest share one per module
(``CONSOLE_AUTH_TEST_MEMCACHED`` when set).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client

from console_auth.adapters import cli
from console_auth.adapters.container import build_container
from console_auth.adapters.memcached import (
    MemcachedClient,
    MemcachedConsoleConnectionRepository,
    Server,
    parse_server,
)
from console_auth.adapters.memcached.keys import expiry
from console_auth.adapters.memcached.repository import LIST_SLACK
from console_auth.adapters.settings import Settings
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import MAX_TTL, ConsoleAuthService
from console_auth.domain import (
    BackendUnavailable,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    IssuedConsole,
    UnsupportedVersion,
    hash_token,
)
from tests.backends.memcached import (
    MemcachedProcess,
    client_for,
    fresh_prefix,
)
from tests.fakes import T0, FakeClock, FixedTokenSource

RETENTION = 3600


@pytest.fixture
def repository(client: MemcachedClient) -> MemcachedConsoleConnectionRepository:
    return MemcachedConsoleConnectionRepository(
        client, key_prefix=fresh_prefix(), expired_retention=RETENTION
    )


def start(processes: list[MemcachedProcess], memory_mb: int = 64) -> MemcachedProcess:
    process = MemcachedProcess(memory_mb=memory_mb).start()
    processes.append(process)
    return process


def real_time_service(repository: MemcachedConsoleConnectionRepository) -> ConsoleAuthService:
    return ConsoleAuthService(repository, SystemClock(), SecretsTokenSource())


def raw_client(server: Server) -> Client:
    return Client((server.host, server.port), default_noreply=False, timeout=5)


def raw_get(client: MemcachedClient, key: str) -> bytes | None:
    value: bytes | None = raw_client(client.server_for(key)).get(key)
    return value


def raw_set(client: MemcachedClient, key: str, value: bytes, flags: int = 0) -> None:
    raw_client(client.server_for(key)).set(key, value, expire=600, flags=flags)


def remaining_ttl(client: MemcachedClient, key: str) -> int | None:
    """The item's remaining seconds, by the meta command ``mg <key> t``."""
    server = client.server_for(key)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"mg {key} t\r\n".encode("ascii"))
        reply = sock.recv(256).decode("ascii")
    if reply.startswith("EN"):
        return None
    assert reply.startswith("HD"), reply
    return int(next(flag[1:] for flag in reply.split()[1:] if flag.startswith("t")))


def index_entries(client: MemcachedClient, key: str) -> list[list[Any]]:
    raw = raw_get(client, key)
    return [] if raw is None else list(json.loads(raw))


# --- what is stored, and for how long --------------------------------------------


def test_keys_and_values_carry_the_hash_and_the_primitive_never_the_token(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = real_time_service(repository)
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()
    connection = issued.connection

    key = repository.connection_key(connection.token_hash)
    assert key == f"{repository.key_prefix}:c:{hash_token(token)}"
    stored = raw_get(client, key)
    assert stored is not None
    assert json.loads(stored) == connection.to_primitive()
    assert raw_get(client, f"{repository.key_prefix}:c:{token}") is None
    keys = [
        key,
        repository.instance_key(connection.instance_uuid),
        repository.host_key(connection.host, connection.instance_uuid),
        repository.registry_key(connection.host),
    ]
    for name in keys:
        value = raw_get(client, name)
        assert value is not None, name
        assert token not in name
        assert token.encode("ascii") not in value
    assert index_entries(client, keys[1])[0][0] == connection.token_hash
    assert index_entries(client, keys[2])[0][0] == str(connection.instance_uuid)
    assert index_entries(client, keys[3])[0][0] == "compute-1"


def test_the_item_ttl_follows_the_expiry_plus_the_retention(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = real_time_service(repository)
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc", ttl=timedelta(minutes=10))
    connection = issued.connection

    item_ttl = remaining_ttl(client, repository.connection_key(connection.token_hash))
    index_ttl = remaining_ttl(client, repository.instance_key(connection.instance_uuid))
    host_ttl = remaining_ttl(
        client, repository.host_key(connection.host, connection.instance_uuid)
    )
    assert item_ttl is not None
    assert 600 + RETENTION - 3 <= item_ttl <= 600 + RETENTION + 2
    # An index never dies before what it lists; host lists are written with slack.
    assert index_ttl is not None
    assert item_ttl <= index_ttl <= item_ttl + 90
    assert host_ttl is not None
    assert item_ttl + LIST_SLACK <= host_ttl <= item_ttl + LIST_SLACK + 90


def test_beyond_thirty_days_the_ttl_is_sent_as_an_absolute_time(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    issued = real_time_service(repository).authorize(
        uuid.uuid4(), "compute-1", 5900, "novnc", ttl=MAX_TTL
    )

    ttl = remaining_ttl(client, repository.connection_key(issued.connection.token_hash))
    expected = int(MAX_TTL.total_seconds()) + RETENTION  # more than memcached's 30 days
    assert ttl is not None
    assert expected - 5 <= ttl <= expected + 2


def test_an_expired_connection_is_kept_for_the_retention_only(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    """T0 is in the past: the connection expired long ago by the wall clock."""
    clock = FakeClock(T0)
    service = ConsoleAuthService(repository, clock, FixedTokenSource())
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    clock.advance(timedelta(hours=1))

    with pytest.raises(InvalidToken) as refused:
        service.validate(issued.token.get_secret_value())
    assert refused.value.reason is InvalidTokenReason.EXPIRED
    ttl = remaining_ttl(client, repository.connection_key(issued.connection.token_hash))
    assert ttl is not None
    assert RETENTION - 3 <= ttl <= RETENTION + 2
    assert service.purge_expired() == 1


def test_a_minor_version_from_a_newer_release_is_read(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    newer = issued.connection.to_primitive()
    newer["console_auth.version"] = "1.99"
    newer["console_auth.data"]["colour"] = "blue"
    key = repository.connection_key(issued.connection.token_hash)
    raw_set(client, key, json.dumps(newer, indent=1).encode("utf-8"))

    assert service.validate(issued.token.get_secret_value()) == issued.connection


# --- concurrency ------------------------------------------------------------------


def test_eight_threads_authorizing_and_revoking_the_same_instances(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    """No index entry is ever lost: a token authorized before a revoke began
    is gone after it, one authorized after every revoke ended validates, and
    each instance index lists exactly the tokens that survive."""
    service = real_time_service(repository)
    instances = [uuid.uuid4() for _ in range(3)]
    sequence = itertools.count()
    issued: list[tuple[IssuedConsole, int, int]] = []
    revokes: list[tuple[uuid.UUID, int, int, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(50):
                instance = rng.choice(instances)
                if rng.random() < 0.15:
                    begun = next(sequence)
                    count = service.revoke_instance(instance)
                    revokes.append((instance, begun, next(sequence), count))
                else:
                    begun = next(sequence)
                    console = service.authorize(instance, "compute-1", 5900, "novnc")
                    issued.append((console, begun, next(sequence)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert revokes
    survivors: dict[uuid.UUID, set[str]] = {instance: set() for instance in instances}
    for console, begun, ended in issued:
        instance = console.connection.instance_uuid
        theirs = [r for r in revokes if r[0] == instance]
        token = console.token.get_secret_value()
        try:
            service.validate(token, instance)
        except InvalidToken as exc:
            refused: InvalidTokenReason | None = exc.reason
        else:
            refused = None
        if refused is None:
            survivors[instance].add(console.connection.token_hash)
            assert not any(r_begun > ended for _, r_begun, _, _ in theirs), "survived a revoke"
        else:
            assert refused is InvalidTokenReason.UNKNOWN
            assert any(r_end > begun for _, _, r_end, _ in theirs), "lost without a revoke"
    assert sum(r[3] for r in revokes) == len(issued) - sum(map(len, survivors.values()))
    assert 0 < sum(r[3] for r in revokes) < len(issued)  # both outcomes were exercised
    for instance, hashes in survivors.items():
        listed = {e[0] for e in index_entries(client, repository.instance_key(instance))}
        assert listed == hashes


# --- eviction ---------------------------------------------------------------------


def test_an_evicted_token_is_invalid_and_counted_without_the_token(
    client: MemcachedClient,
    repository: MemcachedConsoleConnectionRepository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = real_time_service(repository)
    instance = uuid.uuid4()
    kept = service.authorize(instance, "compute-1", 5900, "novnc")
    evicted = service.authorize(instance, "compute-1", 5900, "novnc")
    token = evicted.token.get_secret_value()
    key = repository.connection_key(evicted.connection.token_hash)
    raw_client(client.server_for(key)).delete(key)  # as memcached does under memory pressure
    caplog.set_level(logging.INFO, logger="console_auth")

    with pytest.raises(InvalidToken) as refused:
        service.validate(token)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN
    assert service.revoke_instance(instance) == 1
    with pytest.raises(InvalidToken):
        service.validate(kept.token.get_secret_value())

    assert repository.stats.evicted == 1
    assert f"token hash {evicted.connection.token_hash[:8]})" in caplog.text
    assert token not in caplog.text
    assert evicted.connection.token_hash not in caplog.text


def test_real_evictions_make_tokens_unknown_never_an_error(
    processes: list[MemcachedProcess],
) -> None:
    process = start(processes, memory_mb=2)
    client = client_for([process.address])
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = real_time_service(repository)
    issued = [service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc") for _ in range(50)]
    flood = raw_client(client.servers[0])
    junk = b"x" * 600
    for number in range(20_000):
        flood.set(f"junk-{number}", junk, noreply=True)
    flood.get("junk-0")  # waits for the noreply sets to land

    outcomes: list[str] = []
    for console in issued:
        try:
            service.validate(console.token.get_secret_value())
        except InvalidToken as exc:
            outcomes.append(exc.reason.value)
        else:
            outcomes.append("valid")
    assert set(outcomes) <= {"valid", "unknown"}
    assert "unknown" in outcomes
    client.close()


# --- faults -----------------------------------------------------------------------


def test_a_killed_server_is_a_typed_error_and_the_same_client_recovers(
    processes: list[MemcachedProcess],
) -> None:
    process = start(processes)
    client = client_for([process.address], dead_timeout=0.5, connect_timeout=1.0, timeout=2.0)
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = real_time_service(repository)
    instance = uuid.uuid4()
    before = service.authorize(instance, "compute-1", 5900, "novnc")
    token = before.token.get_secret_value()
    assert service.validate(token) == before.connection

    process.kill()
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match=process.address) as failed:
        service.validate(token)
    assert time.monotonic() - began < 3
    assert token not in str(failed.value)
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="failing fast"):
        service.authorize(instance, "compute-1", 5900, "novnc")
    with pytest.raises(BackendUnavailable):
        service.revoke_instance(instance)
    assert time.monotonic() - began < 0.2  # no network while it fails fast

    process.start()
    time.sleep(0.6)
    with pytest.raises(InvalidToken) as refused:  # a restarted memcached is empty
        service.validate(token)
    assert refused.value.reason is InvalidTokenReason.UNKNOWN
    after = service.authorize(instance, "compute-1", 5900, "novnc")
    assert service.validate(after.token.get_secret_value()) == after.connection
    client.close()


def test_a_scrape_that_times_out_leaves_the_server_serving(
    processes: list[MemcachedProcess],
) -> None:
    """Metrics only observe: a stats read that fails is left out of the
    scrape, and the next command is not failed fast for it."""
    process = start(processes)
    client = client_for([process.address], timeout=0.3, retry_attempts=1, dead_timeout=30)
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = real_time_service(repository)
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    assert process.address in client.evictions()
    process.pause()
    try:
        began = time.monotonic()
        assert client.evictions() == {}
        assert time.monotonic() - began < 0.3 + 1.0  # one try: a scrape is not retried
    finally:
        process.resume()
    assert service.validate(issued.token.get_secret_value()) == issued.connection
    client.close()


def test_a_hung_server_times_out_as_a_typed_error(processes: list[MemcachedProcess]) -> None:
    """Bounded by (retry_attempts + 1) x timeout for a read; a write that
    timed out is not retried, since the server may have applied it."""
    process = start(processes)
    client = client_for([process.address], timeout=0.3, retry_attempts=1, dead_timeout=0)
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = real_time_service(repository)
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    process.pause()
    try:
        for call, bound in (
            (lambda: service.validate(issued.token.get_secret_value()), 2 * 0.3),
            (lambda: service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc"), 0.3),
        ):
            began = time.monotonic()
            with pytest.raises(BackendUnavailable, match="TimeoutError"):
                call()
            took = time.monotonic() - began
            assert bound <= took < bound + 1.5, took  # slack for a loaded CI machine
    finally:
        process.resume()
    assert service.validate(issued.token.get_secret_value()) == issued.connection
    client.close()


def test_a_restart_between_two_commands_is_invisible(processes: list[MemcachedProcess]) -> None:
    """Pooled connections to the old process are stale; the first one found
    dead takes the other idle ones with it, and one retry on a new
    connection hides the restart from the caller."""
    process = start(processes)
    client = client_for([process.address], dead_timeout=5.0)
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = real_time_service(repository)
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()
    barrier = threading.Barrier(8)

    def validate_together() -> None:  # leaves several idle pooled connections
        barrier.wait()
        for _ in range(20):
            service.validate(token)

    threads = [threading.Thread(target=validate_together) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    process.stop()
    process.start()

    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value()) == issued.connection
    client.close()


def test_one_of_two_servers_down_fails_only_its_shard(processes: list[MemcachedProcess]) -> None:
    alive, dead = start(processes), start(processes)
    client = client_for([alive.address, dead.address], retry_timeout=0.0)
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    issued = [service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc") for _ in range(40)]

    def shard(console: IssuedConsole) -> str:
        return client.server_for(repository.connection_key(console.connection.token_hash)).name

    assert {shard(console) for console in issued} == {alive.address, dead.address}
    dead.stop()

    for console in issued:
        token = console.token.get_secret_value()
        if shard(console) == alive.address:
            assert service.validate(token) == console.connection
        else:
            with pytest.raises(BackendUnavailable, match=dead.address):
                service.validate(token)
    client.close()


def test_a_failed_index_write_undoes_the_item(processes: list[MemcachedProcess]) -> None:
    """A token whose instance index cannot be written is never handed out,
    and its item does not stay behind where revoke could not find it."""
    alive, dead = start(processes), start(processes)
    client = client_for([alive.address, dead.address])
    repository = MemcachedConsoleConnectionRepository(client, key_prefix=fresh_prefix())
    tokens = FixedTokenSource()
    service = ConsoleAuthService(repository, FakeClock(T0), tokens)
    instance = next(
        i
        for i in iter(uuid.uuid4, None)
        if client.server_for(repository.instance_key(i)).name == dead.address
    )
    probe = FixedTokenSource()
    token = next(
        t
        for t in iter(probe.new_token, None)
        if client.server_for(repository.connection_key(hash_token(t))).name == alive.address
    )
    for _ in range(int(token[3:]) - 1):  # let the service draw exactly that token
        tokens.new_token()
    dead.stop()

    with pytest.raises(BackendUnavailable, match=dead.address):
        service.authorize(instance, "compute-1", 5900, "novnc")

    assert raw_get(client, repository.connection_key(hash_token(token))) is None
    client.close()


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        (b"\x80\x04\x95garbage", 1),  # a pickle, as another pymemcache user might write
        (b"not json", 0),
        (b"[1, 2]", 0),
        (b'{"console_auth.name": "Something"}', 0),
        (b"[" * 100_000, 0),
        (b"", 0),
    ],
    ids=["pickle", "text", "array", "foreign-envelope", "nested", "empty"],
)
def test_a_foreign_or_corrupt_value_is_a_typed_error(
    client: MemcachedClient,
    repository: MemcachedConsoleConnectionRepository,
    caplog: pytest.LogCaptureFixture,
    value: bytes,
    flags: int,
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()
    raw_set(client, repository.connection_key(issued.connection.token_hash), value, flags)

    with pytest.raises(BackendUnavailable, match="unreadable") as failed:
        service.validate(token)
    assert token not in str(failed.value)
    assert token not in caplog.text


def test_a_value_with_bad_fields_or_another_hash_is_unreadable(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    first, second = (service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc") for _ in "ab")
    bad_port = first.connection.to_primitive()
    bad_port["console_auth.data"]["port"] = "5900; rm -rf /"
    raw_set(client, repository.connection_key(first.connection.token_hash), _dumps(bad_port))
    raw_set(
        client,
        repository.connection_key(second.connection.token_hash),
        _dumps(first.connection.to_primitive()),
    )

    with pytest.raises(BackendUnavailable, match="unreadable: invalid console connection: port"):
        service.validate(first.token.get_secret_value())
    with pytest.raises(BackendUnavailable, match="another token hash"):
        service.validate(second.token.get_secret_value())


def test_a_newer_major_version_is_unsupported(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    newer = issued.connection.to_primitive()
    newer["console_auth.version"] = "2.0"
    raw_set(client, repository.connection_key(issued.connection.token_hash), _dumps(newer))

    with pytest.raises(UnsupportedVersion):
        service.validate(issued.token.get_secret_value())


def test_a_corrupt_index_is_a_typed_error_for_revoke_authorize_and_purge(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    instance = uuid.uuid4()
    issued = service.authorize(instance, "compute-1", 5900, "novnc")
    raw_set(client, repository.instance_key(instance), b'[["not a hash", 1, 2, "h"]]')
    raw_set(client, repository.host_keys("compute-1")[5], b"{}")

    with pytest.raises(BackendUnavailable, match="instance index in memcached is unreadable"):
        service.revoke_instance(instance)
    with pytest.raises(BackendUnavailable, match="unreadable"):
        service.authorize(instance, "compute-1", 5900, "novnc")
    with pytest.raises(BackendUnavailable, match="host index in memcached is unreadable"):
        service.purge_expired("compute-1")
    assert service.validate(issued.token.get_secret_value()) == issued.connection


def test_an_index_entry_a_newer_release_extended_is_carried_through(
    client: MemcachedClient, repository: MemcachedConsoleConnectionRepository
) -> None:
    service = ConsoleAuthService(repository, FakeClock(T0), FixedTokenSource())
    instance = uuid.uuid4()
    first = service.authorize(instance, "compute-1", 5900, "novnc")
    key = repository.instance_key(instance)
    extended = [[*entry, {"future": True}] for entry in index_entries(client, key)]
    raw_set(client, key, json.dumps(extended).encode("utf-8"))

    service.authorize(instance, "compute-1", 5900, "novnc")

    entries = index_entries(client, key)
    assert entries[0] == [*extended[0]]
    assert entries[0][0] == first.connection.token_hash
    assert service.revoke_instance(instance) == 2


@pytest.mark.parametrize(
    ("reclaim_in", "sent"),
    [
        (1, "relative"),
        (2_592_000, "relative"),  # exactly 30 days is still relative
        (2_592_001, "absolute"),
    ],
)
def test_memcached_expiry_switches_to_absolute_time_past_thirty_days(
    reclaim_in: int, sent: str
) -> None:
    now = 1_800_000_000.25
    reclaim_at = 1_800_000_000 + reclaim_in
    expected = reclaim_in if sent == "relative" else reclaim_at
    assert expiry(reclaim_at, now) == expected


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("cache-1:11311", Server("cache-1", 11311)),
        ("cache-1", Server("cache-1", 11211)),
        ("[2001:db8::5]:1", Server("2001:db8::5", 1)),
        ("::1", Server("::1", 11211)),
    ],
)
def test_server_addresses(text: str, server: Server) -> None:
    assert parse_server(text) == server
    assert parse_server(text).name == f"{server.host}:{server.port}"  # HashClient's node name


@pytest.mark.parametrize("text", ["", ":11211", "cache-1:0", "cache-1:x", "[::1", "a b:1"])
def test_bad_server_addresses(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_server(text)


def _dumps(primitive: dict[str, Any]) -> bytes:
    return json.dumps(primitive).encode("utf-8")


# --- switching backends -----------------------------------------------------------


def test_switching_from_memcached_to_the_database_breaks_no_live_console(
    servers: list[str], tmp_path: Path
) -> None:
    common: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path}/tokens.sqlite3"},
        "memcached": {"servers": servers, "key_prefix": fresh_prefix()},
    }
    before = build_container(
        Settings.model_validate({**common, "console_tokens_backend": "memcached"})
    )
    during = build_container(
        Settings.model_validate(
            {**common, "console_tokens_backend": "database", "fallback": "memcached"}
        )
    )
    after = build_container(
        Settings.model_validate({**common, "console_tokens_backend": "database"})
    )
    try:
        revoked, kept = uuid.uuid4(), uuid.uuid4()
        old = before.service().authorize(revoked, "compute-1", 5900, "novnc")
        live = before.service().authorize(kept, "compute-1", 5900, "novnc")
        assert not before.database.initialized

        switching = during.service()
        assert switching.validate(old.token.get_secret_value()) == old.connection
        new = switching.authorize(revoked, "compute-1", 5900, "novnc")
        memcached = before.memcached().tokens
        assert memcached.get_by_hash(new.connection.token_hash) is None  # primary only
        assert switching.validate(new.token.get_secret_value()) == new.connection
        assert switching.revoke_instance(revoked) == 2  # one in each store
        for gone in (old, new):
            with pytest.raises(InvalidToken):
                switching.validate(gone.token.get_secret_value())
        assert switching.validate(live.token.get_secret_value()) == live.connection

        with pytest.raises(InvalidToken):  # once the switch is over, memcached is not asked
            after.service().validate(live.token.get_secret_value())
    finally:
        for container in (before, during, after):
            container.shutdown_resources()


# --- the command line -------------------------------------------------------------


@pytest.fixture
def on_memcached(servers: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's settings: memcached on the test servers, nothing else."""
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memcached")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__SERVERS", ",".join(servers))
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__KEY_PREFIX", fresh_prefix())


@pytest.mark.usefixtures("on_memcached")
def test_the_command_line_on_memcached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = str(uuid.uuid4())

    assert cli.main(["--json", "authorize", "--instance", instance, "--host", "compute-1",
                     "--port", "5900", "--type", "novnc"]) == 0  # fmt: skip
    token = json.loads(capsys.readouterr().out)["token"]
    assert cli.main(["--json", "validate", "--instance", instance, "--", token]) == 0
    assert json.loads(capsys.readouterr().out)["connection"]["instance_uuid"] == instance
    assert cli.main(["--json", "revoke", instance]) == 0
    assert json.loads(capsys.readouterr().out) == {"count": 1}
    assert cli.main(["validate", "--", token]) == 1
    assert capsys.readouterr().err == "console-auth: error: console token is invalid (unknown)\n"

    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__SERVERS", "127.0.0.1:1")
    assert cli.main(["validate", "--", token]) == 1
    error = capsys.readouterr().err
    assert error.startswith("console-auth: error: memcached server 127.0.0.1:1 is unavailable")
    assert token not in error


@pytest.mark.usefixtures("on_memcached")
def test_the_ports_command_on_memcached_is_refused_naming_the_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """memcached may evict a port lease (Nova bug 1425640), so it keeps none;
    the tokens of the same settings still work."""
    assert cli.main(["ports"]) == 1
    assert capsys.readouterr().err == (
        "console-auth: error: serial consoles need the database backend "
        '(console_tokens_backend = "database"): memcached may evict a port lease\n'
    )
    instance = str(uuid.uuid4())
    assert cli.main(["--json", "authorize", "--instance", instance, "--host", "compute-1",
                     "--port", "5900", "--type", "novnc"]) == 0  # fmt: skip
    token = json.loads(capsys.readouterr().out)["token"]
    assert cli.main(["--json", "validate", "--instance", instance, "--", token]) == 0
    assert json.loads(capsys.readouterr().out)["connection"]["instance_uuid"] == instance
