"""Index items: the lists memcached cannot keep for us, each a JSON array of entries
``[id, reclaim_at, ...]`` kept with gets/cas and retried with jitter, so concurrent writers
never drop each other's entries; every write prunes lapsed entries and sets a TTL covering the
longest (ARCHITECTURE.md, "Memcached is the legacy path, done safely")."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, Final

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
_EMPTY_EXPIRY: Final = 60
"""An emptied index is written, not deleted (``delete`` has no CAS), and lingers this long."""
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _int(value: object) -> bool:
    return type(value) is int


def _str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def _hash(value: object) -> bool:
    return isinstance(value, str) and is_token_hash(value)


def unreadable(what: str, problem: str, token_hash: str = "") -> BackendUnavailable:
    """A store fault for the caller, not an unknown token; only the log names a hash prefix."""
    about = f" (token hash {token_hash[:8]})" if token_hash else ""
    logger.error("unreadable %s%s: %s", what, about, problem)
    return BackendUnavailable(f"{what} is unreadable: {problem}")


def loads(raw: bytes, what: str, token_hash: str = "") -> Any:
    """JSON, or ``unreadable``."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise unreadable(what, "not JSON", token_hash) from None
    except RecursionError:
        raise unreadable(what, "nested too deeply", token_hash) from None


def cas_write(
    client: MemcachedClient,
    key: str,
    new: Callable[[bytes | None], tuple[bytes, int] | None],
    what: str,
) -> None:
    """Write the value and expiry ``new`` makes of the stored value (``None``: keep it) until a
    CAS write wins; ``new`` may run several times, so it must be safe to repeat."""
    for attempt in range(CAS_ATTEMPTS):
        raw, unique = client.gets(key)
        wanted = new(raw)
        if wanted is None:
            return
        value, expire = wanted
        if client.cas(key, value, unique, expire) if unique else client.add(key, value, expire):
            return
        time.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))  # noqa: S311
    logger.error("gave up updating a %s after %d races", what, CAS_ATTEMPTS)
    raise BackendUnavailable(
        f"{what} kept changing under concurrent writers; gave up after {CAS_ATTEMPTS} attempts"
    )


@dataclasses.dataclass(frozen=True)
class CasIndex:
    """Read and update index items of one kind."""

    client: MemcachedClient
    wall: WallClock
    name: str
    check: Callable[[Entry], bool]

    def read(self, *keys: str) -> list[Entry]:
        """The live entries of these indexes (a missing one is empty), one round trip a server."""
        found = self.client.get_many(keys)
        now = self.wall()
        return [e for key in keys for e in self._decode(found.get(key)) if e[1] + SKEW >= now]

    def update(self, key: str, change: Callable[[list[Entry]], list[Entry]]) -> None:
        """``cas_write`` of what ``change`` (safe to repeat) makes of the live entries."""

        def new(raw: bytes | None) -> tuple[bytes, int] | None:
            now = self.wall()
            stored = self._decode(raw)
            entries = change([e for e in stored if e[1] + SKEW >= now])
            if entries == stored:
                return None
            expire = expiry(max(e[1] for e in entries) + SKEW, now) if entries else _EMPTY_EXPIRY
            return json.dumps(entries, separators=(",", ":")).encode("utf-8"), expire

        cas_write(self.client, key, new, self.name)

    def _decode(self, raw: bytes | None) -> list[Entry]:
        if raw is None:
            return []
        what = f"{self.name} in memcached"
        entries = loads(raw, what)
        if not isinstance(entries, list):
            raise unreadable(what, "not a JSON array")
        for entry in entries:
            if not isinstance(entry, list) or not self.check(entry):
                raise unreadable(what, "an entry has the wrong shape")
        return entries


def indexes(client: MemcachedClient, wall_clock: WallClock) -> tuple[CasIndex, CasIndex, CasIndex]:
    """The instance index, the host index and the host registry (their entries: keys.py), each
    checking the fields its readers use, the first ones; later ones are carried through."""
    index = functools.partial(CasIndex, client, wall_clock)
    return (
        index(
            "console instance index",
            lambda e: len(e) >= 4 and _hash(e[0]) and _int(e[1]) and _int(e[2]) and _str(e[3]),
        ),
        index("console host index", lambda e: len(e) >= 2 and _uuid(e[0]) and _int(e[1])),
        index("console host registry", lambda e: len(e) >= 2 and _str(e[0]) and _int(e[1])),
    )
