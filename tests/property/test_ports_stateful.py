"""Serial ports on each backend agree, step by step, with a plain dict model.

For any sequence of serial authorizes, connects, heartbeats, disconnects and
clock advances: a port has at most one live lease, a port whose lease
expired is free again, and the chosen port is the first free defined one.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from console_auth.application import ConsoleAuthService, ServicePolicy
from console_auth.application.serial import ConsolePortService
from console_auth.domain import InvalidToken
from console_auth.domain.errors import LeaseLost, NoFreeConsolePort, PortAlreadyConnected
from console_auth.domain.leases import LeaseKind, PortLease
from tests.backends import PortBackend
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource

HOST: Final = "compute-1"
PORTS: Final = (10000, 10001, 10002)
INSTANCE: Final = uuid.UUID("a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5")
LEASE_TTL: Final = timedelta(seconds=30)


class Held(NamedTuple):
    kind: LeaseKind
    lease_id: str | None  # None for a hold: the service does not return its id
    token: str
    expires_at: datetime


class Issued(NamedTuple):
    token: str
    port: int
    expires_at: datetime


class PortsMachine(RuleBasedStateMachine):
    """Model: port -> its last lease; token -> where and until when."""

    issued = Bundle("issued")
    leases = Bundle("leases")

    def __init__(self, backend: PortBackend) -> None:
        super().__init__()
        self._resources = ExitStack()
        repository = self._resources.enter_context(backend.fresh())
        lease_repo, reservations = self._resources.enter_context(backend.fresh_ports())
        self.clock = FakeClock(T0)
        policy = ServicePolicy(lease_ttl=LEASE_TTL)
        consoles = ConsoleAuthService(repository, self.clock, FixedTokenSource(), policy)
        self.service = ConsolePortService(consoles, lease_repo, reservations, FixedLeaseIdSource())
        self.model: dict[int, Held] = {}

    def teardown(self) -> None:
        self._resources.close()

    def _live(self, port: int) -> Held | None:
        held = self.model.get(port)
        return held if held is not None and self.clock.now() < held.expires_at else None

    @rule(
        target=issued,
        order=st.permutations(PORTS).flatmap(lambda p: st.lists(st.just(p), max_size=1)),
        subset=st.integers(1, len(PORTS)),
        ttl_s=st.sampled_from([1, 5, 30, 60, 600]),
    )
    def authorize_serial(self, order: list[tuple[int, ...]], subset: int, ttl_s: int) -> Issued:
        defined = list(order[0] if order else PORTS)[:subset]
        free = [p for p in defined if self._live(p) is None]
        try:
            got = self.service.authorize_serial(
                INSTANCE, HOST, defined, ttl=timedelta(seconds=ttl_s)
            )
        except NoFreeConsolePort:
            assert free == []
            return Issued("", 0, T0)  # a placeholder the other rules skip
        connection = got.connection
        assert connection.port == free[0]
        token = got.token.get_secret_value()
        self.model[connection.port] = Held(LeaseKind.HELD, None, token, connection.expires_at)
        return Issued(token, connection.port, connection.expires_at)

    @rule(target=leases, issued=issued, proxy=st.sampled_from(["proxy-a", "proxy-b"]))
    def connect(self, issued: Issued, proxy: str) -> PortLease | None:
        if not issued.token:
            return None
        live = self._live(issued.port)
        try:
            lease = self.service.connect(issued.token, INSTANCE, proxy)
        except InvalidToken:
            assert self.clock.now() >= issued.expires_at
            return None
        except PortAlreadyConnected:
            assert live is not None
            assert live.kind is LeaseKind.CONNECTED
            return None
        assert self.clock.now() < issued.expires_at
        assert live is None or live.kind is LeaseKind.HELD
        assert (lease.port, lease.proxy_id) == (issued.port, proxy)
        self.model[issued.port] = Held(
            LeaseKind.CONNECTED, lease.lease_id, issued.token, lease.expires_at
        )
        return lease

    @rule(lease=leases)
    def heartbeat(self, lease: PortLease | None) -> None:
        if lease is None:
            return
        live = self._live(lease.port)
        try:
            renewed = self.service.heartbeat(lease)
        except LeaseLost:
            assert live is None or live.lease_id != lease.lease_id
            return
        assert live is not None
        assert live.lease_id == lease.lease_id
        assert renewed.expires_at == self.clock.now() + LEASE_TTL
        self.model[lease.port] = live._replace(expires_at=renewed.expires_at)

    @rule(lease=leases)
    def disconnect(self, lease: PortLease | None) -> None:
        if lease is None:
            return
        current = self.model.get(lease.port)
        mine = current is not None and current.lease_id == lease.lease_id
        assert self.service.disconnect(lease) is mine
        if mine:
            del self.model[lease.port]

    @rule(seconds=st.sampled_from([0, 1, 10, 29, 30, 31, 600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(timedelta(seconds=seconds))

    @invariant()
    def at_most_one_live_lease_per_port_as_modelled(self) -> None:
        listed = self.service.leases(host=HOST)
        ports = [lease.port for lease in listed]
        assert len(ports) == len(set(ports))
        expected = {p: h for p in PORTS if (h := self._live(p)) is not None}
        assert {lease.port: lease.kind for lease in listed} == {
            p: h.kind for p, h in expected.items()
        }
        for lease in listed:
            if lease.kind is LeaseKind.CONNECTED:
                assert lease.lease_id == expected[lease.port].lease_id


def test_ports_agree_with_a_dict_model(port_backend: PortBackend) -> None:
    class OnThisBackend(PortsMachine):
        def __init__(self) -> None:
            super().__init__(port_backend)

    run_state_machine_as_test(
        OnThisBackend,
        settings=settings(max_examples=min(settings().max_examples, 100), stateful_step_count=40),
    )
