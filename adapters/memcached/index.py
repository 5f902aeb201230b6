"""Index items: the lists memcached cannot keep for us, each a JSON array of entries
``[id, reclaim_at, ...]`` kept with gets/cas and retried with jitter, so concurrent writers
never drop each other's entries; every write prunes lapsed entries and sets a TTL covering the
longest (ARCHITECTURE.md, "Memcached is the legacy path, done safely")."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from console_auth.domain import BackendUnavailable
from console_auth.domain.tokens import is_token_hash

from .client import MemcachedClient
from .keys import expiry

logger = logging.getLogger(__name__)

Entry = list[Any]
WallClock = Callable[[], float]

SKEW: Final = 60
"""Seconds of slack for clocks of clients and servers that disagree."""
CAS_ATTEMPTS: Final = 100
"""Races lost in a row before ``BackendUnavailable``: seconds of contention, a fault, not load."""
_MAX_BACKOFF: Final = 0.02
_EMPTY: Final = b"[]"
_EMPTY_EXPIRY: Final = 60
"""An emptied index is written, not deleted (``delete`` has no CAS), and lingers this long."""


class IndexKind(NamedTuple):
    """An index's name for messages and a check of the fields readers use."""

    name: str
    check: Callable[[Entry], bool]


_UUID_SHAPE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _int(value: object) -> bool:
    return type(value) is int


def _str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_SHAPE.fullmatch(value) is not None


INSTANCE_INDEX: Final = IndexKind(
    "instance index",  # [token_hash, reclaim_at, expires_at_us, host]
    lambda e: len(e) >= 4 and is_token_hash(e[0]) and _int(e[1]) and _int(e[2]) and _str(e[3]),
)
HOST_INDEX: Final = IndexKind(
    "host index",  # [instance_uuid, reclaim_at]
    lambda e: len(e) >= 2 and _uuid(e[0]) and _int(e[1]),
)
HOST_REGISTRY: Final = IndexKind(
    "host registry",  # [host, reclaim_at]
    lambda e: len(e) >= 2 and _str(e[0]) and _int(e[1]),
)


class CasIndex:
    """Read and update index items of one kind."""

    def __init__(self, client: MemcachedClient, kind: IndexKind, wall_clock: WallClock) -> None:
        self._client = client
        self._kind = kind
        self._wall = wall_clock

    def read(self, key: str) -> list[Entry]:
        """The live entries (a missing index is an empty one)."""
        return self._live(self._decode(self._client.get(key)), self._wall())

    def read_many(self, keys: list[str]) -> list[Entry]:
        """The live entries of several indexes, in one round trip per server."""
        found = self._client.get_many(keys)
        now = self._wall()
        return [e for key in keys for e in self._live(self._decode(found.get(key)), now)]

    def update(self, key: str, change: Callable[[list[Entry]], list[Entry]]) -> None:
        """Apply ``change`` to the live entries until a CAS write wins; ``change``
        may run several times, so it must be safe to repeat."""
        for attempt in range(CAS_ATTEMPTS):
            now = self._wall()
            raw, unique = self._client.gets(key)
            stored = self._decode(raw)
            live = self._live(stored, now)
            entries = change(list(live))
            if entries == stored:
                return
            if raw is None and not entries:
                return
            if raw is None:
                written = self._client.add(key, self._encode(entries), self._expiry(entries, now))
            else:
                assert unique is not None
                value = self._encode(entries) if entries else _EMPTY
                expire = self._expiry(entries, now) if entries else _EMPTY_EXPIRY
                written = bool(self._client.cas(key, value, unique, expire))
            if written:
                return
            time.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.0005 * 2**attempt)))  # noqa: S311
        logger.error("gave up updating a console %s after %d races", self._kind.name, attempt + 1)
        raise BackendUnavailable(
            f"console {self._kind.name} kept changing under concurrent writers; "
            f"gave up after {CAS_ATTEMPTS} attempts"
        )

    @staticmethod
    def _live(entries: list[Entry], now: float) -> list[Entry]:
        return [e for e in entries if e[1] + SKEW >= now]

    @staticmethod
    def _expiry(entries: list[Entry], now: float) -> int:
        return expiry(max(e[1] for e in entries) + SKEW, now)

    @staticmethod
    def _encode(entries: list[Entry]) -> bytes:
        return json.dumps(entries, separators=(",", ":")).encode("utf-8")

    def _decode(self, raw: bytes | None) -> list[Entry]:
        if raw is None:
            return []
        try:
            entries = json.loads(raw)
        except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
            raise self._unreadable("not JSON") from None
        except RecursionError:
            raise self._unreadable("nested too deeply") from None
        if not isinstance(entries, list):
            raise self._unreadable("not a JSON array")
        for entry in entries:
            if not isinstance(entry, list) or not self._kind.check(entry):
                raise self._unreadable("an entry has the wrong shape")
        return entries

    def _unreadable(self, problem: str) -> BackendUnavailable:
        logger.error("unreadable console %s in memcached: %s", self._kind.name, problem)
        return BackendUnavailable(
            f"console {self._kind.name} in memcached is unreadable: {problem}"
        )
