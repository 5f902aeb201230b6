"""Every ``ConsoleEndpoints`` adapter, behind one way of giving an instance
consoles: the contract suite runs over ``DRIVER_NAMES``.

libvirt is the real thing in-process: ``test:///default``, whose state lives
as long as one connection to it is open, so ``LibvirtTestDriver`` holds one
for the session. libvirt-python missing is a failure in CI
(``CONSOLE_AUTH_TEST_REQUIRE_SERVERS=1``) and a skip elsewhere.
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NoReturn, Protocol
from uuid import UUID

import pytest

from console_auth.adapters.memory import InMemoryConsoleEndpoints
from console_auth.adapters.static_consoles import StaticConsoleEndpoints
from console_auth.application.ports import ConsoleEndpoints
from console_auth.domain import ConsoleType
from console_auth.domain.endpoints import ConsoleEndpoint

REQUIRE_ENV: Final = "CONSOLE_AUTH_TEST_REQUIRE_SERVERS"
TEST_URI: Final = "test:///default"
VNC_HOST: Final = "10.0.0.5"
SPICE_HOST: Final = "10.0.0.6"
SERIAL_HOST: Final = "10.0.0.7"
"""The proxy-client addresses the libvirt adapter is configured with: the
hosts of the endpoints it can give."""
DRIVER_NAMES: Final = ["memory", "static", "libvirt"]

Consoles = Mapping[ConsoleType, ConsoleEndpoint]


def libvirt_or_skip() -> ModuleType:
    """libvirt-python, or a skip (a failure in CI)."""
    try:
        return importlib.import_module("libvirt")
    except ImportError:
        unavailable("libvirt-python is not installed: pip install 'console-auth[libvirt]'")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1; .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


class Driver(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> ConsoleEndpoints: ...

    def provision(self, instance_uuid: UUID, consoles: Consoles) -> None:
        """Give the instance these consoles (at least one, and only these)."""
        ...


class MemoryDriver:
    name = "memory"

    def __init__(self) -> None:
        self.endpoints = self._memory = InMemoryConsoleEndpoints()

    def provision(self, instance_uuid: UUID, consoles: Consoles) -> None:
        self._memory.forget(instance_uuid)
        for kind, endpoint in consoles.items():
            self._memory.set(instance_uuid, kind, endpoint)


class StaticDriver:
    name = "static"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._instances: dict[UUID, Consoles] = {}
        write_console_map(path, self._instances)
        self.endpoints = StaticConsoleEndpoints(path, reload_interval=0)

    def provision(self, instance_uuid: UUID, consoles: Consoles) -> None:
        self._instances[instance_uuid] = dict(consoles)
        write_console_map(self._path, self._instances)


def write_console_map(path: Path, instances: Mapping[UUID, Consoles]) -> None:
    """The static driver's TOML, written beside and renamed over, as its docstring asks."""
    lines = []
    for instance, consoles in instances.items():
        for kind, endpoint in consoles.items():
            lines.append(f'["{instance}".{kind.value}]')
            fields = endpoint.model_dump(mode="json", exclude_defaults=True)
            lines.extend(f"{key} = {_toml(value)}" for key, value in fields.items())
    fresh = path.with_suffix(".new")
    fresh.write_text("\n".join(lines) + "\n")
    os.replace(fresh, path)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # TOML spells strings, numbers and booleans as JSON does, bar \u escapes of astral characters
    return json.dumps(value, ensure_ascii=False)


class LibvirtTestDriver:
    """libvirt's ``test:///default`` with one connection held open, and the
    adapter under test on its own connection (as in production)."""

    name = "libvirt"

    def __init__(self) -> None:
        libvirt = libvirt_or_skip()
        from console_auth.adapters.libvirt import LibvirtConsoleEndpoints

        self.libvirt = libvirt
        self.connection = libvirt.open(TEST_URI)
        self.endpoints = self.adapter = LibvirtConsoleEndpoints(
            TEST_URI, vnc_host=VNC_HOST, spice_host=SPICE_HOST, serial_host=SERIAL_HOST
        )

    def provision(self, instance_uuid: UUID, consoles: Consoles) -> None:
        self.define(instance_uuid, devices_for(consoles), start=True)

    def define(self, instance_uuid: UUID, devices: str, *, start: bool) -> Any:
        """Define (replacing any domain of that uuid) and maybe start a domain."""
        self.remove(instance_uuid)
        domain = self.connection.defineXML(domain_xml(instance_uuid, devices))
        if start:
            domain.create()
        return domain

    def remove(self, instance_uuid: UUID) -> None:
        try:
            domain = self.connection.lookupByUUIDString(str(instance_uuid))
        except self.libvirt.libvirtError:
            return
        if domain.isActive():
            domain.destroy()
        domain.undefine()

    def close(self) -> None:
        self.adapter.close()
        self.connection.close()


def domain_xml(instance_uuid: UUID, devices: str) -> str:
    return (
        f"<domain type='test'><name>i-{instance_uuid}</name><uuid>{instance_uuid}</uuid>"
        "<memory>8192</memory><os><type>hvm</type></os>"
        f"<devices>{devices}</devices></domain>"
    )


def devices_for(consoles: Consoles) -> str:
    """Device XML whose endpoints, read back by the adapter, are ``consoles``
    (their hosts must be the configured proxy-client addresses)."""
    devices = []
    for kind, endpoint in consoles.items():
        if kind is ConsoleType.NOVNC:
            websocket = endpoint.options.extra.get("websocket_port")
            ws = "" if websocket is None else f" websocket='{websocket}'"
            devices.append(vnc(endpoint.port, ws))
        elif kind is ConsoleType.SPICE_HTML5:
            devices.append(spice(endpoint.port, endpoint.options.tls_port))
        elif kind is ConsoleType.SERIAL:
            devices.extend(serial_tcp(port) for port in endpoint.ports)
        else:
            raise ValueError(f"libvirt has no {kind.value} device to define")
    return "".join(devices)


def vnc(port: int | str, attributes: str = "") -> str:
    return f"<graphics type='vnc' port='{port}' autoport='no' listen='0.0.0.0'{attributes}/>"


def spice(port: int | str, tls_port: int | str | None = None) -> str:
    tls = "" if tls_port is None else f" tlsPort='{tls_port}'"
    return f"<graphics type='spice' port='{port}'{tls} autoport='no'/>"


def serial_tcp(port: int | str, mode: str = "bind", element: str = "serial") -> str:
    return (
        f"<{element} type='tcp'><source mode='{mode}' host='0.0.0.0' service='{port}'/>"
        f"<protocol type='raw'/></{element}>"
    )


def new_instance() -> UUID:
    return uuid.uuid4()
