"""The real clock and the operating system's CSPRNG."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from console_auth.domain import TOKEN_BYTES


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SecretsTokenSource:
    """256 bits from ``secrets`` (the OS CSPRNG), URL-safe base64 without padding."""

    def new_token(self) -> str:
        return secrets.token_urlsafe(TOKEN_BYTES)


class SecretsLeaseIdSource:
    """128 bits from ``secrets``, as 32 hex characters: unguessable, so only
    the lease's holder renews or releases it."""

    def new_lease_id(self) -> str:
        return secrets.token_hex(16)
