"""What the service needs from the outside world, and nothing more.

Adapters satisfy these structurally; none of them inherits from a port.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol
from uuid import UUID

from console_auth.domain import ConsoleConnection


class ConsoleConnectionRepository(Protocol):
    """Stored connections keyed by token hash; a clean token never gets here.

    Every method may raise ``BackendUnavailable`` when the store cannot
    answer; ``None`` and ``0`` always mean the store answered.
    """

    def add(self, connection: ConsoleConnection) -> None:
        """Store ``connection``; ``InvalidRequest`` if its hash is already stored."""
        ...

    def get_by_hash(self, token_hash: str) -> ConsoleConnection | None:
        """The connection stored under ``token_hash``, expired or not."""
        ...

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        """Delete every connection of the instance; return how many."""
        ...

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """Delete at most ``limit`` connections with ``expires_at <= now``
        (of ``host`` only, when given); return how many. Callers loop, so
        each call is one short transaction."""
        ...


class Clock(Protocol):
    """The time, so tests can stop and move it."""

    def now(self) -> datetime:
        """Timezone-aware UTC."""
        ...


class TokenSource(Protocol):
    """Fresh tokens, so tests can predict them."""

    def new_token(self) -> str:
        """A token of ``TOKEN_LENGTH`` URL-safe characters, never seen before."""
        ...
