"""``ConsoleConnectionRepository`` on memcached: the legacy path, kept for one
deprecation cycle. Keys and TTLs are in ``keys.py``, the CAS-kept indexes in ``index.py``;
why they are laid out so: ARCHITECTURE.md, "Memcached is the legacy path, done safely"."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Final
from uuid import UUID

from pydantic import ValidationError

from console_auth.application.ports import StoredConnection
from console_auth.application.service import in_batches, is_listed, purge_in_batches
from console_auth.domain import (
    BackendUnavailable,
    ConsoleConnection,
    InvalidRequest,
    UnsupportedVersion,
)
from console_auth.domain import versions as _versions
from console_auth.domain.types import from_microseconds, to_microseconds

from .client import MemcachedClient
from .index import SKEW, Entry, cas_write, indexes, loads, unreadable
from .keys import DEFAULT_PREFIX, DEFAULT_RETENTION, REVOCATION_EXPIRY_S, Keys, expiry

logger = logging.getLogger(__name__)

LIST_SLACK: Final = 3600
"""Seconds added to host and registry entries beyond what they must cover."""


def _fast_prefix() -> bytes:
    """The bytes every item this release writes starts with, up to its data."""
    version = f"{_versions.CURRENT[0]}.{_versions.CURRENT[1]}"
    head = {_versions.NAME_KEY: _versions.NAME, _versions.VERSION_KEY: version}
    text = json.dumps({**head, _versions.DATA_KEY: 0}, separators=(",", ":"))
    return text.removesuffix("0}").encode("ascii")


_FAST_PREFIX: Final = _fast_prefix()
_FAST_START: Final = len(_FAST_PREFIX)
_validate_json: Final = ConsoleConnection.__pydantic_validator__.validate_json
"""``ConsoleConnection.model_validate_json`` without its Python wrapper."""
_WHAT: Final = "stored console connection"


@dataclasses.dataclass
class MemcachedStats:
    """Counters for an operator's metrics; safe to read from any thread."""

    evicted: int = 0
    """Connections an index walk found gone before their TTL: evicted."""


class MemcachedConsoleConnectionRepository(Keys):
    """Safe for threads: the client's pools give each call its own connection."""

    def __init__(
        self,
        client: MemcachedClient,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        expired_retention: int = DEFAULT_RETENTION,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(key_prefix, expired_retention)
        self._client = client
        self._wall = wall_clock
        self._instances, self._hosts, self._registry = indexes(client, wall_clock)
        self._lock = threading.Lock()
        self.stats = MemcachedStats()

    def add(self, connection: ConsoleConnection) -> None:
        """The item, then the indexes; an index write that fails deletes the item
        again, so no token is handed out that revoke cannot reach."""
        now = self._wall()
        reclaim_at = self.reclaim_time(connection.expires_at, now)
        token_hash = connection.token_hash
        value = json.dumps(
            connection.to_primitive(), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        if not self._client.add(self.connection_key(token_hash), value, expiry(reclaim_at, now)):
            raise InvalidRequest("a connection with this token hash is already stored")
        expires_us = to_microseconds(connection.expires_at)
        instance_entry: Entry = [token_hash, reclaim_at, expires_us, connection.host]
        instance_key = self.instance_key(connection.instance_uuid)
        try:
            self._instances.update(
                instance_key, lambda entries: [*_without({token_hash})(entries), instance_entry]
            )
            self._hosts.update(
                self.host_key(connection.host, connection.instance_uuid),
                _cover(str(connection.instance_uuid), reclaim_at),
            )
            self._registry.update(
                self.registry_key(connection.host), _cover(connection.host, reclaim_at)
            )
        except BaseException:
            try:  # best effort: the caller sees the original error either way
                self._client.delete(self.connection_key(token_hash))
                self._instances.update(instance_key, _without({token_hash}))
            except BackendUnavailable:
                logger.warning(
                    "could not undo a failed add (token hash %.8s); its item expires by TTL, "
                    "and its token was never handed out",
                    token_hash,
                )
            raise

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        raw = self._client.get(self._connection_prefix + token_hash)
        return None if raw is None else _decode(token_hash, raw)

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        """The record first, so a revoke cut short still ends the sessions; then
        the instance index is emptied with CAS (a token added meanwhile is
        deleted in the next round), and the instance leaves its hosts' indexes
        (best effort: a leftover entry costs a purge one ``get`` until it lapses)."""
        at_us = to_microseconds(revoked_at)
        record, value = self.revocation_key(instance_uuid), str(at_us).encode("ascii")
        existed: dict[str, bool] = {}
        hosts: set[str] = set()

        def later(raw: bytes | None) -> tuple[bytes, int] | None:
            if raw is not None and raw.isdigit() and int(raw) >= at_us:
                return None  # the later time is kept (racing revokes, skewed clocks)
            return value, REVOCATION_EXPIRY_S  # earlier, gone or unreadable: ours replaces it

        def revoke(entries: list[Entry]) -> list[Entry]:
            for entry in entries:
                hosts.add(entry[3])
                if entry[0] not in existed:
                    existed[entry[0]] = self._delete_listed(entry)
            return []

        if not self._client.add(record, value, REVOCATION_EXPIRY_S):  # the first: one round trip
            cas_write(self._client, record, later, "console revocation record")
        self._instances.update(self.instance_key(instance_uuid), revoke)
        gone = _without({str(instance_uuid)})
        for host in sorted(hosts):
            try:
                self._hosts.update(self.host_key(host, instance_uuid), gone)
            except BackendUnavailable as exc:
                logger.warning("a revoked instance stays listed in a host index: %s", exc)
        return sum(existed.values())

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        by_key = {self.revocation_key(u): u for u in instance_uuids}
        found: dict[UUID, datetime] = {}
        for key, raw in self._client.get_many(list(by_key)).items():
            try:
                found[by_key[key]] = from_microseconds(int(raw))
            except (ValueError, OverflowError):
                raise BackendUnavailable(
                    f"stored revocation of instance {by_key[key]} is unreadable"
                ) from None
        return found

    def delete_revocations(self, before: datetime) -> int:
        """Nothing to do: the records expire by themselves."""
        return 0

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        return purge_in_batches(self, now, host, batch_size)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """Walk the instances of ``host`` (or of every host) in a fixed order until
        ``limit`` items really went: the service loops while a batch is full."""
        if limit < 1:
            return 0
        now_us = to_microseconds(now)
        hosts = [[host]] if host is not None else self._registry.read(*self.registry_keys())
        deleted = 0
        for name in sorted({e[0] for e in hosts}):
            for instance in sorted({e[0] for e in self._hosts.read(*self.host_keys(name))}):
                deleted += self._purge_instance(instance, name, now_us, limit - deleted)
                if deleted >= limit:
                    return deleted
        return deleted

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        """Each instance's index, in batches of its due entries."""
        now_us = to_microseconds(now)
        return sum(
            in_batches(functools.partial(self._purge_instance, i, None, now_us), batch_size)
            for i in sorted({str(instance_uuid) for instance_uuid in instance_uuids})
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
        """One instance's, through its index: memcached cannot page through the rest."""
        if instance_uuid is None:
            raise InvalidRequest(
                "listing console tokens of a host or of every instance, or finding one by a "
                'hash prefix, needs the database backend (console_tokens_backend = "database"): '
                "memcached has no index to page through"
            )
        indexed = self._instances.read(self.instance_key(instance_uuid))
        listed = sorted(e[0] for e in indexed if after is None or e[0] > after)
        page: list[StoredConnection] = []
        where = (after, instance_uuid, host, live_at)
        for start in range(0, len(listed), limit):  # an index may list evicted items
            stored = self._stored(listed[start : start + limit])
            page += [StoredConnection(c) for c in stored if is_listed(c, *where)]
            if len(page) >= limit:
                break
        return page[:limit]

    def _stored(self, token_hashes: list[str]) -> list[ConsoleConnection]:
        """The connections still stored under these hashes, in their order."""
        keys = {self.connection_key(h): h for h in token_hashes}
        found = self._client.get_many(list(keys))
        return [_decode(h, found[key]) for key, h in keys.items() if key in found]

    def delete_by_hash(self, token_hash: str) -> int:
        """The item, then its entry in its instance's index."""
        connection = self.get_by_hash(token_hash)
        if connection is None or not self._client.delete(self.connection_key(token_hash)):
            return 0
        self._instances.update(self.instance_key(connection.instance_uuid), _without({token_hash}))
        return 1

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        return None

    def _purge_instance(self, instance: str, host: str | None, now_us: int, budget: int) -> int:
        key = self.instance_key(instance)
        due = sorted(
            (e for e in self._instances.read(key) if host in (None, e[3]) and e[2] <= now_us),
            key=lambda e: (e[2], e[0]),
        )
        walked: set[str] = set()
        deleted = 0
        for entry in due:
            if deleted >= budget:
                break
            walked.add(entry[0])
            deleted += self._delete_listed(entry)
        if walked:
            self._instances.update(key, _without(walked))
        return deleted

    def _delete_listed(self, entry: Entry) -> bool:
        """Delete the item an index entry lists; whether it was there."""
        token_hash, reclaim_at = entry[0], entry[1]
        if self._client.delete(self.connection_key(token_hash)):
            return True
        if self._wall() < reclaim_at - SKEW:
            with self._lock:
                self.stats.evicted += 1
            logger.warning(
                "console connection was evicted by memcached before its TTL (token hash %.8s)",
                token_hash,
            )
        return False


def _without(ids: set[str]) -> Callable[[list[Entry]], list[Entry]]:
    return lambda entries: [e for e in entries if e[0] not in ids]


def _cover(name: str, reclaim_at: int) -> Callable[[list[Entry]], list[Entry]]:
    """Keep ``name`` listed until ``reclaim_at``, with ``LIST_SLACK`` so most writes are none."""

    def change(entries: list[Entry]) -> list[Entry]:
        if any(e[0] == name and e[1] >= reclaim_at for e in entries):
            return entries
        return [e for e in entries if e[0] != name] + [[name, reclaim_at + LIST_SLACK]]

    return change


def _decode(token_hash: str, raw: bytes) -> ConsoleConnection:
    """An item back into a connection, or a typed error. This release's exact form
    is validated straight from its bytes; anything else goes through ``from_primitive``."""
    connection: ConsoleConnection | None = None
    if raw.startswith(_FAST_PREFIX) and raw.endswith(b"}"):
        try:
            connection = _validate_json(raw[_FAST_START:-1])
        except ValidationError:
            connection = None
    if connection is None:
        connection = _decode_primitive(token_hash, raw)
    if connection.token_hash != token_hash:
        raise unreadable(_WHAT, "it holds another token hash than its key", token_hash)
    return connection


def _decode_primitive(token_hash: str, raw: bytes) -> ConsoleConnection:
    primitive = loads(raw, _WHAT, token_hash)
    if not isinstance(primitive, dict):
        raise unreadable(_WHAT, "not a JSON object", token_hash)
    try:
        return ConsoleConnection.from_primitive(primitive)
    except UnsupportedVersion:
        logger.error(
            "console connection in memcached has a version this release cannot read "
            "(token hash %.8s)",
            token_hash,
        )
        raise
    except InvalidRequest as exc:  # names fields, never values
        raise unreadable(_WHAT, str(exc), token_hash) from None
