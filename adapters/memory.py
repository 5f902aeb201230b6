"""The reference repositories: dicts under a lock. Every other backend must behave
exactly like these (the contract suite checks it); they also serve single-process
deployments and tests."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from console_auth.application.ports import StoredConnection
from console_auth.application.service import is_listed, purge_in_batches
from console_auth.domain import ConsoleConnection, ConsoleType, InvalidRequest, UnknownCell
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import ConsoleTypeUnavailable, InstanceNotFound
from console_auth.domain.leases import PortLease
from console_auth.domain.model import parse_host, parse_instance_uuid
from console_auth.domain.types import from_microseconds, to_microseconds

_K = TypeVar("_K")
_V = TypeVar("_V")


class InMemoryConsoleConnectionRepository:
    """Thread-safe; lost when the process ends."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ConsoleConnection] = {}
        self._revoked: dict[UUID, datetime] = {}
        self._lock = threading.Lock()

    def add(self, connection: ConsoleConnection) -> None:
        with self._lock:
            if connection.token_hash in self._by_hash:
                raise InvalidRequest("a connection with this token hash is already stored")
            self._by_hash[connection.token_hash] = connection

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        return self._by_hash.get(token_hash)

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        with self._lock:
            deleted = _delete(self._by_hash, lambda c: c.instance_uuid == instance_uuid)
            at = from_microseconds(to_microseconds(revoked_at))  # UTC; a naive time is refused
            self._revoked[instance_uuid] = max(at, self._revoked.get(instance_uuid, at))
        return deleted

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        with self._lock:
            return {u: self._revoked[u] for u in instance_uuids if u in self._revoked}

    def delete_revocations(self, before: datetime) -> int:
        with self._lock:
            return _delete(self._revoked, lambda at: at < before)

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        return purge_in_batches(self, now, host, batch_size)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        with self._lock:
            return _delete(self._by_hash, _expired(now, host), limit)

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        wanted = frozenset(instance_uuids)
        with self._lock:  # one pass: a dict has no transaction to keep short
            return _delete(
                self._by_hash, lambda c: c.expires_at <= now and c.instance_uuid in wanted
            )

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        with self._lock:
            listed = [
                c
                for c in self._by_hash.values()
                if is_listed(c, after, instance_uuid, host, live_at)
            ]
        page = heapq.nsmallest(limit, listed, key=lambda c: c.token_hash)
        return [StoredConnection(c) for c in page]

    def delete_by_hash(self, token_hash: str) -> int:
        with self._lock:
            return 0 if self._by_hash.pop(token_hash, None) is None else 1

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        return None


class InMemoryPortLeaseRepository:
    """Leases by (host, port) under one lock: the reference for the others."""

    def __init__(self) -> None:
        self._leases: dict[tuple[str, int], PortLease] = {}
        self._lock = threading.Lock()

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        key = (lease.host, lease.port)
        with self._lock:
            current = self._leases.get(key)
            if current is not None and current.blocks(lease, now):
                return current
            self._leases[key] = lease
        return None

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        key = (lease.host, lease.port)
        with self._lock:
            current = self._leases.get(key)
            if current is None or current.lease_id != lease.lease_id or not current.is_live(now):
                return None
            renewed = current.model_copy(update={"expires_at": expires_at})
            self._leases[key] = renewed
        return renewed

    def release(self, lease: PortLease) -> bool:
        key = (lease.host, lease.port)
        with self._lock:
            current = self._leases.get(key)
            if current is None or current.lease_id != lease.lease_id:
                return False
            del self._leases[key]
        return True

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        with self._lock:
            found = [
                lease
                for lease in self._leases.values()
                if lease.is_live(now)
                and (host is None or lease.host == host)
                and (instance_uuid is None or lease.instance_uuid == instance_uuid)
            ]
        return sorted(found, key=lambda lease: (lease.host, lease.port))

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        with self._lock:
            return _delete(self._leases, lambda lease: lease.instance_uuid == instance_uuid)

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        with self._lock:  # one pass: a dict has no transaction to keep short
            return _delete(self._leases, _expired(now, host))


def _delete(items: dict[_K, _V], doomed: Callable[[_V], bool], limit: int | None = None) -> int:
    """Delete what ``doomed`` picks (the first ``limit``), under the caller's lock; how many."""
    keys = list(itertools.islice((k for k, v in items.items() if doomed(v)), limit))
    for key in keys:
        del items[key]
    return len(keys)


def _expired(now: datetime, host: str | None) -> Callable[[ConsoleConnection | PortLease], bool]:
    """What a purge of ``host`` (``None``: every host) deletes at ``now``."""
    return lambda item: item.expires_at <= now and (host is None or item.host == host)


class InMemoryPortReservationRepository:
    """Reserved (host, port) pairs in a set under a lock."""

    def __init__(self) -> None:
        self._reserved: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def reserve(self, host: str, port: int) -> bool:
        with self._lock:
            free = (host, port) not in self._reserved
            self._reserved.add((host, port))
        return free

    def release(self, host: str, port: int) -> bool:
        with self._lock:
            held = (host, port) in self._reserved
            self._reserved.discard((host, port))
        return held

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        with self._lock:
            return {p for h, p in self._reserved if h == host and first <= p <= last}


class InMemoryCellLocator:
    """Cells in dicts, for tests and for a host service that tells it (``place``);
    ``cells`` lists every cell in order (default: those the mappings name)."""

    def __init__(
        self,
        instances: Mapping[UUID | str, str] | None = None,
        *,
        hosts: Mapping[str, str] | None = None,
        cells: Iterable[str] | None = None,
    ) -> None:
        self._instances = {parse_instance_uuid(k): v for k, v in (instances or {}).items()}
        self._hosts = {parse_host(k): v for k, v in (hosts or {}).items()}
        named = [*self._instances.values(), *self._hosts.values()]
        self._cells = tuple(dict.fromkeys(named if cells is None else cells))
        stray = sorted(set(named) - set(self._cells))
        if stray:
            raise InvalidRequest(f"the cell map names cells it does not list: {', '.join(stray)}")

    def place(self, instance_uuid: UUID | str, cell: str) -> None:
        """Record (or move) an instance's cell."""
        if cell not in self._cells:
            raise InvalidRequest(f"no cell is named {cell!r}")
        self._instances[parse_instance_uuid(instance_uuid)] = cell  # one atomic store

    def cell_of(self, instance_uuid: UUID) -> str:
        try:
            return self._instances[instance_uuid]
        except KeyError:
            raise UnknownCell(f"no cell is known to hold instance {instance_uuid}") from None

    def cell_of_host(self, host: str) -> str | None:
        return self._hosts.get(host)

    def cells(self) -> Sequence[str]:
        return self._cells


class InMemoryConsoleEndpoints:
    """Console endpoints held in a dict: for tests, and for a host service
    that knows where its consoles listen and tells this (``set``)."""

    def __init__(self) -> None:
        self._endpoints: dict[UUID, dict[ConsoleType, ConsoleEndpoint]] = {}
        self._lock = threading.Lock()

    def set(
        self, instance_uuid: UUID | str, console_type: ConsoleType | str, endpoint: ConsoleEndpoint
    ) -> None:
        """Record (or move) where the instance's console of this kind listens."""
        if not isinstance(endpoint, ConsoleEndpoint):
            raise InvalidRequest("endpoint must be a ConsoleEndpoint")
        kind = ConsoleType(console_type)
        with self._lock:
            self._endpoints.setdefault(parse_instance_uuid(instance_uuid), {})[kind] = endpoint

    def forget(self, instance_uuid: UUID | str) -> None:
        """The instance is gone: its consoles with it."""
        with self._lock:
            self._endpoints.pop(parse_instance_uuid(instance_uuid), None)

    def endpoint(self, instance_uuid: UUID, console_type: ConsoleType) -> ConsoleEndpoint:
        with self._lock:
            consoles = self._endpoints.get(instance_uuid)
            if consoles is None:
                raise InstanceNotFound(
                    f"no console endpoints are known for instance {instance_uuid}"
                )
            endpoint = consoles.get(console_type)
        if endpoint is None:
            raise ConsoleTypeUnavailable(
                f"instance {instance_uuid} has no {console_type.value} console"
            )
        return endpoint
