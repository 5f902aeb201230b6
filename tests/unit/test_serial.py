"""Serial console ports on the in-memory adapters with a fake clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import DEFAULT_PURGE_GRACE, ConsoleAuthService, ServicePolicy
from console_auth.application.serial import ConsolePortService
from console_auth.domain import BackendUnavailable, ConsoleType, InvalidRequest, InvalidToken
from console_auth.domain.errors import (
    LeaseLost,
    NoFreeConsolePort,
    PortAlreadyConnected,
    PortRangeExhausted,
)
from console_auth.domain.leases import LeaseKind
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource, UnavailableRepository

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
PORTS = [10000, 10001, 10002]


def make() -> tuple[ConsolePortService, ConsoleAuthService, FakeClock]:
    clock = FakeClock()
    consoles = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        clock,
        FixedTokenSource(),
        ServicePolicy(lease_ttl=timedelta(seconds=30)),
    )
    ports = ConsolePortService(
        consoles,
        InMemoryPortLeaseRepository(),
        InMemoryPortReservationRepository(),
        FixedLeaseIdSource(),
    )
    return ports, consoles, clock


def test_each_authorize_takes_the_next_defined_port_in_order() -> None:
    ports, _, _ = make()
    chosen = [ports.authorize_serial(INSTANCE, "compute-1", PORTS).connection.port for _ in PORTS]
    assert chosen == PORTS
    with pytest.raises(NoFreeConsolePort):
        ports.authorize_serial(INSTANCE, "compute-1", PORTS)


def test_the_defined_order_is_respected_not_sorted() -> None:
    ports, _, _ = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10002, 10000])
    assert issued.connection.port == 10002
    assert issued.connection.console_type is ConsoleType.SERIAL


def test_a_refused_serial_authorize_stores_no_token() -> None:
    ports, consoles, _ = make()
    ports.authorize_serial(INSTANCE, "compute-1", [10000])
    with pytest.raises(NoFreeConsolePort):
        ports.authorize_serial(INSTANCE, "compute-1", [10000])
    assert consoles.revoke_instance(INSTANCE) == 1


def test_a_failed_store_releases_the_hold() -> None:
    """A port held for a token that was never stored would stay taken
    until the hold expires."""
    clock, leases = FakeClock(), InMemoryPortLeaseRepository()
    down = ConsoleAuthService(UnavailableRepository(), clock, FixedTokenSource())
    up = ConsoleAuthService(InMemoryConsoleConnectionRepository(), clock, FixedTokenSource())
    reservations = InMemoryPortReservationRepository()
    failing = ConsolePortService(down, leases, reservations, FixedLeaseIdSource())
    with pytest.raises(BackendUnavailable):
        failing.authorize_serial(INSTANCE, "compute-1", [10000])
    assert failing.leases() == []
    working = ConsolePortService(up, leases, reservations, FixedLeaseIdSource())
    assert working.authorize_serial(INSTANCE, "compute-1", [10000]).connection.port == 10000


def test_lease_ids_come_from_the_given_source() -> None:
    ports, _, _ = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10000])
    assert [x.lease_id for x in ports.leases()] == [f"lease{1:027d}"]
    lease = ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
    assert lease.lease_id == f"lease{2:027d}"


def test_authorize_serial_passes_the_issue_options_through() -> None:
    ports, consoles, clock = make()
    issued = ports.authorize_serial(
        INSTANCE,
        "compute-1",
        PORTS,
        options={"mode": "connect"},
        access_url_base="https://proxy.example/serial",
        ttl=timedelta(seconds=5),
    )
    stored = consoles.validate(issued.token.get_secret_value(), INSTANCE)
    assert stored == issued.connection
    assert stored.access_url_base == "https://proxy.example/serial"
    assert stored.expires_at == clock.now() + timedelta(seconds=5)
    with pytest.raises(TypeError):
        ports.authorize_serial(INSTANCE, "compute-1", PORTS, None)  # type: ignore[call-arg]


def test_connect_converts_the_hold_and_a_second_client_is_refused() -> None:
    ports, _, _ = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10000])
    token = issued.token.get_secret_value()
    lease = ports.connect(token, INSTANCE, "proxy-a")
    assert (lease.kind, lease.port, lease.proxy_id) == (LeaseKind.CONNECTED, 10000, "proxy-a")
    with pytest.raises(PortAlreadyConnected, match="compute-1:10000"):
        ports.connect(token, INSTANCE, "proxy-b")
    assert [x.lease_id for x in ports.leases(instance_uuid=INSTANCE)] == [lease.lease_id]


def test_a_connected_port_is_skipped_by_authorize_and_freed_by_disconnect() -> None:
    ports, _, _ = make()
    first = ports.authorize_serial(INSTANCE, "compute-1", [10000, 10001])
    lease = ports.connect(first.token.get_secret_value(), INSTANCE, "proxy-a")
    assert ports.authorize_serial(INSTANCE, "compute-1", [10000, 10001]).connection.port == 10001
    assert ports.disconnect(lease) is True
    assert ports.disconnect(lease) is False
    # 10001 is held by the unused token above; 10000 is free again
    assert ports.authorize_serial(INSTANCE, "compute-1", [10001, 10000]).connection.port == 10000


def test_a_dead_proxy_loses_its_lease_after_the_ttl() -> None:
    ports, _, clock = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10000], ttl=timedelta(hours=1))
    token = issued.token.get_secret_value()
    lease = ports.connect(token, INSTANCE, "proxy-a")
    clock.advance(timedelta(seconds=29))
    lease = ports.heartbeat(lease)
    clock.advance(timedelta(seconds=29))
    assert ports.leases(host="compute-1")[0].lease_id == lease.lease_id
    clock.advance(timedelta(seconds=1))  # 30 s after the last heartbeat: gone
    assert ports.leases(host="compute-1") == []
    with pytest.raises(LeaseLost):
        ports.heartbeat(lease)
    again = ports.connect(token, INSTANCE, "proxy-b")
    assert again.proxy_id == "proxy-b"
    assert ports.disconnect(lease) is False  # the old lease cannot free the new one


def test_an_expired_token_cannot_connect() -> None:
    ports, _, clock = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10000], ttl=timedelta(seconds=5))
    clock.advance(timedelta(seconds=5))
    with pytest.raises(InvalidToken):
        ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")


def test_an_expired_hold_frees_the_port() -> None:
    ports, _, clock = make()
    ports.authorize_serial(INSTANCE, "compute-1", [10000], ttl=timedelta(seconds=5))
    clock.advance(timedelta(seconds=5))
    assert ports.authorize_serial(INSTANCE, "compute-1", [10000]).connection.port == 10000


def test_non_serial_tokens_take_no_lease() -> None:
    ports, consoles, _ = make()
    token = consoles.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    with pytest.raises(InvalidRequest, match="serial"):
        ports.connect(token, INSTANCE, "proxy-a")


def test_release_instance_and_purge() -> None:
    ports, _, clock = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", PORTS)
    ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
    ports.authorize_serial(INSTANCE, "compute-1", PORTS)
    assert ports.release_instance(INSTANCE) == 2
    assert ports.leases() == []
    ports.authorize_serial(INSTANCE, "compute-1", PORTS, ttl=timedelta(seconds=1))
    clock.advance(timedelta(seconds=1) + DEFAULT_PURGE_GRACE)
    assert ports.purge_expired(host="compute-2") == 0
    assert ports.purge_expired() == 1


@pytest.mark.parametrize(
    "defined",
    [
        [],
        [0],
        [65536],
        [10000, 10000],
        ["10000"],
        [True],
        list(range(1, 66)),
        10000,
        None,
        "10000",
        b"\x27\x10",
        {10000},
        range(1, 10**20),
    ],
)
def test_bad_defined_ports_are_refused(defined: list[object]) -> None:
    ports, _, _ = make()
    with pytest.raises(InvalidRequest, match="ports"):
        ports.authorize_serial(INSTANCE, "compute-1", defined)  # type: ignore[arg-type]


def test_allocate_hands_out_each_port_once_and_release_returns_it() -> None:
    ports, _, _ = make()
    got = [ports.allocate_port("compute-1", range(10000, 10003)) for _ in range(3)]
    assert got == [10000, 10001, 10002]
    assert ports.allocate_port("compute-2", (10000, 10002)) == 10000
    with pytest.raises(PortRangeExhausted):
        ports.allocate_port("compute-1", range(10000, 10003))
    assert ports.release_port("compute-1", 10001) is True
    assert ports.release_port("compute-1", 10001) is False
    assert ports.allocate_port("compute-1", range(10000, 10003)) == 10001


@pytest.mark.parametrize(
    "bad",
    [
        range(5, 1),
        range(1, 10, 2),
        (10, 5),
        (0, 10),
        (1, 70000),
        None,
        10000,
        "1-9",
        (1,),
        (1, 2, 3),
        (1.0, 2),
        {1: 2},
        range(10**20, 10**20 + 5),
    ],
)
def test_bad_ranges_are_refused(bad: range | tuple[int, int]) -> None:
    ports, _, _ = make()
    with pytest.raises(InvalidRequest, match="range"):
        ports.allocate_port("compute-1", bad)


@pytest.mark.parametrize("lease", [None, "lease-id", {"lease_id": "x"}, 42])
def test_heartbeat_and_disconnect_refuse_what_is_no_lease(lease: object) -> None:
    ports, _, _ = make()
    with pytest.raises(InvalidRequest, match="lease"):
        ports.heartbeat(lease)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="lease"):
        ports.disconnect(lease)  # type: ignore[arg-type]


def test_a_naive_clock_is_refused_by_every_port_call() -> None:
    ports, _, clock = make()
    issued = ports.authorize_serial(INSTANCE, "compute-1", [10000])
    lease = ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
    clock.set(T0.replace(tzinfo=None))
    calls: list[Callable[[], object]] = [
        lambda: ports.authorize_serial(INSTANCE, "compute-1", [10001]),
        lambda: ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-b"),
        lambda: ports.heartbeat(lease),
        lambda: ports.leases(),
        lambda: ports.purge_expired(),
    ]
    for call in calls:
        with pytest.raises(InvalidRequest, match=r"Clock\.now\(\) must be"):
            call()
    clock.set(T0)
    assert [x.lease_id for x in ports.leases()] == [lease.lease_id]


@pytest.mark.parametrize(
    "policy",
    [
        {"lease_ttl": 60},
        {"lease_ttl": timedelta(0)},
        {"lease_ttl": timedelta(days=1, microseconds=1)},
        {"purge_batch_size": 0},
        {"purge_batch_size": 2**63},
        {"purge_batch_size": "10"},
        {"purge_grace": timedelta(seconds=-1)},
        {"purge_grace": timedelta(days=1, microseconds=1)},
        {"purge_grace": 300},
        {"purge_grace": None},
    ],
)
def test_bad_port_policies_are_refused(policy: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        ServicePolicy(**policy)  # type: ignore[arg-type]
