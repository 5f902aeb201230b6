"""What the service needs from the outside world, and nothing more.

Adapters satisfy these structurally; none of them inherits from a port.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Final, NamedTuple, Protocol
from uuid import UUID

from console_auth.domain import ConsoleConnection, ConsoleType
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.leases import PortLease

from .events import ConsoleEvent, UseCase

MAX_PAGE: Final = 1000
"""Connections one ``connections`` page may hold: an operator's listing
holds one page at a time, whatever the number of rows."""


class StoredConnection(NamedTuple):
    """A connection as a listing shows it, with the cell that holds it
    (``None`` in a store that is not split over cells)."""

    connection: ConsoleConnection
    cell: str | None = None


class ConsoleConnectionRepository(Protocol):
    """Stored connections keyed by token hash; a clean token never gets here.

    Every method may raise ``BackendUnavailable`` when the store cannot
    answer; ``None`` and ``0`` always mean the store answered.
    """

    def add(self, connection: ConsoleConnection) -> None:
        """Store ``connection``; ``InvalidRequest`` if its hash is already
        stored for its instance (a store split over cells checks the
        instance's cell only: 256-bit tokens never meet across cells)."""
        ...

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        """The connection stored under ``token_hash``, expired or not.

        ``instance_uuid``, when the caller knows it, says where to look: a
        store split over cells asks only that instance's cell (as Nova's
        ``console_auth_token_get_valid(token_hash, instance_uuid)``). So a
        connection of another instance may then be ``None``."""
        ...

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        """Delete every connection of the instance and record that it was
        revoked at ``revoked_at`` (the record keeps the latest time it was
        given); return how many connections went. The record outlives the tokens, so a
        proxy can end sessions they opened (see ``revocations``)."""
        ...

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        """When each of these instances was last revoked, for those with a
        revocation record still kept."""
        ...

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        """Delete every connection with ``expires_at <= now`` (of ``host``
        only, when given), ``batch_size`` to a short transaction, then forget
        revocations recorded ``REVOCATION_RETENTION`` before ``now``; return
        how many connections went. A single store does it with
        ``purge_in_batches``. A store made of parts (cells, a fallback pair)
        purges the parts that may hold ``host``'s connections in turn: a part
        that fails is skipped, and once the others are done a
        ``BackendUnavailable`` names it."""
        ...

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        """Delete every connection of these instances with ``expires_at <=
        now``, ``batch_size`` to a short transaction; return how many went.
        What a compute node purges for the guests it runs, whatever ``host``
        their consoles were stored with (bug 1816399). Over cells, each
        instance's cell (every cell for one the map does not place), with
        ``in_every_cell``'s failure rule; a fallback pair, both stores."""
        ...

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        """One page of stored connections in token-hash order: at most
        ``limit`` (1 to ``MAX_PAGE``) with a hash above ``after``, of one
        instance or one ``host`` when given, only those live at ``live_at``
        (``now < expires_at``) when given. The next page starts after the
        last hash of this one. Over cells, every cell is asked and a cell
        that fails fails the page, naming it: a merged page without a cell
        would skip that cell's rows for good. memcached lists one instance
        only (``InvalidRequest`` naming the database backend otherwise)."""
        ...

    def delete_by_hash(self, token_hash: str) -> int:
        """Delete the connection stored under ``token_hash`` (one token, not
        its instance: no revocation record is kept); return 0 or 1. Over
        cells and a fallback pair, every part, with ``in_every_cell``'s
        failure rule."""
        ...

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        """Where ``get_by_hash(..., instance_uuid)`` looks, in an operator's
        words (``cell a``, ``every cell``), or ``None`` for a single store:
        what ``explain`` tells about a lookup. ``UnknownCell`` as
        ``get_by_hash`` would raise it."""
        ...


class CellLocator(Protocol):
    """Which cell holds an instance (and a compute host), in a deployment
    whose tokens are split over one store per cell.

    A cell is a name; what stores it has is the container's business. The
    answers may change while the process runs (instances are created and
    moved), so callers ask every time rather than cache.
    """

    def cell_of(self, instance_uuid: UUID) -> str:
        """The cell holding the instance; ``UnknownCell`` when none does."""
        ...

    def cell_of_host(self, host: str) -> str | None:
        """The cell of a compute host (``host`` as ``parse_host`` spells it),
        or ``None`` when unknown: a per-host purge then asks every cell."""
        ...

    def cells(self) -> Sequence[str]:
        """Every cell this locator may answer, in a stable order."""
        ...


class Clock(Protocol):
    """The time, so tests can stop and move it."""

    def now(self) -> datetime:
        """Timezone-aware UTC."""
        ...


class TokenSource(Protocol):
    """Fresh tokens, so tests can predict them."""

    def new_token(self) -> str:
        """A token of ``TOKEN_LENGTH`` URL-safe characters, never seen before."""
        ...


class LeaseIdSource(Protocol):
    """Fresh serial-port lease ids, so tests can predict them."""

    def new_lease_id(self) -> str:
        """16-64 URL-safe characters, never seen before: a port's holder
        proves with it that the lease is still its own."""
        ...


class PortLeaseRepository(Protocol):
    """Who holds each console port: at most one live lease per (host, port).

    ``claim`` is the one operation that must be atomic in the store: two
    proxies racing for a port, or two computes racing to hand it out, must
    see exactly one winner.
    """

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        """Store ``lease`` for its (host, port) unless a live lease there
        blocks it (``PortLease.blocks``); return the blocker, or ``None``
        when stored."""
        ...

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        """Move the stored lease's expiry if it is still live and still has
        ``lease.lease_id``; return it renewed, or ``None`` when it is gone."""
        ...

    def release(self, lease: PortLease) -> bool:
        """Delete the (host, port) lease if it still has ``lease.lease_id``."""
        ...

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        """Live leases, filtered when asked, ordered by host and port."""
        ...

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        """Delete every lease of the instance; return how many."""
        ...

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        """Delete every lease with ``expires_at <= now`` (of ``host`` only,
        when given), ``batch_size`` to a short transaction; return how many.
        Split over cells, each cell that may hold ``host``'s leases in turn,
        with the one failure rule of ``in_every_cell``."""
        ...


class PortReservationRepository(Protocol):
    """Host ports reserved for serial devices, unique per (host, port), kept
    across processes and restarts (Nova kept them in a process-local set)."""

    def reserve(self, host: str, port: int) -> bool:
        """Reserve the port; ``False`` if it was already reserved."""
        ...

    def release(self, host: str, port: int) -> bool:
        """Free the port; ``False`` if it was not reserved."""
        ...

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        """The host's reserved ports within ``first..last`` inclusive."""
        ...


class ConsoleEndpoints(Protocol):
    """Where each instance's consoles listen: a hypervisor driver's answer,
    asked every time (a console moves when its instance restarts)."""

    def endpoint(self, instance_uuid: UUID, console_type: ConsoleType) -> ConsoleEndpoint:
        """The endpoint of the instance's console of this kind, else a
        ``ConsoleUnavailable``: ``InstanceNotFound``, ``ConsoleTypeUnavailable``
        (no such device), ``ConsoleNotAllocated`` (autoport not chosen yet) or
        ``InstanceNotRunning``. ``BackendUnavailable`` when the driver cannot
        be asked: an outage is never "no such console"."""
        ...


class ConsoleEvents(Protocol):
    """Takes what the use cases did: metrics, audit records, traces.

    A service without one records nothing and pays nothing. Events never
    hold a token (``events.ConsoleEvent``). ``around`` and ``record`` run on
    the caller's thread, inside the use case (on the proxy's event loop for
    its sessions): keep them short and non-blocking.
    """

    @property
    def around(self) -> Callable[[UseCase], AbstractContextManager[object]] | None:
        """What to enter around each run of a use case, its event recorded
        inside (a tracer's span); ``None`` when this recorder keeps no span,
        so the use case runs unwrapped (a metrics recorder)."""
        ...

    def record(self, event: ConsoleEvent) -> None:
        """One use case's outcome (or a proxy session's step)."""
        ...

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        """A validate that opened ``connection`` in ``duration`` seconds: the
        hot path, so no event is built for it (``events.validated_event``)."""
        ...
