"""The behaviour every ``ConsoleEndpoints`` adapter must share: libvirt
(``test:///default``), the static TOML file and memory."""

from __future__ import annotations

import threading

import pytest

from console_auth.domain import ConsoleOptions, ConsoleType, SerialMode
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import (
    ConsoleTypeUnavailable,
    ConsoleUnavailable,
    InstanceNotFound,
)
from tests.console_drivers import SERIAL_HOST, SPICE_HOST, VNC_HOST, Driver, new_instance

VNC = ConsoleEndpoint(host=VNC_HOST, port=5901)
VNC_WEBSOCKET = ConsoleEndpoint(
    host=VNC_HOST, port=5911, options=ConsoleOptions(extra={"websocket_port": 5711})
)
SPICE = ConsoleEndpoint(host=SPICE_HOST, port=5902, options=ConsoleOptions(tls_port=5903))
SPICE_CLEAR = ConsoleEndpoint(host=SPICE_HOST, port=5904)
SERIAL = ConsoleEndpoint(
    host=SERIAL_HOST, port=10000, options=ConsoleOptions(mode=SerialMode.BIND)
)
SERIAL_TWO = ConsoleEndpoint(
    host=SERIAL_HOST,
    port=10001,
    other_ports=(10002,),
    options=ConsoleOptions(mode=SerialMode.BIND),
)
ALL = {ConsoleType.NOVNC: VNC, ConsoleType.SPICE_HTML5: SPICE, ConsoleType.SERIAL: SERIAL}


@pytest.mark.parametrize(
    "consoles",
    [
        ALL,
        {ConsoleType.NOVNC: VNC_WEBSOCKET},
        {ConsoleType.SPICE_HTML5: SPICE_CLEAR},
        {ConsoleType.SERIAL: SERIAL_TWO},
    ],
    ids=["vnc+spice-tls+serial", "vnc-websocket", "spice-clear", "serial-two-ports"],
)
def test_each_kind_gives_exactly_its_endpoint(
    console_driver: Driver, consoles: dict[ConsoleType, ConsoleEndpoint]
) -> None:
    instance = new_instance()
    console_driver.provision(instance, consoles)

    for kind, endpoint in consoles.items():
        assert console_driver.endpoints.endpoint(instance, kind) == endpoint


def test_a_kind_the_instance_lacks_is_console_type_unavailable(console_driver: Driver) -> None:
    instance = new_instance()
    console_driver.provision(instance, {ConsoleType.NOVNC: VNC})

    for kind in (ConsoleType.SPICE_HTML5, ConsoleType.SERIAL, ConsoleType.WEBMKS):
        with pytest.raises(ConsoleTypeUnavailable, match=kind.value.split("-")[0]):
            console_driver.endpoints.endpoint(instance, kind)
    assert console_driver.endpoints.endpoint(instance, ConsoleType.NOVNC) == VNC


def test_an_unknown_instance_is_instance_not_found(console_driver: Driver) -> None:
    console_driver.provision(new_instance(), ALL)
    unknown = new_instance()

    with pytest.raises(InstanceNotFound, match=str(unknown)):
        console_driver.endpoints.endpoint(unknown, ConsoleType.NOVNC)


def test_errors_share_one_parent_and_instances_do_not_mix(console_driver: Driver) -> None:
    first, second = new_instance(), new_instance()
    console_driver.provision(first, {ConsoleType.NOVNC: VNC})
    console_driver.provision(second, {ConsoleType.SERIAL: SERIAL})

    assert console_driver.endpoints.endpoint(first, ConsoleType.NOVNC) == VNC
    assert console_driver.endpoints.endpoint(second, ConsoleType.SERIAL) == SERIAL
    with pytest.raises(ConsoleUnavailable):
        console_driver.endpoints.endpoint(first, ConsoleType.SERIAL)
    with pytest.raises(ConsoleUnavailable):
        console_driver.endpoints.endpoint(second, ConsoleType.NOVNC)


def test_a_console_that_moves_is_found_where_it_is_now(console_driver: Driver) -> None:
    instance = new_instance()
    console_driver.provision(instance, {ConsoleType.NOVNC: VNC})
    assert console_driver.endpoints.endpoint(instance, ConsoleType.NOVNC) == VNC

    console_driver.provision(instance, {ConsoleType.NOVNC: VNC_WEBSOCKET})

    assert console_driver.endpoints.endpoint(instance, ConsoleType.NOVNC) == VNC_WEBSOCKET


def test_concurrent_lookups_all_answer(console_driver: Driver) -> None:
    instance = new_instance()
    console_driver.provision(instance, ALL)
    # seen once first: a file-backed driver's readers may see the old map while one reloads
    assert console_driver.endpoints.endpoint(instance, ConsoleType.NOVNC) == VNC
    found: list[ConsoleEndpoint] = []
    lock = threading.Lock()

    def look() -> None:
        for kind in ALL:
            endpoint = console_driver.endpoints.endpoint(instance, kind)
            with lock:
                found.append(endpoint)

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(found, key=lambda e: e.port) == sorted(
        list(ALL.values()) * 8, key=lambda e: e.port
    )
