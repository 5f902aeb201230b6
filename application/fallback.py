"""Two stores at once, for the length of a backend switch.

An operator moving tokens from memcached to the database (or back) cannot
copy live tokens across: only their hashes are stored, and a console opened
before the switch must keep working after it. So for a while the new store
is the *primary* and the old one the *secondary*: new tokens go only to the
primary, and validation that misses there asks the secondary. Once the
secondary's tokens have all expired (``MAX_TTL`` at most, the configured
token TTL in practice; ``secondary_hits`` stops growing) the fallback is
turned off.

Depends on the port only, so any two adapters combine.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Collection
from datetime import datetime
from uuid import UUID

from console_auth.domain import ConsoleConnection

from .cells import in_every_cell, latest
from .ports import ConsoleConnectionRepository, StoredConnection

logger = logging.getLogger(__name__)


class FallbackConsoleConnectionRepository:
    """Writes go to ``primary``; reads fall back to ``secondary`` on a miss;
    deletions apply to both.

    - ``add``: primary only, so the secondary drains by expiry.
    - ``get_by_hash``: primary, then secondary when the primary has no such
      hash. A primary that cannot answer raises: falling back on an error
      would make an outage look like a half-working store.
    - ``delete_by_instance``: both, every cell of a split one, the sum
      returned. A revoked token must not live on in the store being retired.
      Both keep the revocation record; ``revocations`` asks both, so one
      that was down during the revoke does not hide it.
      A store that fails is skipped; once the other is done a
      ``BackendUnavailable`` names it and says how many were deleted.
    - ``purge_expired``, ``purge_instances``, ``delete_by_hash``: the
      primary, then the secondary, each skipped (then named) if it fails.
    - ``connections``: both pages merged in hash order, a hash in both
      listed once (the primary's).

    Otherwise an error of either store propagates (``BackendUnavailable``);
    every operation is safe to retry.
    """

    def __init__(
        self, primary: ConsoleConnectionRepository, secondary: ConsoleConnectionRepository
    ) -> None:
        if primary is secondary:
            raise ValueError("the fallback store must differ from the primary")
        self.primary = primary
        self.secondary = secondary
        self._lock = threading.Lock()
        self._secondary_hits = 0

    @property
    def secondary_hits(self) -> int:
        """Connections found only in the secondary so far: the switch can end
        when this stops growing."""
        return self._secondary_hits

    def add(self, connection: ConsoleConnection) -> None:
        self.primary.add(connection)

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        found = self.primary.get_by_hash(token_hash, instance_uuid)
        if found is not None:
            return found
        found = self.secondary.get_by_hash(token_hash, instance_uuid)
        if found is not None:
            with self._lock:
                self._secondary_hits += 1
            logger.debug("console token (hash %.8s) found in the fallback store", token_hash)
        return found

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        return in_every_cell(
            self._stores(),
            lambda store: store.delete_by_instance(instance_uuid, revoked_at),
            lambda n: f"{n} console tokens of instance {instance_uuid} deleted",
        )

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        """Both stores, the later time kept: a revoke that reached only one
        (the other was down) still ends the sessions."""
        found = self.primary.revocations(instance_uuids)
        latest(found, self.secondary.revocations(instance_uuids))
        return found

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        of_host = f" of {host}" if host else ""
        return in_every_cell(
            self._stores(),
            lambda store: store.purge_expired(now, host, batch_size),
            lambda n: f"purged {n} expired console tokens{of_host}",
        )

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        return in_every_cell(
            self._stores(),
            lambda store: store.purge_instances(now, instance_uuids, batch_size),
            lambda n: f"purged {n} expired console tokens of the instances",
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
        pages = [
            store.connections(
                after, limit, instance_uuid=instance_uuid, host=host, live_at=live_at
            )
            for store in (self.primary, self.secondary)
        ]
        page: list[StoredConnection] = []
        for stored in heapq.merge(*pages, key=lambda s: s.connection.token_hash):
            if page and page[-1].connection.token_hash == stored.connection.token_hash:
                continue  # merge is stable: the primary's came first
            page.append(stored)
            if len(page) == limit:
                break
        return page

    def delete_by_hash(self, token_hash: str) -> int:
        return in_every_cell(
            self._stores(),
            lambda store: store.delete_by_hash(token_hash),
            lambda n: f"{n} console tokens deleted by hash",
        )

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        primary = self.primary.looked_in(instance_uuid)
        secondary = self.secondary.looked_in(instance_uuid)
        return (
            f"the primary store{f' ({primary})' if primary else ''}, "
            f"then the fallback store{f' ({secondary})' if secondary else ''}"
        )

    def _stores(self) -> dict[str, ConsoleConnectionRepository]:
        """Named as a failure names them: a split store's own cells are named
        in its error."""
        return {"(primary)": self.primary, "(fallback)": self.secondary}
