"""``InstanceConsoleService.authorize_console`` on the in-memory adapters:
the driver's endpoint is what gets authorized, serial ports are claimed
through ``ConsolePortService``, and a driver's refusal stores nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import NoReturn

import pytest

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryConsoleEndpoints,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import ConsoleAuthService
from console_auth.application.consoles import InstanceConsoleService
from console_auth.application.serial import ConsolePortService
from console_auth.domain import (
    BackendUnavailable,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
    SerialMode,
)
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import (
    ConsoleTypeUnavailable,
    ConsoleUnavailable,
    InstanceNotFound,
    NoFreeConsolePort,
)
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
BASE = "https://console.example.com/vnc_lite.html"
VNC = ConsoleEndpoint(host="compute-1", port=5900)
SERIAL = ConsoleEndpoint(
    host="compute-1",
    port=10000,
    other_ports=(10001,),
    options=ConsoleOptions(mode=SerialMode.BIND),
)


class Setup:
    def __init__(self) -> None:
        self.repository = InMemoryConsoleConnectionRepository()
        self.tokens = ConsoleAuthService(self.repository, FakeClock(), FixedTokenSource())
        self.ports = ConsolePortService(
            self.tokens,
            InMemoryPortLeaseRepository(),
            InMemoryPortReservationRepository(),
            FixedLeaseIdSource(),
        )
        self.endpoints = InMemoryConsoleEndpoints()
        self.service = InstanceConsoleService(self.tokens, self.endpoints, lambda: self.ports)

    def stored(self) -> int:
        """How many connections the store holds (purge counts them)."""
        return self.repository.purge_expired(T0 + timedelta(days=365), None, 1000)


@pytest.fixture
def setup() -> Setup:
    return Setup()


def test_novnc_is_issued_for_the_drivers_endpoint(setup: Setup) -> None:
    setup.endpoints.set(INSTANCE, ConsoleType.NOVNC, VNC)

    issued = setup.service.authorize_console(str(INSTANCE), "novnc", access_url_base=BASE)

    assert issued.access_url is not None
    connection = setup.tokens.validate_url(issued.access_url)
    assert connection == issued.connection
    assert (connection.host, connection.port, connection.console_type) == (
        "compute-1",
        5900,
        ConsoleType.NOVNC,
    )


def test_ttl_is_passed_through(setup: Setup) -> None:
    setup.endpoints.set(INSTANCE, ConsoleType.NOVNC, VNC)

    issued = setup.service.authorize_console(INSTANCE, ConsoleType.NOVNC, ttl=timedelta(seconds=7))

    assert issued.connection.expires_at == T0 + timedelta(seconds=7)


def test_serial_claims_the_drivers_ports_one_token_each(setup: Setup) -> None:
    setup.endpoints.set(INSTANCE, ConsoleType.SERIAL, SERIAL)

    first = setup.service.authorize_console(INSTANCE, ConsoleType.SERIAL)
    second = setup.service.authorize_console(INSTANCE, ConsoleType.SERIAL)

    assert (first.connection.port, second.connection.port) == (10000, 10001)
    assert first.connection.options.mode is SerialMode.BIND
    held = setup.ports.leases(instance_uuid=INSTANCE)
    assert [(lease.port, lease.token_hash) for lease in held] == [
        (10000, first.connection.token_hash),
        (10001, second.connection.token_hash),
    ]
    with pytest.raises(NoFreeConsolePort):
        setup.service.authorize_console(INSTANCE, ConsoleType.SERIAL)
    assert setup.stored() == 2


def test_other_kinds_never_ask_for_serial_ports(setup: Setup) -> None:
    def no_ports() -> NoReturn:
        raise InvalidRequest("serial consoles need the database backend")

    service = InstanceConsoleService(setup.tokens, setup.endpoints, no_ports)
    setup.endpoints.set(INSTANCE, ConsoleType.NOVNC, VNC)
    setup.endpoints.set(INSTANCE, ConsoleType.SERIAL, SERIAL)

    assert service.authorize_console(INSTANCE, ConsoleType.NOVNC).connection.port == 5900
    with pytest.raises(InvalidRequest, match="database backend"):
        service.authorize_console(INSTANCE, ConsoleType.SERIAL)


@pytest.mark.parametrize(
    ("instance", "kind", "error"),
    [
        (uuid.UUID(int=1), ConsoleType.NOVNC, InstanceNotFound),
        (INSTANCE, ConsoleType.SPICE_HTML5, ConsoleTypeUnavailable),
        (INSTANCE, ConsoleType.SERIAL, ConsoleTypeUnavailable),
    ],
)
def test_a_drivers_refusal_stores_nothing(
    setup: Setup, instance: uuid.UUID, kind: ConsoleType, error: type[ConsoleUnavailable]
) -> None:
    setup.endpoints.set(INSTANCE, ConsoleType.NOVNC, VNC)

    with pytest.raises(error):
        setup.service.authorize_console(instance, kind)

    assert setup.stored() == 0
    assert setup.ports.leases() == []


def test_an_unavailable_driver_is_backend_unavailable(setup: Setup) -> None:
    class Down:
        def endpoint(self, instance_uuid: uuid.UUID, console_type: ConsoleType) -> NoReturn:
            raise BackendUnavailable("libvirt qemu:///system cannot be reached")

    service = InstanceConsoleService(setup.tokens, Down(), lambda: setup.ports)

    with pytest.raises(BackendUnavailable):
        service.authorize_console(INSTANCE, ConsoleType.NOVNC)
    assert setup.stored() == 0


@pytest.mark.parametrize(
    ("instance", "kind", "field"),
    [("not-a-uuid", "novnc", "instance uuid"), (INSTANCE, "vnc", "console type")],
)
def test_bad_arguments_are_refused_before_the_driver_is_asked(
    instance: object, kind: str, field: str
) -> None:
    class Unasked:
        def endpoint(self, instance_uuid: uuid.UUID, console_type: ConsoleType) -> NoReturn:
            raise AssertionError("the driver was asked")

    setup = Setup()
    service = InstanceConsoleService(setup.tokens, Unasked(), lambda: setup.ports)

    with pytest.raises(InvalidRequest, match=field):
        service.authorize_console(instance, kind)  # type: ignore[arg-type]
