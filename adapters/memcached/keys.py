"""Every memcached key this adapter writes, and how long each item lives.

Keys (``<prefix>`` is the configured ``key_prefix``, ``<n>`` a bucket below ``HOST_BUCKETS``)::

    <prefix>:c:<token_hash>             the connection: its versioned primitive as JSON
    <prefix>:i:<instance_uuid>          instance index  [[hash, reclaim_at, expires_at_us, host]]
    <prefix>:h:<sha256(host)[:32]>:<n>  host index      [[instance_uuid, reclaim_at], ...]
    <prefix>:hosts:<n>                  host registry   [[host, reclaim_at], ...]
    <prefix>:r:<instance_uuid>          revocation      microseconds since the epoch, ASCII

An index item lives as long as its longest entry's ``reclaim_at`` plus ``index.SKEW``.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Final
from uuid import UUID

from console_auth.application import REVOCATION_RETENTION
from console_auth.domain import InvalidRequest
from console_auth.domain.types import EPOCH, MAX_TTL_SECONDS

DEFAULT_PREFIX: Final = "console_auth"
KEY_PREFIX_SHAPE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
"""Keeps every key printable, space-free and under memcached's 250 bytes."""
HOST_BUCKETS: Final = 16
"""Items per host index and in the registry; changing it moves their keys (purge
would miss the old ones until they lapse)."""

RELATIVE_EXPIRY_LIMIT: Final = 2_592_000
"""memcached reads an expiry above 30 days as an absolute unix time."""
DEFAULT_RETENTION: Final = 3600
"""Seconds an expired connection stays readable (and purgeable) by default."""
REVOCATION_EXPIRY_S: Final = int(REVOCATION_RETENTION.total_seconds())


def expiry(reclaim_at: int, now: float) -> int:
    """memcached's ``exptime`` for an item to drop at ``reclaim_at``: relative
    seconds while they fit under 30 days, the absolute time beyond."""
    relative = reclaim_at - math.floor(now)
    return max(relative, 1) if relative <= RELATIVE_EXPIRY_LIMIT else reclaim_at


def _digest(host: str) -> int:
    """128 bits of the host's SHA-256: a host name may be longer than a key may be."""
    return int.from_bytes(hashlib.sha256(host.encode("utf-8")).digest()[:16], "big")


def _buckets(prefix: str) -> list[str]:
    return [f"{prefix}:{bucket}" for bucket in range(HOST_BUCKETS)]


class Keys:
    """The keys under one ``key_prefix`` and how long their items live; ``InvalidRequest``
    for a bad prefix or a retention that is not a whole number of seconds memcached keeps."""

    def __init__(self, key_prefix: object, expired_retention: object) -> None:
        if not isinstance(key_prefix, str) or KEY_PREFIX_SHAPE.fullmatch(key_prefix) is None:
            raise InvalidRequest(f"memcached key prefix must match {KEY_PREFIX_SHAPE.pattern}")
        if type(expired_retention) is not int or not 1 <= expired_retention <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"expired retention must be 1 to {MAX_TTL_SECONDS} seconds")
        self.key_prefix = key_prefix
        self._retention = expired_retention
        self._connection_prefix = f"{key_prefix}:c:"  # validation concatenates, with no call

    def reclaim_time(self, expires_at: datetime, now: float) -> int:
        """The unix second after which memcached may drop an item that expires
        at ``expires_at`` and is kept the retention beyond."""
        # at most MAX_TTL ahead, so a skewed or fake clock cannot pin memory for years
        remaining = min(max((expires_at - EPOCH).total_seconds() - now, 0.0), MAX_TTL_SECONDS)
        return math.ceil(now + remaining) + self._retention

    def connection_key(self, token_hash: str) -> str:
        return self._connection_prefix + token_hash

    def instance_key(self, instance_uuid: UUID | str) -> str:
        return f"{self.key_prefix}:i:{instance_uuid}"

    def revocation_key(self, instance_uuid: UUID) -> str:
        return f"{self.key_prefix}:r:{instance_uuid}"

    def host_key(self, host: str, instance_uuid: UUID) -> str:
        """The host-index bucket that lists ``instance_uuid`` on ``host``."""
        return f"{self.key_prefix}:h:{_digest(host):032x}:{instance_uuid.int % HOST_BUCKETS}"

    def host_keys(self, host: str) -> list[str]:
        """Every bucket of ``host``'s index."""
        return _buckets(f"{self.key_prefix}:h:{_digest(host):032x}")

    def registry_key(self, host: str) -> str:
        """The registry bucket that lists ``host``."""
        return f"{self.key_prefix}:hosts:{_digest(host) % HOST_BUCKETS}"

    def registry_keys(self) -> list[str]:
        return _buckets(f"{self.key_prefix}:hosts")
