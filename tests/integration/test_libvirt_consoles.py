"""The libvirt console driver on libvirt's own in-process ``test:///default``:
real domains defined and started from XML, read back through the adapter."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import NoReturn
from uuid import UUID

import pytest

from console_auth.domain import BackendUnavailable, ConsoleOptions, ConsoleType, SerialMode
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import (
    ConsoleNotAllocated,
    ConsoleTypeUnavailable,
    InstanceNotFound,
    InstanceNotRunning,
)
from tests.console_drivers import (
    SERIAL_HOST,
    SPICE_HOST,
    VNC_HOST,
    LibvirtTestDriver,
    libvirt_or_skip,
    new_instance,
    serial_tcp,
    spice,
    vnc,
)


@pytest.fixture
def libvirt(libvirt_test_driver: LibvirtTestDriver) -> LibvirtTestDriver:
    return libvirt_test_driver


def started(libvirt: LibvirtTestDriver, devices: str) -> UUID:
    instance = new_instance()
    libvirt.define(instance, devices, start=True)
    return instance


def test_vnc_port_and_host_from_settings_not_the_listen_address(
    libvirt: LibvirtTestDriver,
) -> None:
    instance = started(libvirt, vnc(5920, " websocket='5720'"))

    endpoint = libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)

    assert endpoint == ConsoleEndpoint(
        host=VNC_HOST, port=5920, options=ConsoleOptions(extra={"websocket_port": 5720})
    )


def test_the_first_vnc_graphics_is_the_one(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, vnc(5921) + vnc(5922))

    assert libvirt.adapter.endpoint(instance, ConsoleType.NOVNC).port == 5921


@pytest.mark.parametrize("kind", [ConsoleType.SPICE_HTML5, ConsoleType.SPICE_DIRECT])
def test_spice_tls_port_goes_to_options_without_use_tls(
    libvirt: LibvirtTestDriver, kind: ConsoleType
) -> None:
    instance = started(libvirt, spice(5930, 5931))

    endpoint = libvirt.adapter.endpoint(instance, kind)

    assert endpoint == ConsoleEndpoint(
        host=SPICE_HOST, port=5930, options=ConsoleOptions(tls_port=5931)
    )
    assert not endpoint.options.use_tls  # recorded; Nova's SPICE proxy dials port in the clear


def test_serial_ports_in_bind_mode_in_order(libvirt: LibvirtTestDriver) -> None:
    devices = serial_tcp(10010) + serial_tcp(10099, mode="connect") + serial_tcp(10011)
    instance = started(libvirt, devices)

    endpoint = libvirt.adapter.endpoint(instance, ConsoleType.SERIAL)

    assert endpoint == ConsoleEndpoint(
        host=SERIAL_HOST,
        port=10010,
        other_ports=(10011,),
        options=ConsoleOptions(mode=SerialMode.BIND),
    )


def test_serial_falls_back_to_a_tcp_console_device(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, serial_tcp(10020, element="console"))

    endpoint = libvirt.adapter.endpoint(instance, ConsoleType.SERIAL)

    assert (endpoint.host, endpoint.ports) == (SERIAL_HOST, (10020,))
    assert libvirt.connection.lookupByUUIDString(str(instance)).isActive()


def test_serial_in_connect_mode_only_is_unavailable(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, serial_tcp(10030, mode="connect"))

    with pytest.raises(ConsoleTypeUnavailable, match="bind"):
        libvirt.adapter.endpoint(instance, ConsoleType.SERIAL)


def test_autoport_not_yet_allocated_is_its_own_error(libvirt: LibvirtTestDriver) -> None:
    # the test driver allocates no port: a running domain keeps port='-1', as
    # QEMU's would between define and its graphics coming up
    instance = started(libvirt, "<graphics type='vnc' autoport='yes'/>" + spice(-1))

    with pytest.raises(ConsoleNotAllocated, match="no port allocated"):
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)
    with pytest.raises(ConsoleNotAllocated):
        libvirt.adapter.endpoint(instance, ConsoleType.SPICE_HTML5)


def test_a_stopped_domain_is_not_running(libvirt: LibvirtTestDriver) -> None:
    instance = new_instance()
    domain = libvirt.define(instance, vnc(5940), start=False)

    with pytest.raises(InstanceNotRunning, match=str(instance)):
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)
    domain.create()
    assert libvirt.adapter.endpoint(instance, ConsoleType.NOVNC).port == 5940
    domain.destroy()
    with pytest.raises(InstanceNotRunning):
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)


def test_a_domain_without_the_device(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, "")

    for kind in (ConsoleType.NOVNC, ConsoleType.SPICE_HTML5, ConsoleType.SERIAL):
        with pytest.raises(ConsoleTypeUnavailable):
            libvirt.adapter.endpoint(instance, kind)


def test_vnc_on_a_unix_socket_only_is_unavailable(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, "<graphics type='vnc' socket='/tmp/console-auth-vnc.sock'/>")

    with pytest.raises(ConsoleTypeUnavailable, match="TCP port"):
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)


def test_an_unknown_uuid_and_an_undefined_domain(libvirt: LibvirtTestDriver) -> None:
    with pytest.raises(InstanceNotFound):
        libvirt.adapter.endpoint(new_instance(), ConsoleType.NOVNC)
    instance = started(libvirt, vnc(5950))
    libvirt.remove(instance)
    with pytest.raises(InstanceNotFound):
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)


@pytest.mark.parametrize(
    "uri",
    ["test:///no/such/file.xml", "qemu+unix:///system?socket=/nonexistent/libvirt-sock"],
    ids=["bad-test-file", "no-daemon"],
)
def test_a_connection_that_fails_is_backend_unavailable(uri: str) -> None:
    libvirt_or_skip()
    from console_auth.adapters.libvirt import LibvirtConsoleEndpoints

    adapter = LibvirtConsoleEndpoints(
        uri, vnc_host=VNC_HOST, spice_host=SPICE_HOST, serial_host=SERIAL_HOST
    )

    for _ in range(2):  # and again on the next call: no half-open state kept
        with pytest.raises(BackendUnavailable, match="cannot be reached") as caught:
            adapter.endpoint(new_instance(), ConsoleType.NOVNC)
        assert not isinstance(caught.value, InstanceNotFound)
        assert caught.value.__cause__ is not None
    adapter.close()


class _DeadConnection:
    """A connection whose peer went away: every call fails, and it says so."""

    def __init__(self, libvirt: LibvirtTestDriver) -> None:
        self._libvirt = libvirt.libvirt
        self.closed = False

    def lookupByUUIDString(self, uuid: str) -> NoReturn:  # noqa: N802 - libvirt's name
        lv = self._libvirt
        message = "End of file while reading data: Input/output error"
        error = lv.libvirtError(message)
        # libvirtError reads the calling thread's last error; pin the one a lost peer gives
        error.err = (lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_FROM_RPC, message, lv.VIR_ERR_ERROR)
        raise error

    def isAlive(self) -> int:  # noqa: N802
        return 0

    def close(self) -> int:
        self.closed = True
        return 0


def test_a_dead_connection_is_an_outage_then_replaced(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, vnc(5965))
    dead = _DeadConnection(libvirt)
    libvirt.adapter.close()
    libvirt.adapter._connection = dead

    with pytest.raises(BackendUnavailable, match="cannot read domain") as caught:
        libvirt.adapter.endpoint(instance, ConsoleType.NOVNC)

    assert not isinstance(caught.value, InstanceNotFound)
    assert dead.closed
    assert libvirt.adapter.endpoint(instance, ConsoleType.NOVNC).port == 5965


def test_close_then_use_opens_again(libvirt: LibvirtTestDriver) -> None:
    instance = started(libvirt, vnc(5960))
    libvirt.adapter.close()

    assert libvirt.adapter.endpoint(instance, ConsoleType.NOVNC).port == 5960


def test_proxy_client_addresses_are_checked() -> None:
    libvirt_or_skip()
    from console_auth.adapters.libvirt import LibvirtConsoleEndpoints
    from console_auth.domain import InvalidRequest

    with pytest.raises(InvalidRequest, match="host"):
        LibvirtConsoleEndpoints(
            "test:///default", vnc_host="not a host", spice_host="h", serial_host="h"
        )


def test_a_libvirtd_that_never_answers_is_an_outage_within_the_timeout(tmp_path: Path) -> None:
    """libvirt's client waits for ever on a daemon that accepts and stays
    silent (a hung libvirtd); the adapter's caller, and its close, must not."""
    libvirt_or_skip()
    from console_auth.adapters.libvirt import LibvirtConsoleEndpoints

    path = tmp_path / "libvirt-sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(8)  # the kernel accepts; nothing ever answers
        adapter = LibvirtConsoleEndpoints(
            f"qemu+unix:///system?socket={path}",
            vnc_host=VNC_HOST,
            spice_host=SPICE_HOST,
            serial_host=SERIAL_HOST,
            timeout=0.5,
        )
        for _ in range(2):  # the first call's stuck open does not hold the next one
            started_at = time.monotonic()
            with pytest.raises(BackendUnavailable, match="no answer"):
                adapter.endpoint(new_instance(), ConsoleType.NOVNC)
            assert time.monotonic() - started_at < 3
        started_at = time.monotonic()
        adapter.close()
        assert time.monotonic() - started_at < 3


def test_stuck_libvirt_calls_hold_a_bounded_number_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libvirt_or_skip()
    from console_auth.adapters import libvirt as module

    monkeypatch.setattr(module, "MAX_CALLS", 1)
    path = tmp_path / "libvirt-sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(8)
        adapter = module.LibvirtConsoleEndpoints(
            f"qemu+unix:///system?socket={path}",
            vnc_host=VNC_HOST,
            spice_host=SPICE_HOST,
            serial_host=SERIAL_HOST,
            timeout=0.5,
        )
        with pytest.raises(BackendUnavailable, match="no answer"):
            adapter.endpoint(new_instance(), ConsoleType.NOVNC)  # its thread stays stuck
        threads = threading.active_count()
        for _ in range(3):
            with pytest.raises(BackendUnavailable, match="1 calls are still waiting"):
                adapter.endpoint(new_instance(), ConsoleType.NOVNC)
        assert threading.active_count() == threads
