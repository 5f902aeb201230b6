"""Rules of the console drivers: the service issues exactly what the driver
found, the static file gives back exactly what was written, and any port
attribute in a domain's XML is a port, "not allocated" or "unavailable"."""

from __future__ import annotations

import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryConsoleEndpoints,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.static_consoles import StaticConsoleEndpoints
from console_auth.application import ConsoleAuthService
from console_auth.application.consoles import InstanceConsoleService
from console_auth.application.serial import ConsolePortService
from console_auth.domain import ConsoleType
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import ConsoleNotAllocated, ConsoleTypeUnavailable
from tests.console_drivers import domain_xml, libvirt_or_skip, write_console_map
from tests.fakes import FakeClock, FixedLeaseIdSource, FixedTokenSource
from tests.property.strategies import console_options, valid_hosts

ports = st.integers(1, 65535)


@st.composite
def endpoints(draw: st.DrawFn) -> ConsoleEndpoint:
    """Any valid ``ConsoleEndpoint``, every field exercised."""
    all_ports = draw(st.lists(ports, min_size=1, max_size=4, unique=True))
    return ConsoleEndpoint(
        host=draw(valid_hosts),
        port=all_ports[0],
        other_ports=tuple(all_ports[1:]),
        options=draw(console_options),
    )


@given(endpoint=endpoints(), kind=st.sampled_from(ConsoleType), instance=st.uuids())
def test_authorize_console_then_validate_gives_the_drivers_endpoint(
    endpoint: ConsoleEndpoint, kind: ConsoleType, instance: uuid.UUID
) -> None:
    drivers = InMemoryConsoleEndpoints()
    drivers.set(instance, kind, endpoint)
    tokens = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), FakeClock(), FixedTokenSource()
    )
    serial = ConsolePortService(
        tokens,
        InMemoryPortLeaseRepository(),
        InMemoryPortReservationRepository(),
        FixedLeaseIdSource(),
    )
    service = InstanceConsoleService(tokens, drivers, lambda: serial)

    issued = service.authorize_console(instance, kind)
    connection = tokens.validate(issued.token.get_secret_value(), instance)

    assert connection == issued.connection
    assert (connection.host, connection.port, connection.options) == (
        endpoint.host,
        endpoint.port,
        endpoint.options,
    )
    assert connection.console_type is kind
    held = serial.leases(instance_uuid=instance)
    assert [(lease.host, lease.port) for lease in held] == (
        [(endpoint.host, endpoint.port)] if kind is ConsoleType.SERIAL else []
    )


@given(endpoint=endpoints(), kind=st.sampled_from(ConsoleType), instance=st.uuids())
def test_the_static_file_gives_back_what_was_written(
    endpoint: ConsoleEndpoint, kind: ConsoleType, instance: uuid.UUID
) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "consoles.toml"
        write_console_map(path, {instance: {kind: endpoint}})

        assert StaticConsoleEndpoints(path).endpoint(instance, kind) == endpoint


port_texts = st.integers(-70000, 140000).map(str) | st.text(
    alphabet="0123456789-+ .x٣e", max_size=7
)


@given(text=port_texts)
@example(text="-1")
@example(text=" -1 ")
@example(text="0")
@example(text="65535")
@example(text="65536")
@example(text="٣")
@example(text="005900")
@example(text="9" * 5000)
def test_any_port_attribute_is_a_port_not_allocated_or_unavailable(text: str) -> None:
    libvirt_or_skip()
    from console_auth.adapters.libvirt import endpoint_from_xml

    instance = uuid.uuid4()
    xml = domain_xml(instance, f"<graphics type='vnc' port={quoteattr(text)}/>")
    xml = xml.replace("<domain ", "<domain id='7' ", 1)
    stripped = text.strip()

    if stripped == "-1":
        with pytest.raises(ConsoleNotAllocated):
            endpoint_from_xml(xml, instance, "vnc", "compute-1")
    elif stripped.isascii() and stripped.isdigit() and 1 <= Decimal(stripped) <= 65535:
        endpoint = endpoint_from_xml(xml, instance, "vnc", "compute-1")
        assert endpoint.port == int(stripped)
    else:
        with pytest.raises(ConsoleTypeUnavailable):
            endpoint_from_xml(xml, instance, "vnc", "compute-1")
