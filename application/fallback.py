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

import logging
import threading
from collections.abc import Collection, Mapping
from datetime import datetime
from uuid import UUID

from console_auth.domain import ConsoleConnection

from .cells import in_every_cell
from .ports import CellRoutedRepository, ConsoleConnectionRepository

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
      Both keep the revocation record, so ``revocations`` asks the primary.
      A store (or cell) that fails is skipped; once the others are done a
      ``BackendUnavailable`` names it and says how many were deleted.
    - ``delete_expired``: the primary, then the secondary with what is left
      of ``limit``, so the service's batching still holds.

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

    def get_by_hash(self, token_hash: str) -> ConsoleConnection | None:
        found = self.primary.get_by_hash(token_hash)
        if found is not None:
            return found
        return self._counted(self.secondary.get_by_hash(token_hash), token_hash)

    def _counted(
        self, found: ConsoleConnection | None, token_hash: str
    ) -> ConsoleConnection | None:
        if found is not None:
            with self._lock:
                self._secondary_hits += 1
            logger.debug("console token (hash %.8s) found in the fallback store", token_hash)
        return found

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        return in_every_cell(
            _partitions(self.primary, self.secondary, None),
            lambda store: store.delete_by_instance(instance_uuid, revoked_at),
            f"console tokens of instance {instance_uuid} deleted",
        )

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        return self.primary.revocations(instance_uuids)

    def delete_revocations(self, before: datetime) -> int:
        return in_every_cell(
            _partitions(self.primary, self.secondary, None),
            lambda store: store.delete_revocations(before),
            "revocation records deleted",
        )

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        deleted = self.primary.delete_expired(now, host, limit)
        if deleted < limit:
            deleted += self.secondary.delete_expired(now, host, limit - deleted)
        return deleted


class CellRoutedFallbackRepository(FallbackConsoleConnectionRepository):
    """The pair when a store is split over cells (``CellRoutedRepository``):
    a lookup with the instance uuid asks only that instance's cell of each
    split store, and purge goes cell by cell, as it does without the
    fallback. A store that is not split counts as one cell, named
    ``(primary)`` or ``(fallback)``: parentheses never appear in a cell name.
    """

    def get_by_hash_in_cell_of(
        self, instance_uuid: UUID, token_hash: str
    ) -> ConsoleConnection | None:
        found = _in_cell_of(self.primary, instance_uuid, token_hash)
        if found is not None:
            return found
        return self._counted(_in_cell_of(self.secondary, instance_uuid, token_hash), token_hash)

    def cells_to_purge(self, host: str | None) -> dict[str, ConsoleConnectionRepository]:
        return _partitions(self.primary, self.secondary, host)


def fallback_pair(
    primary: ConsoleConnectionRepository, secondary: ConsoleConnectionRepository
) -> FallbackConsoleConnectionRepository:
    """The fallback that keeps cell routing when either store has cells."""
    if isinstance(primary, CellRoutedRepository) or isinstance(secondary, CellRoutedRepository):
        return CellRoutedFallbackRepository(primary, secondary)
    return FallbackConsoleConnectionRepository(primary, secondary)


def _in_cell_of(
    store: ConsoleConnectionRepository, instance_uuid: UUID, token_hash: str
) -> ConsoleConnection | None:
    if isinstance(store, CellRoutedRepository):
        return store.get_by_hash_in_cell_of(instance_uuid, token_hash)
    return store.get_by_hash(token_hash)


def _partitions(
    primary: ConsoleConnectionRepository, secondary: ConsoleConnectionRepository, host: str | None
) -> dict[str, ConsoleConnectionRepository]:
    """Each store by name, a split one cell by cell (only the cells that may
    hold ``host``'s connections, when given); a cell name both stores use is
    kept twice, the fallback's marked."""
    every = dict(_cells_of(primary, host, "(primary)"))
    for name, store in _cells_of(secondary, host, "(fallback)").items():
        every[f"{name} (fallback)" if name in every else name] = store
    return every


def _cells_of(
    store: ConsoleConnectionRepository, host: str | None, name: str
) -> Mapping[str, ConsoleConnectionRepository]:
    if isinstance(store, CellRoutedRepository):
        return store.cells_to_purge(host)
    return {name: store}
