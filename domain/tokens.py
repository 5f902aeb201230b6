"""Console tokens: how they look and how they are hashed.

Only ``hash_token(token)`` is ever stored; the clean token goes back to the
caller once. Checking the shape first lets a proxy refuse garbage without a
database round trip.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from .errors import InvalidRequest, InvalidToken, InvalidTokenReason

TOKEN_BYTES: Final = 32
"""Entropy per token: 256 bits, twice what Nova's uuid4 tokens carry."""

TOKEN_LENGTH: Final = 43
"""Length of ``TOKEN_BYTES`` in unpadded URL-safe base64."""

_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{%d}" % TOKEN_LENGTH)  # noqa: UP031
_HASH_SHAPE: Final = re.compile(r"[0-9a-f]{64}")


def check_token(token: object) -> str:
    """Return ``token`` as text if it could be a token this library issued.

    Accepts ``bytes`` too, since proxies often hold raw header values.
    """
    if isinstance(token, bytes | bytearray):
        # no decode error: its .object would carry the presented bytes in the chain
        token = token.decode("ascii") if token.isascii() else None
    if not isinstance(token, str) or _TOKEN_SHAPE.fullmatch(token) is None:
        raise InvalidToken(InvalidTokenReason.MALFORMED)
    return token


def hash_token(token: str) -> str:
    """SHA-256 of the token, hex: the only form that reaches storage.

    No salt: a token is 256 random bits, so a dictionary attack has nothing to
    work with, and an unsalted hash keeps lookup a single indexed equality.
    """
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def is_token_hash(value: str) -> bool:
    """Whether ``value`` has the shape of ``hash_token``'s output."""
    return _HASH_SHAPE.fullmatch(value) is not None


HASH_PREFIX_LENGTH: Final = 12
"""Hex digits of a token hash an operator sees and gives back (``list``,
``revoke --token-hash``): 48 bits tell live tokens apart, and a listing
pasted into a ticket never holds a store's full key."""
_HASH_PREFIX_SHAPE: Final = re.compile(r"[0-9a-f]{%d,64}" % HASH_PREFIX_LENGTH)  # noqa: UP031


def check_hash_prefix(value: object) -> str:
    """A token-hash prefix of ``HASH_PREFIX_LENGTH`` to 64 hex digits,
    lower-cased; ``InvalidRequest`` otherwise."""
    text = value.lower() if isinstance(value, str) else None
    if text is None or _HASH_PREFIX_SHAPE.fullmatch(text) is None:
        raise InvalidRequest(
            f"a token hash prefix is {HASH_PREFIX_LENGTH} to 64 hexadecimal digits"
        )
    return text
