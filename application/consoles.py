"""Issue a console by instance and kind: the driver says where it listens.

The compute API asks for "a noVNC console for instance X"; a
``ConsoleEndpoints`` adapter (libvirt, a static file) finds the endpoint, and
the token service authorizes exactly that, with nothing copied by hand.
Serial consoles go through ``ConsolePortService``, so one of the driver's
ports is claimed atomically for the token.

A use case of its own rather than a method of ``ConsoleAuthService``:
``ConsolePortService`` is built on the token service, so the token service
asking it for serial ports would make each depend on the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from uuid import UUID

from console_auth.domain import ConsoleType, InvalidRequest, IssuedConsole
from console_auth.domain.model import parse_instance_uuid

from .ports import ConsoleEndpoints
from .serial import ConsolePortService
from .service import ConsoleAuthService

logger = logging.getLogger(__name__)


class InstanceConsoleService:
    """``authorize_console``: a driver's endpoint, authorized.

    ``serial_ports`` gives the serial-port service when a serial console is
    first asked for: a deployment whose store keeps no port leases
    (memcached) still issues the other kinds. ``access_url_bases`` is each
    kind's base for a call given none (Nova's ``novncproxy_base_url``, ...).
    """

    def __init__(
        self,
        consoles: ConsoleAuthService,
        endpoints: ConsoleEndpoints,
        serial_ports: Callable[[], ConsolePortService],
        access_url_bases: Mapping[ConsoleType, str] | None = None,
    ) -> None:
        self._consoles = consoles
        self._endpoints = endpoints
        self._serial_ports = serial_ports
        self._bases = dict(access_url_bases or {})

    def authorize_console(
        self,
        instance_uuid: UUID | str,
        console_type: ConsoleType | str,
        *,
        access_url_base: str | None = None,
        ttl: timedelta | None = None,
    ) -> IssuedConsole:
        """Ask the driver where the instance's console of this kind listens,
        then authorize it; a ``ConsoleUnavailable`` (or ``BackendUnavailable``)
        from the driver stores nothing."""
        instance = parse_instance_uuid(instance_uuid)
        kind = _console_type(console_type)
        endpoint = self._endpoints.endpoint(instance, kind)
        if access_url_base is None:
            access_url_base = self._bases.get(kind)
        if kind is ConsoleType.SERIAL:
            return self._serial_ports().authorize_serial(
                instance,
                endpoint.host,
                endpoint.ports,
                options=endpoint.options,
                access_url_base=access_url_base,
                ttl=ttl,
            )
        return self._consoles.authorize(
            instance,
            endpoint.host,
            endpoint.port,
            kind,
            options=endpoint.options,
            access_url_base=access_url_base,
            ttl=ttl,
        )


def _console_type(value: ConsoleType | str) -> ConsoleType:
    try:
        return ConsoleType(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in ConsoleType)
        raise InvalidRequest(f"console type must be one of {kinds}") from None
