"""``LibvirtConsoleEndpoints``: where a libvirt domain's consoles listen, read from the
running domain's XML as Nova's libvirt driver reads it (README.md, "Console drivers").

The host the proxy dials is the settings' one per device, never the XML's ``listen``, which
is where QEMU binds (often ``0.0.0.0``). SPICE's ``tlsPort`` is recorded without ``use_tls``,
as Nova's SPICE proxy dials ``port`` in the clear; s390x domains have only ``<console>``s.
A libvirt failure, opening included, is ``BackendUnavailable``, never "no such console".
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Final, TypeVar
from uuid import UUID

import libvirt

from console_auth.domain import BackendUnavailable, ConsoleType, SerialMode
from console_auth.domain.endpoints import MAX_SERIAL_PORTS, ConsoleEndpoint
from console_auth.domain.errors import (
    ConsoleNotAllocated,
    ConsoleTypeUnavailable,
    InstanceNotFound,
    InstanceNotRunning,
)
from console_auth.domain.model import ConsoleOptions, parse_host
from console_auth.domain.types import MAX_PORT, is_port

logger = logging.getLogger(__name__)

MAX_DOMAIN_XML_CHARS: Final = 4 << 20
"""A domain's XML is a few kilobytes; past this it is refused, not parsed."""
KEEPALIVE_INTERVAL: Final = 5
KEEPALIVE_COUNT: Final = 3
"""A remote libvirtd that stops answering is dropped after about 20 seconds."""
CALL_TIMEOUT: Final = 20.0
"""Seconds a caller waits for libvirt: its client waits for ever on a hung libvirtd."""
MAX_CALLS: Final = 16
"""libvirt calls in flight at most (stuck ones included); past it, a call is an outage."""
_T = TypeVar("_T")
_NOT_ALLOCATED: Final = "-1"
_DEVICES: Final = {
    ConsoleType.NOVNC: "vnc",
    ConsoleType.SPICE_HTML5: "spice",
    ConsoleType.SPICE_DIRECT: "spice",
    ConsoleType.SERIAL: "serial",
}


def _ignore_libvirt_errors(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; ours
    are raised as exceptions and mapped instead."""


libvirt.registerErrorHandler(_ignore_libvirt_errors, None)


class LibvirtConsoleEndpoints:
    """``*_host``: the address the proxy dials per device. Thread-safe, as libvirt
    connections are; one is opened under a lock, and again after it dies."""

    def __init__(
        self,
        uri: str,
        *,
        vnc_host: str,
        spice_host: str,
        serial_host: str,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._uri = uri
        self._timeout = timeout
        self._hosts = {
            "vnc": parse_host(vnc_host),
            "spice": parse_host(spice_host),
            "serial": parse_host(serial_host),
        }
        self._connection: Any = None
        self._opening = threading.Lock()
        self._threads = _Daemons()

    def endpoint(self, instance_uuid: UUID, console_type: ConsoleType) -> ConsoleEndpoint:
        device = _DEVICES.get(console_type)
        if device is None:
            raise ConsoleTypeUnavailable(f"libvirt domains have no {console_type.value} console")
        xml = self._bounded(self._domain_xml, instance_uuid)
        return endpoint_from_xml(xml, instance_uuid, device, self._hosts[device])

    def close(self) -> None:
        """Close the connection, if open; the next lookup opens a new one."""
        try:
            self._bounded(self._close)
        except (libvirt.libvirtError, BackendUnavailable) as exc:
            logger.warning("closing libvirt connection %s: %s", self._uri, exc)

    def _close(self) -> None:
        with self._locked():
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """``_opening``, waited for ``timeout`` at most: an open may hang holding it."""
        if not self._opening.acquire(timeout=self._timeout):
            raise self._no_answer()
        try:
            yield
        finally:
            self._opening.release()

    def _no_answer(self) -> BackendUnavailable:
        return BackendUnavailable(f"libvirt {self._uri} gave no answer in {self._timeout:g} s")

    def _bounded(self, call: Callable[..., _T], *args: object) -> _T:
        """``call`` in a daemon thread, waited for ``timeout`` seconds at most (a stuck
        one is left behind: libvirt's client cannot be interrupted)."""
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # the caller's to raise
                future.set_exception(exc)

        if not self._threads.submit(run):
            raise BackendUnavailable(f"libvirt {self._uri}: {MAX_CALLS} calls are still waiting")
        try:
            return future.result(self._timeout)
        except TimeoutError:
            raise self._no_answer() from None

    def _domain_xml(self, instance_uuid: UUID) -> str:
        connection = self._connected()
        try:
            xml: str = connection.lookupByUUIDString(str(instance_uuid)).XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise InstanceNotFound(f"libvirt has no domain {instance_uuid}") from None
            self._drop_if_dead(connection)
            raise BackendUnavailable(
                f"libvirt {self._uri} cannot read domain {instance_uuid}: {_message(exc)}"
            ) from exc
        return xml

    def _connected(self) -> Any:
        with self._locked():
            if self._connection is None:
                try:
                    connection = libvirt.open(self._uri)
                except libvirt.libvirtError as exc:
                    raise BackendUnavailable(
                        f"libvirt {self._uri} cannot be reached: {_message(exc)}"
                    ) from exc
                with contextlib.suppress(libvirt.libvirtError):  # a local driver may have none
                    connection.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
                self._connection = connection
            return self._connection

    def _drop_if_dead(self, connection: Any) -> None:
        """A dead connection is closed, so the next call opens a new one."""
        try:
            alive = connection.isAlive() == 1
        except libvirt.libvirtError:
            alive = False
        if not alive:
            with self._opening:
                if self._connection is connection:
                    self._connection = None
            with contextlib.suppress(libvirt.libvirtError):  # calls under way keep their own ref
                connection.close()
            logger.warning("libvirt connection %s lost; it is opened again on next use", self._uri)


class _Daemons:
    """Daemon threads for libvirt calls, one more when none is idle: a stuck call keeps
    its thread, and a daemon does not hold the process at exit."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, job: Callable[[], None]) -> bool:
        """Whether ``job`` was taken (not past ``MAX_CALLS`` threads)."""
        with self._lock:
            spawn = self._idle == 0
            if spawn and self._threads == MAX_CALLS:
                return False
            self._idle -= not spawn
            self._threads += spawn
        if spawn:
            threading.Thread(
                target=self._serve, args=(job,), name="console-auth-libvirt", daemon=True
            ).start()
        else:
            self._work.put(job)
        return True

    def _serve(self, job: Callable[[], None]) -> None:
        while True:
            job()
            with self._lock:
                self._idle += 1
            job = self._work.get()


def _message(exc: libvirt.libvirtError) -> str:
    return " ".join(str(exc.get_error_message() or exc).split())


def endpoint_from_xml(xml: str, instance_uuid: UUID, device: str, host: str) -> ConsoleEndpoint:
    """The endpoint of ``device`` (``vnc``, ``spice`` or ``serial``) in a
    domain's XML, dialled at ``host``; the typed errors of the module
    docstring. Pure: the libvirt call is the caller's."""
    domain = _parse(xml, instance_uuid)
    if domain.get("id", _NOT_ALLOCATED) == _NOT_ALLOCATED:
        raise InstanceNotRunning(f"domain {instance_uuid} is not running")
    if device == "serial":
        return _serial(domain, instance_uuid, host)
    graphics = domain.find(f"./devices/graphics[@type='{device}']")
    if graphics is None:
        raise ConsoleTypeUnavailable(f"domain {instance_uuid} has no {device} graphics")
    what = f"{device} graphics of domain {instance_uuid}"
    port = _port(graphics.get("port"), what)
    if device == "spice":
        tls_port = _optional_port(graphics.get("tlsPort"))
        return ConsoleEndpoint(host=host, port=port, options=ConsoleOptions(tls_port=tls_port))
    websocket = _optional_port(graphics.get("websocket"))
    extra = {} if websocket is None else {"websocket_port": websocket}
    return ConsoleEndpoint(host=host, port=port, options=ConsoleOptions(extra=extra))


def _parse(xml: str, instance_uuid: UUID) -> ET.Element:
    if not isinstance(xml, str) or len(xml) > MAX_DOMAIN_XML_CHARS:
        raise BackendUnavailable(
            f"libvirt's XML of domain {instance_uuid} is not text of at most "
            f"{MAX_DOMAIN_XML_CHARS} characters"
        )
    try:
        return ET.fromstring(xml)  # noqa: S314 -- from libvirt; expat bounds entity expansion
    except ET.ParseError as exc:
        raise BackendUnavailable(
            f"libvirt's XML of domain {instance_uuid} is not well-formed: {exc}"
        ) from None


def _serial(domain: ET.Element, instance_uuid: UUID, host: str) -> ConsoleEndpoint:
    mode = f"[@mode='{SerialMode.BIND.value}']"
    sources = domain.findall(f"./devices/serial[@type='tcp']/source{mode}") or domain.findall(
        f"./devices/console[@type='tcp']/source{mode}"
    )
    what = f"tcp serial device of domain {instance_uuid}"
    ports = list(dict.fromkeys(_port(s.get("service"), what) for s in sources))
    if not ports:
        raise ConsoleTypeUnavailable(
            f"domain {instance_uuid} has no tcp serial device in bind mode"
        )
    return ConsoleEndpoint(
        host=host,
        port=ports[0],
        other_ports=tuple(ports[1:MAX_SERIAL_PORTS]),
        options=ConsoleOptions(mode=SerialMode.BIND),
    )


def _port(text: str | None, what: str) -> int:
    """A port attribute: ``-1`` is autoport not chosen yet; none, or one
    that is no TCP port, means the device does not listen on TCP."""
    if text is not None and text.strip() == _NOT_ALLOCATED:
        raise ConsoleNotAllocated(f"the {what} has no port allocated yet")
    port = _optional_port(text)
    if port is None:
        raise ConsoleTypeUnavailable(f"the {what} does not listen on a TCP port")
    return port


def _optional_port(text: str | None) -> int | None:
    """A port attribute's value when it is one, else ``None``."""
    if text is None:
        return None
    text = text.strip()
    digits = text.isascii() and text.isdigit() and len(text.lstrip("0")) <= len(str(MAX_PORT))
    port = int(text) if digits else None  # bounded: int() refuses over 4300 digits
    return port if is_port(port) else None
