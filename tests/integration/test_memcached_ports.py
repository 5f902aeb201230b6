"""Serial-port leases and reservations on real memcached servers.

The lease and reservation contract and the stateful test run on memcached
through ``tests/backends/memcached.py``; this module covers what only
memcached has: processes racing through the service, what is stored and for
how long, a release that must not remove a lease stored after its read (no
compare-and-delete), corrupt values and dead servers.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
from pymemcache.client.base import Client

from console_auth.adapters.memcached import (
    MemcachedClient,
    MemcachedConsoleConnectionRepository,
    MemcachedPortLeaseRepository,
    MemcachedPortReservationRepository,
    Server,
    parse_server,
)
from console_auth.adapters.memcached.ports import TOMBSTONE_TTL
from console_auth.adapters.memcached.repository import LIST_SLACK
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.application.serial import ConsolePortService
from console_auth.domain import BackendUnavailable, hash_token
from console_auth.domain.leases import LeaseKind, PortLease
from tests.backends.memcached import (
    MemcachedProcess,
    client_for,
    fresh_prefix,
)
from tests.fakes import T0, FakeClock, FixedTokenSource
from tests.integration.port_race import (
    INSTANCE,
    ROUNDS,
    check_outcomes,
    issue_tokens,
    race,
    run_race,
)

RETENTION = 3600


@pytest.fixture
def leases(client: MemcachedClient) -> MemcachedPortLeaseRepository:
    return MemcachedPortLeaseRepository(
        client, key_prefix=fresh_prefix(), expired_retention=RETENTION
    )


def a_lease(
    kind: LeaseKind = LeaseKind.CONNECTED,
    *,
    host: str = "compute-1",
    port: int = 10000,
    instance: uuid.UUID = INSTANCE,
    since: datetime = T0,
    ttl: timedelta = timedelta(seconds=30),
) -> PortLease:
    return PortLease(
        host=host,
        port=port,
        instance_uuid=instance,
        kind=kind,
        lease_id=uuid.uuid4().hex,
        token_hash=hash_token(uuid.uuid4().hex),
        proxy_id="proxy-a" if kind is LeaseKind.CONNECTED else None,
        since=since,
        expires_at=since + ttl,
    )


def raw_client(server: Server) -> Client:
    return Client((server.host, server.port), default_noreply=False, timeout=5)


def raw_get(client: MemcachedClient, key: str) -> bytes | None:
    value: bytes | None = raw_client(client.server_for(key)).get(key)
    return value


def raw_json(client: MemcachedClient, key: str) -> Any:
    value = raw_get(client, key)
    assert value is not None, key
    return json.loads(value)


def raw_set(client: MemcachedClient, key: str, value: bytes) -> None:
    raw_client(client.server_for(key)).set(key, value, expire=600)


def remaining_ttl(client: MemcachedClient, key: str) -> int | None:
    """The item's remaining seconds (-1: none), by the meta command ``mg <key> t``."""
    server = client.server_for(key)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"mg {key} t\r\n".encode("ascii"))
        reply = sock.recv(256).decode("ascii")
    if reply.startswith("EN"):
        return None
    assert reply.startswith("HD"), reply
    return int(next(flag[1:] for flag in reply.split()[1:] if flag.startswith("t")))


# --- processes racing through the service -----------------------------------------


def make_service(servers: list[str], prefix: str) -> ConsolePortService:
    client = client_for(servers)
    clock, tokens = SystemClock(), SecretsTokenSource()
    consoles = ConsoleAuthService(
        MemcachedConsoleConnectionRepository(client, key_prefix=prefix), clock, tokens
    )
    return ConsolePortService(
        consoles,
        MemcachedPortLeaseRepository(client, key_prefix=prefix),
        MemcachedPortReservationRepository(client, key_prefix=prefix),
        clock,
        tokens,
    )


def worker(
    servers: list[str],
    prefix: str,
    tokens: list[str],
    barrier: Barrier,
    results: Any,
    index: int,
) -> None:
    race(make_service(servers, prefix), tokens, barrier, results, index)


def test_two_processes_racing_have_one_winner_per_round_and_no_port_twice(
    servers: list[str],
) -> None:
    prefix = fresh_prefix()
    service = make_service(servers, prefix)
    outcomes = run_race(worker, servers, prefix, issue_tokens(service))
    check_outcomes(outcomes)
    listed = service.leases(host="compute-1")
    assert [(x.port, x.kind) for x in listed] == [
        (10000 + r, LeaseKind.CONNECTED) for r in range(ROUNDS)
    ]


# --- what is stored, and for how long ----------------------------------------------


def test_a_lease_is_a_versioned_json_value_under_a_hashed_host_key(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository
) -> None:
    lease = a_lease()
    assert leases.claim(lease, T0) is None

    key = leases.lease_key("compute-1", 10000)
    assert key.startswith(f"{leases.key_prefix}:l:")
    assert key.endswith(":10000")
    assert "compute-1" not in key
    stored = raw_get(client, key)
    assert stored is not None
    assert json.loads(stored) == {"v": 1, "lease": lease.model_dump(mode="json")}
    assert [e[0] for e in raw_json(client, leases.registry_key("compute-1"))] == ["compute-1"]
    assert [e[0] for e in raw_json(client, leases.port_index_key("compute-1", 10000))] == [10000]
    assert [(e[0], e[2]) for e in raw_json(client, leases.instance_key(INSTANCE))] == [
        ("compute-1", 10000)
    ]


def test_the_ttl_follows_the_wall_clock_and_never_ends_a_live_lease(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository
) -> None:
    """A fake clock's lease (T0 is long past) is kept for the retention; a
    wall-clock lease for its remaining time plus the retention; indexes
    outlive the items they list."""
    past = a_lease()
    now = datetime.now(UTC)
    current = a_lease(port=10001, since=now, ttl=timedelta(minutes=10))
    leases.claim(past, T0)
    leases.claim(current, now)

    past_ttl = remaining_ttl(client, leases.lease_key("compute-1", 10000))
    current_ttl = remaining_ttl(client, leases.lease_key("compute-1", 10001))
    assert past_ttl is not None
    assert RETENTION - 3 <= past_ttl <= RETENTION + 2
    assert current_ttl is not None
    assert 600 + RETENTION - 3 <= current_ttl <= 600 + RETENTION + 2
    for index_key in (
        leases.registry_key("compute-1"),
        leases.port_index_key("compute-1", 10001),
        leases.instance_key(INSTANCE),
    ):
        index_ttl = remaining_ttl(client, index_key)
        assert index_ttl is not None
        # Written with slack, or already covering it (the first claim's entries).
        assert current_ttl < index_ttl <= current_ttl + LIST_SLACK + 90

    renewed = leases.renew(current, now + timedelta(hours=2), now)
    assert renewed is not None
    renewed_ttl = remaining_ttl(client, leases.lease_key("compute-1", 10001))
    assert renewed_ttl is not None
    assert 7200 + RETENTION - 3 <= renewed_ttl <= 7200 + RETENTION + 2


def test_a_release_leaves_a_short_lived_tombstone_that_blocks_nothing(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository
) -> None:
    lease = a_lease()
    leases.claim(lease, T0)
    assert leases.release(lease) is True

    key = leases.lease_key("compute-1", 10000)
    assert raw_json(client, key) == {"v": 1, "lease": None}
    ttl = remaining_ttl(client, key)
    assert ttl is not None
    assert 0 < ttl <= TOMBSTONE_TTL
    assert leases.leases(T0) == []
    assert leases.delete_by_instance(INSTANCE) == 0
    assert leases.delete_expired(T0 + timedelta(days=1), None, 10) == 0
    again = a_lease()
    assert leases.claim(again, T0) is None  # cas over the tombstone
    assert leases.leases(T0) == [again]


def test_a_reservation_has_no_ttl_and_a_range_is_read_in_chunks(
    client: MemcachedClient,
) -> None:
    reservations = MemcachedPortReservationRepository(client, key_prefix=fresh_prefix())
    for port in (1, 499, 500, 501, 30000, 65535):
        assert reservations.reserve("compute-1", port) is True
    assert remaining_ttl(client, reservations.reservation_key("compute-1", 1)) == -1
    stored = raw_json(client, reservations.reservation_key("compute-1", 30000))
    assert (stored["v"], stored["host"], stored["port"]) == (1, "compute-1", 30000)
    assert reservations.reserved("compute-1", 1, 65535) == {1, 499, 500, 501, 30000, 65535}
    assert reservations.reserved("compute-1", 500, 500) == {500}
    assert reservations.reserved("compute-2", 1, 65535) == set()


@pytest.mark.parametrize(
    "host",
    [
        ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253 characters
        "2001:db8::1",
        "::ffff:192.0.2.1",
    ],
    ids=["longest-name", "ipv6", "ipv4-mapped"],
)
def test_any_valid_host_makes_a_valid_key(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository, host: str
) -> None:
    lease = a_lease(host=host, port=65535)
    assert leases.claim(lease, T0) is None
    assert len(leases.lease_key(host, 65535).encode("ascii")) <= 250
    assert leases.leases(T0, host=host) == [lease]
    assert leases.leases(T0, instance_uuid=INSTANCE) == [lease]
    reservations = MemcachedPortReservationRepository(client, key_prefix=leases.key_prefix)
    assert reservations.reserve(host, 65535) is True
    assert reservations.reserved(host, 65535, 65535) == {65535}


def test_leases_spread_over_two_servers_are_listed_and_revoked(
    processes: list[MemcachedProcess],
) -> None:
    for _ in range(2):
        processes.append(MemcachedProcess(memory_mb=64).start())
    client = client_for([p.address for p in processes])
    leases = MemcachedPortLeaseRepository(client, key_prefix=fresh_prefix())
    other = uuid.uuid4()
    stored = [
        a_lease(host=host, port=port, instance=INSTANCE if port % 2 else other)
        for host in ("compute-1", "compute-2")
        for port in range(10000, 10040)
    ]
    for lease in stored:
        assert leases.claim(lease, T0) is None
    keys = {leases.lease_key(x.host, x.port) for x in stored}
    assert {client.server_for(key).name for key in keys} == {p.address for p in processes}

    assert leases.leases(T0) == stored
    assert leases.leases(T0, host="compute-2", instance_uuid=other) == [
        x for x in stored if x.host == "compute-2" and x.instance_uuid == other
    ]
    assert leases.delete_by_instance(INSTANCE) == 40
    assert leases.leases(T0) == [x for x in stored if x.instance_uuid == other]
    client.close()


# --- no compare-and-delete: a removal never takes a lease stored after its read ----


class InterposingClient(MemcachedClient):
    """Runs ``before_cas`` once, just before the next ``cas``: another
    process's write landing between a read and the write that follows it."""

    before_cas: Callable[[], None] | None = None

    def cas(self, key: str, value: bytes, unique: bytes, expire: int) -> bool | None:
        hook, self.before_cas = self.before_cas, None
        if hook is not None:
            hook()
        return super().cas(key, value, unique, expire)


def claimed(leases: MemcachedPortLeaseRepository, lease: PortLease, now: datetime) -> None:
    assert leases.claim(lease, now) is None


def released(leases: MemcachedPortLeaseRepository, lease: PortLease) -> None:
    assert leases.release(lease) is True


@pytest.fixture
def interposed(servers: list[str]) -> Iterator[InterposingClient]:
    opened = InterposingClient([parse_server(s) for s in servers], timeout=5.0)
    try:
        yield opened
    finally:
        opened.close()


def test_a_late_release_never_frees_a_port_someone_took_meanwhile(
    interposed: InterposingClient, client: MemcachedClient
) -> None:
    prefix = fresh_prefix()
    slow = MemcachedPortLeaseRepository(interposed, key_prefix=prefix)
    other = MemcachedPortLeaseRepository(client, key_prefix=prefix)
    old = a_lease(ttl=timedelta(seconds=1))
    later = T0 + timedelta(seconds=1)
    new = a_lease(since=later)
    assert slow.claim(old, T0) is None

    # The old lease expired: another proxy takes the port between the
    # release's read and its write.
    interposed.before_cas = lambda: claimed(other, new, later)
    assert slow.release(old) is False
    assert other.leases(later) == [new]
    assert other.release(new) is True


def test_a_purge_never_deletes_a_lease_claimed_after_its_read(
    interposed: InterposingClient, client: MemcachedClient
) -> None:
    prefix = fresh_prefix()
    slow = MemcachedPortLeaseRepository(interposed, key_prefix=prefix)
    other = MemcachedPortLeaseRepository(client, key_prefix=prefix)
    slow.claim(a_lease(ttl=timedelta(seconds=1)), T0)
    later = T0 + timedelta(seconds=1)
    new = a_lease(since=later)
    interposed.before_cas = lambda: claimed(other, new, later)
    assert slow.delete_expired(later, None, 10) == 0
    assert other.leases(later) == [new]


def test_a_revoke_never_deletes_another_instances_lease_claimed_after_its_read(
    interposed: InterposingClient, client: MemcachedClient
) -> None:
    prefix = fresh_prefix()
    slow = MemcachedPortLeaseRepository(interposed, key_prefix=prefix)
    other = MemcachedPortLeaseRepository(client, key_prefix=prefix)
    slow.claim(a_lease(LeaseKind.HELD, ttl=timedelta(seconds=1)), T0)
    later = T0 + timedelta(seconds=1)
    new = a_lease(LeaseKind.HELD, since=later, instance=uuid.uuid4())
    interposed.before_cas = lambda: claimed(other, new, later)
    assert slow.delete_by_instance(INSTANCE) == 0
    assert other.leases(later) == [new]


def test_a_renew_that_lost_the_port_meanwhile_reports_it_lost(
    interposed: InterposingClient, client: MemcachedClient
) -> None:
    prefix = fresh_prefix()
    slow = MemcachedPortLeaseRepository(interposed, key_prefix=prefix)
    other = MemcachedPortLeaseRepository(client, key_prefix=prefix)
    old = a_lease()
    slow.claim(old, T0)
    interposed.before_cas = lambda: released(other, old)
    assert slow.renew(old, T0 + timedelta(minutes=5), T0) is None
    assert other.leases(T0) == []


# --- corrupt values and dead servers -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"\x80\x04\x95garbage", "not JSON"),
        (b"[1, 2]", "not a versioned lease object"),
        (b'{"v": 2, "lease": null}', "value format 2 is not 1"),
        (b'{"v": 1, "lease": {"host": "compute-1"}}', "invalid console connection: port"),
        (b"[" * 100_000, "nested too deeply"),
    ],
    ids=["pickle", "array", "newer-format", "missing-fields", "nested"],
)
def test_an_unreadable_lease_is_a_typed_error_never_a_free_port(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository, value: bytes, problem: str
) -> None:
    lease = a_lease()
    leases.claim(lease, T0)
    raw_set(client, leases.lease_key("compute-1", 10000), value)

    for call in (
        lambda: leases.claim(a_lease(), T0),
        lambda: leases.renew(lease, T0 + timedelta(minutes=1), T0),
        lambda: leases.release(lease),
        lambda: leases.leases(T0),
        lambda: leases.delete_by_instance(INSTANCE),
        lambda: leases.delete_expired(T0 + timedelta(days=1), None, 10),
    ):
        with pytest.raises(BackendUnavailable, match=f"port lease is unreadable: {problem}"):
            call()


def test_a_lease_stored_under_another_ports_key_is_unreadable(
    client: MemcachedClient, leases: MemcachedPortLeaseRepository
) -> None:
    leases.claim(a_lease(port=10000), T0)
    leases.claim(a_lease(port=10001), T0)
    moved = raw_get(client, leases.lease_key("compute-1", 10000))
    assert moved is not None
    raw_set(client, leases.lease_key("compute-1", 10001), moved)

    with pytest.raises(BackendUnavailable, match="another port's lease"):
        leases.claim(a_lease(port=10001), T0)


def test_a_killed_server_is_a_typed_error_never_a_wrong_answer(
    processes: list[MemcachedProcess],
) -> None:
    process = MemcachedProcess(memory_mb=64).start()
    processes.append(process)
    client = client_for([process.address], dead_timeout=0.5, connect_timeout=1.0, timeout=2.0)
    prefix = fresh_prefix()
    clock = FakeClock(T0)
    tokens = FixedTokenSource()
    leases = MemcachedPortLeaseRepository(client, key_prefix=prefix)
    reservations = MemcachedPortReservationRepository(client, key_prefix=prefix)
    consoles = ConsoleAuthService(
        MemcachedConsoleConnectionRepository(client, key_prefix=prefix), clock, tokens
    )
    service = ConsolePortService(consoles, leases, reservations, clock, tokens)
    issued = service.authorize_serial(INSTANCE, "compute-1", [10000, 10001])
    connected = service.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
    assert service.allocate_port("compute-1", range(20000, 20010)) == 20000

    process.kill()
    calls: list[Callable[[], object]] = [
        lambda: leases.claim(a_lease(port=10001), T0),
        lambda: leases.renew(connected, T0 + timedelta(minutes=1), T0),
        lambda: leases.release(connected),
        lambda: leases.leases(T0),
        lambda: leases.leases(T0, instance_uuid=INSTANCE),
        lambda: leases.delete_by_instance(INSTANCE),
        lambda: leases.delete_expired(T0, None, 10),
        lambda: reservations.reserve("compute-1", 20001),
        lambda: reservations.release("compute-1", 20000),
        lambda: reservations.reserved("compute-1", 20000, 20009),
        lambda: service.heartbeat(connected),
        lambda: service.disconnect(connected),
        lambda: service.allocate_port("compute-1", range(20000, 20010)),
        lambda: service.authorize_serial(INSTANCE, "compute-1", [10000, 10001]),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable, match=process.address):
            call()

    process.start()  # a restarted memcached is empty: leases and reservations are gone
    for _ in range(50):
        try:
            assert service.leases() == []
            break
        except BackendUnavailable:  # failing fast for dead_timeout after the last error
            threading.Event().wait(0.1)
    else:
        pytest.fail("the restarted server never answered")
    assert reservations.reserved("compute-1", 20000, 20009) == set()
    client.close()
