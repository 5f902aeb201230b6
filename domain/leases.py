"""Who holds a console port: the durable answer to Nova's bug 1425640.

A serial port takes one client at a time. A ``PortLease`` records, per
(host, port), either a token issued for the port and not used yet (held)
or a proxy with a client on it (connected). Leases expire: a proxy that dies
stops renewing, and the port comes back without an operator.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from .hosts import check_host
from .model import UtcDatetime
from .tokens import is_token_hash
from .types import Port, ProxyId

_LEASE_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")


class LeaseKind(StrEnum):
    """Why a port is taken."""

    HELD = "held"
    """A token was issued for the port and nobody has connected with it yet."""
    CONNECTED = "connected"
    """A proxy has a client on the port."""


def _check_lease_id(value: str) -> str:
    if _LEASE_ID.fullmatch(value) is None:
        raise ValueError("must be 16-64 URL-safe characters")
    return value


class PortLease(BaseModel):
    """One port's current taker; at most one live lease per (host, port)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Annotated[str, AfterValidator(check_host)]
    port: Port
    instance_uuid: UUID
    kind: LeaseKind
    lease_id: Annotated[str, AfterValidator(_check_lease_id)]
    token_hash: str
    """The token that took the port: a hold is converted only by its own token."""
    proxy_id: ProxyId | None = None
    since: UtcDatetime
    expires_at: UtcDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not is_token_hash(self.token_hash):
            raise ValueError("token_hash must be 64 lowercase hex characters (a SHA-256)")
        if (self.kind is LeaseKind.CONNECTED) != (self.proxy_id is not None):
            raise ValueError("a connected lease names its proxy, a held one does not")
        if self.since > self.expires_at:
            raise ValueError("since must not be after expires_at")
        return self

    def is_live(self, now: datetime) -> bool:
        """Live iff ``now < expires_at``, the same rule as tokens."""
        return now < self.expires_at

    def blocks(self, claim: PortLease, now: datetime) -> bool:
        """Whether this lease keeps ``claim`` off the port.

        A live connection blocks everything. A live hold blocks other holds
        (``authorize_serial`` must pick another port) but not a connection:
        any valid token for the port may connect, and its own hold is simply
        replaced.
        """
        if not self.is_live(now):
            return False
        return self.kind is LeaseKind.CONNECTED or claim.kind is LeaseKind.HELD
