"""Serial-port leases and reservations on memcached (issue 5).

Keys (``<prefix>`` is the configured ``key_prefix``; ``<hd>`` is the first
128 bits of the host's SHA-256 in hex, so a 253-character host name still
fits memcached's 250-byte keys and no key depends on how a host is spelled)::

    <prefix>:l:<hd>:<port>        the port's lease {"v": 1, "lease": {...}}, or a
                                  tombstone {"v": 1, "lease": null}
    <prefix>:lp:<hd>:<n>          the host's leased ports  [[port, reclaim_at], ...]
    <prefix>:li:<instance_uuid>   the instance's ports     [[host, reclaim_at, port], ...]
    <prefix>:lhosts:<n>           hosts with leases        [[host, reclaim_at], ...]
    <prefix>:r:<hd>:<port>        a reservation            {"v": 1, "host", "port", "reserved_at"}

A lease value is ``PortLease.model_dump(mode="json")`` inside an envelope
whose ``v`` is the value format (a reader refuses any other as unreadable,
``BackendUnavailable``, rather than guess). Every lease read is validated
again and must name its key's host and port.

Claim. ``gets`` the port's item; a live blocker (``PortLease.blocks``, the
domain's rule) is returned. Otherwise the new lease is stored with ``add``
when the key is absent, or with ``cas`` on the unique just read when it
holds an expired or non-blocking lease or a tombstone. A failed ``add`` or
``cas`` means another writer got in between: read again, at most
``CLAIM_ATTEMPTS`` times (each lost race is another writer's progress, so
this settles in a few; the bound only stops a livelock, as
``BackendUnavailable``). Renew is the same ``gets``/``cas`` on a live lease
with the same ``lease_id``.

Release without a compare-and-delete. memcached's ``delete`` takes no CAS
unique, so "delete if it is still my lease" would be a read, then a delete
that may remove a lease another claim stored in between. Instead release,
revoke (``delete_by_instance``) and purge (``delete_expired``) ``cas`` the
item they read to a *tombstone*: a value that blocks nothing, lists nothing
and is dropped by memcached after ``TOMBSTONE_TTL`` seconds. The ``cas``
fails if anything was written since the read, and the loop reads again, so
only the exact lease that was checked is ever removed. Claims treat a
tombstone like an absent key (and replace it with ``cas``).

Indexes. memcached cannot scan, so listing, revoke and purge go through
CAS-kept lists (``index.py``): the registry of hosts, each host's leased
ports (split into ``PORT_BUCKETS`` items by port) and each instance's
(host, port) pairs. A claim or renew makes sure all three list its lease,
until at least its item's ``reclaim_at``, *before* it stores the item, so a
stored lease is always found; entries are written with ``LIST_SLACK`` to
spare, so a busy port's claims and heartbeats rewrite no index, they only
read them. Entries are hints: readers always check the item (a port's lease
may belong to another instance by now, or be a tombstone). Release, revoke
and purge leave entries in place (removing one could race a claim that
found it present and is about to store its item); entries lapse with their
``reclaim_at``.

Expiry. Liveness is decided only by comparing ``expires_at`` with the
caller's ``now``, never by memcached. The item's memcached TTL comes from the
wall clock, as ``expires_at`` minus now (at most ``MAX_TTL``, so a skewed or
fake clock cannot pin memory for years) plus ``expired_retention``: with the
service on the system clock an item always outlives its lease, and an
expired one stays for ``delete_expired`` to count. A lease whose
``expires_at`` lies more than ``MAX_TTL`` past the wall clock may vanish
early; the service never writes one (holds last a token's TTL, at most
``MAX_TTL``, connections at most a day).

Durability. memcached keeps everything in memory: a restart, or an eviction
under memory pressure, loses leases and reservations (a lost lease frees its
port early; a lost reservation lets ``allocate_port`` hand the port out
again). Give memcached memory to spare, and prefer the database backend
where a port must never be handed out twice across a cache restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError

from console_auth.application import MAX_TTL
from console_auth.domain import BackendUnavailable, InvalidRequest
from console_auth.domain.leases import PortLease
from console_auth.domain.model import invalid_request

from .client import MemcachedClient
from .index import HOST_REGISTRY, CasIndex, Entry, IndexKind, expiry
from .repository import (
    DEFAULT_PREFIX,
    DEFAULT_RETENTION,
    HOST_BUCKETS,
    KEY_PREFIX_SHAPE,
    LIST_SLACK,
)

logger = logging.getLogger(__name__)

VALUE_VERSION: Final = 1
"""The lease and reservation value format; a reader refuses any other."""
CLAIM_ATTEMPTS: Final = 16
"""Reads of a contended port before giving up, as in the SQL adapter."""
TOMBSTONE_TTL: Final = 60
"""Seconds a released lease's tombstone lingers before memcached drops it."""
PORT_BUCKETS: Final = 16
"""Items per host's port index (``port % PORT_BUCKETS``): a host may lease
thousands of ports, and one item is rewritten whole."""
GET_MANY_CHUNK: Final = 500
"""Keys per ``get_many``: a port range may span 65535 of them."""

_TOMBSTONE: Final = json.dumps({"v": VALUE_VERSION, "lease": None}, separators=(",", ":")).encode(
    "ascii"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_REMAINING_S: Final = MAX_TTL.total_seconds()


def _port(value: object) -> bool:
    return type(value) is int and 1 <= value <= 65535


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


PORT_INDEX: Final = IndexKind(
    "port lease index",  # [port, reclaim_at]
    lambda e: len(e) >= 2 and _port(e[0]) and type(e[1]) is int,
)
INSTANCE_PORT_INDEX: Final = IndexKind(
    "instance port lease index",  # [host, reclaim_at, port]
    lambda e: len(e) >= 3 and _text(e[0]) and type(e[1]) is int and _port(e[2]),
)


def _check_prefix(key_prefix: object) -> str:
    if not isinstance(key_prefix, str) or KEY_PREFIX_SHAPE.fullmatch(key_prefix) is None:
        raise InvalidRequest(f"memcached key prefix must match {KEY_PREFIX_SHAPE.pattern}")
    return key_prefix


def _digest(host: str) -> int:
    """128 bits of the host's SHA-256 (the connection repository's rule)."""
    return int.from_bytes(hashlib.sha256(host.encode("utf-8")).digest()[:16], "big")


class MemcachedPortLeaseRepository:
    """``PortLeaseRepository`` on memcached; safe for threads (it holds only
    the client, whose pools give each call its own connection)."""

    def __init__(
        self,
        client: MemcachedClient,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        expired_retention: int = DEFAULT_RETENTION,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = _check_prefix(key_prefix)
        if type(expired_retention) is not int or not 1 <= expired_retention <= _MAX_REMAINING_S:
            raise InvalidRequest("expired retention must be 1 to 2592000 seconds")
        self._client = client
        self._retention = expired_retention
        self._wall = wall_clock
        self._registry = CasIndex(client, HOST_REGISTRY, wall_clock)
        self._ports = CasIndex(client, PORT_INDEX, wall_clock)
        self._instances = CasIndex(client, INSTANCE_PORT_INDEX, wall_clock)

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def lease_key(self, host: str, port: int) -> str:
        return f"{self._prefix}:l:{_digest(host):032x}:{port}"

    def port_index_key(self, host: str, port: int) -> str:
        """The bucket of ``host``'s port index that lists ``port``."""
        return f"{self._prefix}:lp:{_digest(host):032x}:{port % PORT_BUCKETS}"

    def port_index_keys(self, host: str) -> list[str]:
        prefix = f"{self._prefix}:lp:{_digest(host):032x}:"
        return [f"{prefix}{bucket}" for bucket in range(PORT_BUCKETS)]

    def instance_key(self, instance_uuid: UUID) -> str:
        return f"{self._prefix}:li:{instance_uuid}"

    def registry_key(self, host: str) -> str:
        return f"{self._prefix}:lhosts:{_digest(host) % HOST_BUCKETS}"

    def registry_keys(self) -> list[str]:
        return [f"{self._prefix}:lhosts:{bucket}" for bucket in range(HOST_BUCKETS)]

    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        key = self.lease_key(lease.host, lease.port)
        reclaim_at = self._reclaim_at(lease.expires_at)
        value = _encode(lease)
        listed = False
        for _ in range(CLAIM_ATTEMPTS):
            current, unique = self._gets(key, lease.host, lease.port)
            if current is not None and current.blocks(lease, now):
                return current
            if not listed:
                self._list(lease, reclaim_at)
                listed = True
            expire = expiry(reclaim_at, self._wall())
            if unique is None:
                if self._client.add(key, value, expire):
                    return None
            elif self._client.cas(key, value, unique, expire):
                return None
        raise _contended(lease)

    def renew(self, lease: PortLease, expires_at: datetime, now: datetime) -> PortLease | None:
        key = self.lease_key(lease.host, lease.port)
        reclaim_at = self._reclaim_at(expires_at)
        listed = False
        for _ in range(CLAIM_ATTEMPTS):
            current, unique = self._gets(key, lease.host, lease.port)
            if current is None or current.lease_id != lease.lease_id or not current.is_live(now):
                return None
            assert unique is not None
            renewed = _renewed(current, expires_at)
            if not listed:
                self._list(renewed, reclaim_at)
                listed = True
            if self._client.cas(key, _encode(renewed), unique, expiry(reclaim_at, self._wall())):
                return renewed
        raise _contended(lease)

    def release(self, lease: PortLease) -> bool:
        lease_id = lease.lease_id
        return self._bury(lease.host, lease.port, lambda current: current.lease_id == lease_id)

    def leases(
        self, now: datetime, *, host: str | None = None, instance_uuid: UUID | None = None
    ) -> list[PortLease]:
        if instance_uuid is not None:
            found = self._instance_leases(instance_uuid, host)
        else:
            hosts = [host] if host is not None else self._registered_hosts()
            found = [lease for name in hosts for lease in self._host_leases(name)]
        return sorted(
            (lease for lease in found if lease.is_live(now)),
            key=lambda lease: (lease.host, lease.port),
        )

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        """Tombstone every lease of the instance, expired or not; count them."""
        return sum(
            self._bury(
                lease.host, lease.port, lambda current: current.instance_uuid == instance_uuid
            )
            for lease in self._instance_leases(instance_uuid, None)
        )

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """Tombstone at most ``limit`` leases with ``expires_at <= now``, host
        by host and port by port; count only those this call removed."""
        if limit < 1:
            return 0
        hosts = [host] if host is not None else self._registered_hosts()
        deleted = 0
        for name in hosts:
            for lease in self._host_leases(name):
                if lease.expires_at > now:
                    continue
                deleted += self._bury(
                    lease.host, lease.port, lambda current: current.expires_at <= now
                )
                if deleted >= limit:
                    return deleted
        return deleted

    def _gets(self, key: str, host: str, port: int) -> tuple[PortLease | None, bytes | None]:
        """The port's lease (``None`` for a tombstone) and the CAS unique
        (``None`` when the key is absent)."""
        raw, unique = self._client.gets(key)
        if raw is None:
            return None, None
        return _decode(raw, host, port), unique

    def _bury(self, host: str, port: int, doomed: Callable[[PortLease], bool]) -> bool:
        """Replace the port's lease with a tombstone if ``doomed`` says so of
        the lease read, and only if nothing was written since that read."""
        key = self.lease_key(host, port)
        for _ in range(CLAIM_ATTEMPTS):
            current, unique = self._gets(key, host, port)
            if current is None or not doomed(current):
                return False
            assert unique is not None
            if self._client.cas(key, _TOMBSTONE, unique, TOMBSTONE_TTL):
                return True
        raise BackendUnavailable(
            f"serial port {host}:{port} stayed contended over {CLAIM_ATTEMPTS} reads"
        )

    def _list(self, lease: PortLease, reclaim_at: int) -> None:
        """Make every index list ``lease`` until at least ``reclaim_at``."""
        host, port = lease.host, lease.port
        self._registry.update(
            self.registry_key(host), _cover(lambda e: e[0] == host, [host, reclaim_at])
        )
        self._ports.update(
            self.port_index_key(host, port), _cover(lambda e: e[0] == port, [port, reclaim_at])
        )
        self._instances.update(
            self.instance_key(lease.instance_uuid),
            _cover(lambda e: e[0] == host and e[2] == port, [host, reclaim_at, port]),
        )

    def _registered_hosts(self) -> list[str]:
        return sorted({e[0] for e in self._registry.read_many(self.registry_keys())})

    def _host_leases(self, host: str) -> list[PortLease]:
        """The leases stored on the ports ``host``'s index lists, by port."""
        ports = sorted({e[0] for e in self._ports.read_many(self.port_index_keys(host))})
        return self._read((host, port) for port in ports)

    def _instance_leases(self, instance_uuid: UUID, host: str | None) -> list[PortLease]:
        """The instance's leases, of ``host`` only when given."""
        pairs = sorted(
            {
                (e[0], e[2])
                for e in self._instances.read(self.instance_key(instance_uuid))
                if host is None or e[0] == host
            }
        )
        return [lease for lease in self._read(pairs) if lease.instance_uuid == instance_uuid]

    def _read(self, pairs: Iterable[tuple[str, int]]) -> list[PortLease]:
        """The leases (not tombstones) stored for those (host, port) pairs,
        in their order."""
        keyed = {self.lease_key(host, port): (host, port) for host, port in pairs}
        keys = list(keyed)
        found: list[PortLease] = []
        for start in range(0, len(keys), GET_MANY_CHUNK):
            chunk = keys[start : start + GET_MANY_CHUNK]
            values = self._client.get_many(chunk)
            for key in chunk:
                raw = values.get(key)
                if raw is not None and (lease := _decode(raw, *keyed[key])) is not None:
                    found.append(lease)
        return found

    def _reclaim_at(self, expires_at: datetime) -> int:
        """The unix second after which memcached may drop the item."""
        now = self._wall()
        remaining = min(max((expires_at - _EPOCH).total_seconds() - now, 0.0), _MAX_REMAINING_S)
        return math.ceil(now + remaining) + self._retention


class MemcachedPortReservationRepository:
    """``PortReservationRepository`` on memcached: one item per reserved
    (host, port), created with ``add`` (memcached settles races) and kept
    without a TTL. Not durable: see the module doc."""

    def __init__(
        self,
        client: MemcachedClient,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = _check_prefix(key_prefix)
        self._client = client
        self._wall = wall_clock

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def reservation_key(self, host: str, port: int) -> str:
        return f"{self._host_prefix(host)}{port}"

    def reserve(self, host: str, port: int) -> bool:
        value = {
            "v": VALUE_VERSION,
            "host": host,
            "port": port,
            "reserved_at": math.floor(self._wall()),
        }
        encoded = json.dumps(value, separators=(",", ":")).encode("utf-8")
        return self._client.add(self.reservation_key(host, port), encoded, 0)

    def release(self, host: str, port: int) -> bool:
        return self._client.delete(self.reservation_key(host, port))

    def reserved(self, host: str, first: int, last: int) -> set[int]:
        """Whether each key of the range exists, ``GET_MANY_CHUNK`` keys per
        round trip (per server); values are not read."""
        prefix = self._host_prefix(host)
        ports = range(max(first, 1), min(last, 65535) + 1)
        found: set[int] = set()
        for start in range(0, len(ports), GET_MANY_CHUNK):
            keys = {f"{prefix}{port}": port for port in ports[start : start + GET_MANY_CHUNK]}
            found.update(keys[key] for key in self._client.get_many(list(keys)) if key in keys)
        return found

    def _host_prefix(self, host: str) -> str:
        return f"{self._prefix}:r:{_digest(host):032x}:"


def _cover(matches: Callable[[Entry], bool], entry: Entry) -> Callable[[list[Entry]], list[Entry]]:
    """Keep ``entry`` listed until at least its ``reclaim_at`` (``entry[1]``);
    usually it already is, and nothing is written. A write adds
    ``LIST_SLACK``, so the next hour's claims and heartbeats find it covered."""
    reclaim_at = entry[1]

    def change(entries: list[Entry]) -> list[Entry]:
        if any(matches(e) and e[1] >= reclaim_at for e in entries):
            return entries
        written = [entry[0], reclaim_at + LIST_SLACK, *entry[2:]]
        return [e for e in entries if not matches(e)] + [written]

    return change


def _renewed(current: PortLease, expires_at: datetime) -> PortLease:
    """``current`` with the new expiry, validated: an item that could not be
    read back would make its port unusable until memcached drops it."""
    try:
        return PortLease.model_validate({**dict(current), "expires_at": expires_at})
    except ValidationError as exc:
        raise InvalidRequest(str(invalid_request(exc))) from None


def _encode(lease: PortLease) -> bytes:
    value = {"v": VALUE_VERSION, "lease": lease.model_dump(mode="json")}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode(raw: bytes, host: str, port: int) -> PortLease | None:
    """An item back into its lease (``None``: a tombstone), or a typed error."""
    try:
        value: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _unreadable("not JSON") from None
    except RecursionError:
        raise _unreadable("nested too deeply") from None
    if not isinstance(value, dict) or "lease" not in value or type(value.get("v")) is not int:
        raise _unreadable("not a versioned lease object")
    if value["v"] != VALUE_VERSION:
        raise _unreadable(f"value format {value['v']} is not {VALUE_VERSION}")
    data = value["lease"]
    if data is None:
        return None
    try:
        lease = PortLease.model_validate(data)
    except ValidationError as exc:
        raise _unreadable(str(invalid_request(exc))) from None
    if lease.host != host or lease.port != port:
        raise _unreadable("it holds another port's lease than its key")
    return lease


def _unreadable(problem: str) -> BackendUnavailable:
    """The store answered with something this release cannot use: a store
    fault for the caller, never a free port."""
    logger.error("unreadable port lease item in memcached: %s", problem)
    return BackendUnavailable(f"stored port lease is unreadable: {problem}")


def _contended(lease: PortLease) -> BackendUnavailable:
    return BackendUnavailable(
        f"serial port {lease.host}:{lease.port} stayed contended over {CLAIM_ATTEMPTS} reads"
    )
