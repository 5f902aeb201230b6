"""Tamper evidence for stored connections: a MAC keyed by the clean token.

The store holds only the token's hash, so whoever can write to it (a stolen
database password, a shared memcached, bit rot) can change where a token
leads but cannot compute the MAC of the changed row. ``validate`` holds the
token, so it can check the MAC of every row it is about to hand a proxy.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Final

from .model import ConsoleConnection

MAC_SCHEME: Final = "console-auth/connection-mac/1"
"""Names the encoding below; a change to it is a new scheme, never an edit."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_encode: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, sort_keys=True, allow_nan=False
).encode


def connection_mac(token: str, connection: ConsoleConnection) -> str:
    """HMAC-SHA256, hex, of every field a proxy acts on, keyed by ``token``.

    The encoding is a JSON array of plain values in a fixed order, times as
    integer microseconds, so every backend and release computes the same
    bytes for the same meaning; the token hash is left out, since the key
    already binds the MAC to the token.
    """
    options = connection.options
    issued_at = connection.issued_at
    canonical = _encode(
        [
            MAC_SCHEME,
            str(connection.instance_uuid),
            connection.host,
            connection.port,
            connection.console_type.value,
            options.internal_access_path,
            options.use_tls,
            options.tls_port,
            None if options.mode is None else options.mode.value,
            options.extra,
            connection.access_url_base,
            (connection.expires_at - _EPOCH) // _MICROSECOND,
            None if issued_at is None else (issued_at - _EPOCH) // _MICROSECOND,
        ]
    )
    return hmac.digest(token.encode("ascii"), canonical.encode("ascii"), "sha256").hex()


def mac_matches(token: str, connection: ConsoleConnection, mac: str) -> bool:
    """Constant-time comparison, so a forger learns nothing from timing."""
    return hmac.compare_digest(connection_mac(token, connection), mac)
