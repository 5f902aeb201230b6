"""Serial console ports: one client per port, known to every process.

Nova keeps allocated ports in a process-local set and cannot tell who is
connected where. Here every claim on a port is a ``PortLease`` in the shared
store, so the compute side hands out a free port, the proxy refuses a second
client, and the API can say "no port left", across processes and restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from itertools import islice
from typing import Final, Unpack
from uuid import UUID

from console_auth.domain import (
    ConsoleConnection,
    ConsoleType,
    InvalidRequest,
    IssuedConsole,
)
from console_auth.domain.errors import (
    LeaseLost,
    NoFreeConsolePort,
    PortAlreadyConnected,
    PortRangeExhausted,
)
from console_auth.domain.leases import LeaseKind, PortLease
from console_auth.domain.model import parse_host, parse_instance_uuid
from console_auth.domain.types import MAX_PORT, MIN_PORT, is_port, parse_proxy_id

from .events import UseCase, asked_lease, bind_observed, observed, presented
from .ports import LeaseIdSource, PortLeaseRepository, PortReservationRepository
from .service import ConsoleAuthService, IssueOptions, purge_cutoff

logger = logging.getLogger(__name__)

MAX_DEFINED_PORTS: Final = 64
"""Far above any real instance's serial devices, low enough to bound a
request."""


class ConsolePortService:
    """Authorize, connect, heartbeat and disconnect serial consoles, and
    reserve the host ports their devices listen on.

    Time and policy (``lease_ttl``, the purge knobs) are the token
    service's, so tokens and leases agree."""

    def __init__(
        self,
        consoles: ConsoleAuthService,
        leases: PortLeaseRepository,
        reservations: PortReservationRepository,
        lease_ids: LeaseIdSource,
    ) -> None:
        self._consoles = consoles
        self._leases = leases
        self._reservations = reservations
        self._lease_ids = lease_ids
        self.events: Final = consoles.events
        """The token service's: tokens and ports report to one place."""
        bind_observed(self)

    def authorize_serial(
        self,
        instance_uuid: UUID | str,
        host: str,
        defined_ports: Sequence[int],
        **issue: Unpack[IssueOptions],
    ) -> IssuedConsole:
        """Issue a serial console on the first defined port that is neither
        connected nor held by a live, unused token.

        The hold is taken before the token is stored, so two computes racing
        for the same instance never hand out one port twice.
        """
        ports = _check_ports(defined_ports)
        return self._consoles.authorize(
            instance_uuid,
            host,
            ports[0],
            ConsoleType.SERIAL,
            claim=partial(self._hold_a_free_port, ports),
            **issue,
        )

    def _hold_a_free_port(
        self, ports: list[int], connection: ConsoleConnection
    ) -> tuple[ConsoleConnection, Callable[[], object]]:
        """The claim step of ``authorize_serial``: hold the first free port
        for the token, and say how to let it go."""
        now = self._consoles.now()
        for port in ports:
            hold = PortLease(
                host=connection.host,
                port=port,
                instance_uuid=connection.instance_uuid,
                kind=LeaseKind.HELD,
                lease_id=self._lease_ids.new_lease_id(),
                token_hash=connection.token_hash,
                since=now,
                expires_at=connection.expires_at,
            )
            if self._leases.claim(hold, now) is None:
                release: Callable[[], object] = partial(self._leases.release, hold)
                return connection.model_copy(update={"port": port}), release
        raise NoFreeConsolePort(
            f"every defined serial port of instance {connection.instance_uuid} on "
            f"{connection.host} is connected or held"
        )

    @observed(UseCase.CONNECT, presented)
    def connect(
        self, token: str | bytes, instance_uuid: UUID | str | None, proxy_id: str
    ) -> PortLease:
        """Validate the token and take its port for this proxy's client."""
        connection = self._consoles.validate(token, instance_uuid)
        if connection.console_type is not ConsoleType.SERIAL:
            raise InvalidRequest("only serial consoles take port leases")
        now, expires_at = self._lease_window()
        lease = PortLease.model_validate(
            {
                "host": connection.host,
                "port": connection.port,
                "instance_uuid": connection.instance_uuid,
                "kind": LeaseKind.CONNECTED,
                "lease_id": self._lease_ids.new_lease_id(),
                "token_hash": connection.token_hash,
                "proxy_id": parse_proxy_id(proxy_id),
                "since": now,
                "expires_at": expires_at,
            }
        )
        blocker = self._leases.claim(lease, now)
        if blocker is not None:
            raise PortAlreadyConnected(
                f"serial port {connection.host}:{connection.port} already has a client "
                f"(since {blocker.since.isoformat()})"
            )
        logger.info(
            "serial port %s:%s connected by proxy %s (token hash %.8s)",
            lease.host,
            lease.port,
            lease.proxy_id,
            lease.token_hash,
        )
        return lease

    def heartbeat(self, lease: PortLease) -> PortLease:
        """Extend a live lease; ``LeaseLost`` if it expired or was replaced."""
        now, expires_at = self._lease_window()
        renewed = self._leases.renew(_check_lease(lease), expires_at, now)
        if renewed is None:
            raise LeaseLost(f"the lease on serial port {lease.host}:{lease.port} is gone")
        return renewed

    @observed(UseCase.DISCONNECT, asked_lease)
    def disconnect(self, lease: PortLease) -> bool:
        """Free the port; ``False`` if the lease was already gone."""
        released = self._leases.release(_check_lease(lease))
        logger.info("serial port %s:%s disconnected", lease.host, lease.port)
        return released

    def leases(
        self, *, host: str | None = None, instance_uuid: UUID | str | None = None
    ) -> list[PortLease]:
        """Live leases (connected ports and held ones), for operators."""
        return self._leases.leases(
            self._consoles.now(),
            host=None if host is None else parse_host(host),
            instance_uuid=None if instance_uuid is None else parse_instance_uuid(instance_uuid),
        )

    def release_instance(self, instance_uuid: UUID | str) -> int:
        """Drop every lease of an instance (deleted, migrated): call it with
        ``ConsoleAuthService.revoke_instance``."""
        return self._leases.delete_by_instance(parse_instance_uuid(instance_uuid))

    def purge_expired(self, host: str | None = None) -> int:
        """Delete leases that expired more than ``purge_grace`` ago, in
        bounded batches (they already free their ports; this reclaims the
        space)."""
        host = None if host is None else parse_host(host)
        policy = self._consoles.policy
        now = purge_cutoff(self._consoles.now(), policy.purge_grace)
        if now is None:
            return 0
        return self._leases.purge_expired(now, host, policy.purge_batch_size)

    def allocate_port(self, host: str, port_range: range | tuple[int, int]) -> int:
        """Reserve the lowest free port of the range for a new serial device.

        Reads what is reserved, then reserves candidates in order; the
        store's uniqueness settles races, so a port is never handed out
        twice.
        """
        host = parse_host(host)
        first, last = _check_range(port_range)
        taken = self._reservations.reserved(host, first, last)
        for port in range(first, last + 1):
            if port not in taken and self._reservations.reserve(host, port):
                logger.info("reserved serial port %s:%s", host, port)
                return port
        raise PortRangeExhausted(f"every port of {first}-{last} on {host} is reserved")

    def release_port(self, host: str, port: int) -> bool:
        """Give a reserved port back; ``False`` if it was not reserved."""
        return self._reservations.release(parse_host(host), _check_ports([port])[0])

    def _lease_window(self) -> tuple[datetime, datetime]:
        """Now, and when a lease taken or renewed now expires."""
        now = self._consoles.now()
        try:
            return now, now + self._consoles.policy.lease_ttl
        except OverflowError:
            raise InvalidRequest(
                "a lease from Clock.now() ends past the supported date range"
            ) from None


def _check_ports(ports: Sequence[int]) -> list[int]:
    checked = list(islice(ports, MAX_DEFINED_PORTS + 1)) if _is_sequence(ports) else []
    if not 0 < len(checked) <= MAX_DEFINED_PORTS:
        raise InvalidRequest(f"defined ports must be a list of 1-{MAX_DEFINED_PORTS} ports")
    if not all(is_port(p) for p in checked):
        raise InvalidRequest(f"defined ports must be integers in {MIN_PORT}-{MAX_PORT}")
    if len(set(checked)) != len(checked):
        raise InvalidRequest("defined ports must not repeat")
    return checked


def _check_range(port_range: range | tuple[int, int]) -> tuple[int, int]:
    bounds: tuple[object, ...]
    if isinstance(port_range, range):
        if port_range.step != 1 or not port_range:
            raise InvalidRequest("port range must be a non-empty range with step 1")
        bounds = (port_range.start, port_range.stop - 1)
    else:
        bounds = tuple(islice(port_range, 3)) if _is_sequence(port_range) else ()
    first, last = bounds if len(bounds) == 2 else (None, None)
    if not (is_port(first) and is_port(last) and first <= last):
        raise InvalidRequest(
            f"port range must be first-last within {MIN_PORT}-{MAX_PORT}, first <= last"
        )
    return first, last


def _check_lease(lease: PortLease) -> PortLease:
    if not isinstance(lease, PortLease):
        raise InvalidRequest("lease must be a PortLease this service handed out")
    return lease


def _is_sequence(value: object) -> bool:
    """A list, tuple or range of ports (``islice`` keeps a huge one bounded);
    text is a sequence too, of characters."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)
