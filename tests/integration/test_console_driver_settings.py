"""The console driver's settings and wiring: each setting from its variable,
bad values named, one provider for the endpoints, and libvirt loaded only
when it is the chosen driver."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dependency_injector import providers

from console_auth.adapters.container import build_container
from console_auth.adapters.memory import InMemoryConsoleEndpoints
from console_auth.adapters.settings import LibvirtSettings, Settings, load_settings
from console_auth.adapters.static_consoles import StaticConsoleEndpoints
from console_auth.domain import ConsoleType, InvalidRequest
from console_auth.domain.endpoints import ConsoleEndpoint
from tests.console_drivers import LibvirtTestDriver, new_instance, vnc


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)


def test_defaults_choose_no_driver_and_nova_s_addresses() -> None:
    settings = load_settings()

    assert settings.console_driver == "none"
    assert settings.static_consoles_file is None
    assert settings.libvirt == LibvirtSettings(
        uri="qemu:///system",
        vnc_proxyclient_address="127.0.0.1",
        spice_proxyclient_address="127.0.0.1",
        serial_proxyclient_address="127.0.0.1",
    )


def test_every_driver_setting_reads_its_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    for name, value in {
        "CONSOLE_AUTH_CONSOLE_DRIVER": "static",
        "CONSOLE_AUTH_STATIC_CONSOLES_FILE": str(tmp_path / "consoles.toml"),
        "CONSOLE_AUTH_LIBVIRT__URI": "test:///default",
        "CONSOLE_AUTH_LIBVIRT__VNC_PROXYCLIENT_ADDRESS": "10.0.0.5",
        "CONSOLE_AUTH_LIBVIRT__SPICE_PROXYCLIENT_ADDRESS": "compute-1.example",
        "CONSOLE_AUTH_LIBVIRT__SERIAL_PROXYCLIENT_ADDRESS": "::ffff:10.0.0.7",
    }.items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.WARNING, logger="console_auth.adapters.settings"):
        settings = load_settings()

    assert caplog.records == []
    assert settings.console_driver == "static"
    assert settings.static_consoles_file == tmp_path / "consoles.toml"
    assert settings.libvirt == LibvirtSettings(
        uri="test:///default",
        vnc_proxyclient_address="10.0.0.5",
        spice_proxyclient_address="compute-1.example",
        serial_proxyclient_address="::ffff:10.0.0.7",
    )


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("CONSOLE_AUTH_CONSOLE_DRIVER", "xen", "console_driver"),
        ("CONSOLE_AUTH_LIBVIRT__URI", "qemu:///sys tem", "libvirt.uri"),
        ("CONSOLE_AUTH_LIBVIRT__URI", "", "libvirt.uri"),
        ("CONSOLE_AUTH_LIBVIRT__VNC_PROXYCLIENT_ADDRESS", "not a host", "vnc_proxyclient_address"),
    ],
)
def test_a_bad_driver_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(InvalidRequest, match=named):
        load_settings()


def test_the_static_driver_needs_its_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_DRIVER", "static")

    with pytest.raises(InvalidRequest, match="static_consoles_file"):
        load_settings()


def test_the_endpoints_provider_is_the_one_to_override() -> None:
    container = build_container(Settings(console_tokens_backend="memory"))
    endpoints = InMemoryConsoleEndpoints()
    instance = new_instance()
    endpoints.set(instance, ConsoleType.NOVNC, ConsoleEndpoint(host="compute-9", port=5909))

    with pytest.raises(InvalidRequest, match="no console driver is configured"):
        container.consoles()
    with container.console_endpoints.override(providers.Object(endpoints)):
        issued = container.consoles().authorize_console(instance, ConsoleType.NOVNC)
    container.shutdown_resources()

    assert (issued.connection.host, issued.connection.port) == ("compute-9", 5909)
    assert container.service().validate(issued.token.get_secret_value()) == issued.connection


def test_the_static_driver_is_wired(tmp_path: Path) -> None:
    path = tmp_path / "consoles.toml"
    path.write_text("")
    container = build_container(
        Settings(
            console_tokens_backend="memory", console_driver="static", static_consoles_file=path
        )
    )

    assert isinstance(container.console_endpoints(), StaticConsoleEndpoints)
    container.shutdown_resources()


def test_the_libvirt_driver_is_wired_and_closed(libvirt_test_driver: LibvirtTestDriver) -> None:
    from console_auth.adapters.libvirt import LibvirtConsoleEndpoints

    instance = new_instance()
    libvirt_test_driver.define(instance, vnc(5990), start=True)
    container = build_container(
        Settings(
            console_tokens_backend="memory",
            console_driver="libvirt",
            libvirt=LibvirtSettings(uri="test:///default", vnc_proxyclient_address="10.1.2.3"),
        )
    )
    endpoints = container.console_endpoints()

    assert isinstance(endpoints, LibvirtConsoleEndpoints)
    issued = container.consoles().authorize_console(instance, "novnc")
    assert (issued.connection.host, issued.connection.port) == ("10.1.2.3", 5990)
    assert endpoints._connection is not None
    container.shutdown_resources()
    assert endpoints._connection is None


def test_only_the_libvirt_driver_loads_libvirt() -> None:
    code = (
        "import sys, uuid\n"
        "from console_auth.adapters.container import build_container\n"
        "from console_auth.adapters.settings import Settings\n"
        "from console_auth.adapters import cli\n"
        "c = build_container(Settings(console_tokens_backend='memory'))\n"
        "c.service().authorize(uuid.uuid4(), 'compute-1', 5900, 'novnc')\n"
        "try:\n"
        "    c.consoles()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[-1] in ('libvirt', 'libvirtmod')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert out.stdout.split() == ["InvalidRequest", "[]"]
