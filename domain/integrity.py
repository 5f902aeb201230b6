"""Tamper evidence for stored connections: a MAC keyed by the clean token.

The store holds only the token's hash, so whoever can write to it (a stolen
database password, a shared memcached, bit rot) can change where a token
leads but cannot compute the MAC of the changed row. ``validate`` holds the
token, so it can check the MAC of every row it is about to hand a proxy.
"""

from __future__ import annotations

import hmac
import json
from typing import Final

from .model import ConsoleConnection
from .types import to_microseconds

MAC_SCHEME: Final = "console-auth/connection-mac/1"
"""Names the encoding below; a change to it is a new scheme, never an edit."""

_NONE: Final = "\x00"
"""An absent text: no validated text holds NUL (they are printable)."""
_extra_json: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, sort_keys=True, allow_nan=False
).encode


def connection_mac(token: str, connection: ConsoleConnection) -> str:
    """HMAC-SHA256, hex, of every field a proxy acts on, keyed by ``token``.

    The token hash is left out: the key already binds the MAC to the token.
    """
    return hmac.digest(token.encode("ascii"), _canonical(connection), "sha256").hex()


def mac_matches(token: str, connection: ConsoleConnection, mac: str) -> bool:
    """Constant-time comparison, so a forger learns nothing from timing."""
    return hmac.compare_digest(connection_mac(token, connection), mac)


def _canonical(connection: ConsoleConnection) -> bytes:
    """One line per field in a fixed order, the same bytes on every backend
    and release for the same meaning. Unambiguous over validated
    connections: no field's text holds a newline (texts are printable, the
    extra options JSON escapes control characters), an absent text is NUL,
    which no printable text is, and an absent number is empty, which no
    number is. Times are integer microseconds, so no zone or precision enters.
    """
    options = connection.options
    issued_at = connection.issued_at
    fields = (
        MAC_SCHEME,
        connection.instance_uuid.hex,
        connection.host,
        str(connection.port),
        connection.console_type.value,
        _NONE if options.internal_access_path is None else options.internal_access_path,
        "1" if options.use_tls else "0",
        "" if options.tls_port is None else str(options.tls_port),
        _NONE if options.mode is None else options.mode.value,
        _extra_json(options.extra) if options.extra else "{}",  # the same bytes, sooner
        _NONE if connection.access_url_base is None else connection.access_url_base,
        str(to_microseconds(connection.expires_at)),
        "" if issued_at is None else str(to_microseconds(issued_at)),
    )
    return "\n".join(fields).encode()
