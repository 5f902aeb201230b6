"""Tokens split over cells: one store per cell, routed by instance.

A large cloud runs several cells, each with its own database, so that no
database holds (or takes down) every console. A console connection is
stored in the cell that holds its instance, and everything that knows the
instance goes straight there:

- ``add`` (authorize): ``locator.cell_of(connection.instance_uuid)``.
- ``get_by_hash`` with the instance uuid (validate; every URL this library
  builds carries it): that cell only. The other cells are never asked, so a
  cell that is down fails only its own consoles.
- ``delete_by_instance`` (revoke): every cell, one after another, each
  keeping the revocation record. The cell map may have moved the instance
  since a token was issued, and that token, left in its old cell, would
  still validate from a legacy URL. A cell that is down is skipped; once the
  others are done a ``BackendUnavailable`` names it and says how many were
  deleted.
- ``revocations`` (a proxy's recheck): each instance's cell (every cell
  for one the map no longer places); a cell that is down leaves only its
  own instances unanswered.
- ``purge_expired``: the compute host's cell when the locator knows it,
  otherwise every cell, one after another; a cell that is down is skipped
  and named once the others are done.
- ``purge_instances``: each instance's cell (every cell for one the map
  does not place), with the same failure rule; ``delete_by_hash``: every
  cell, alike.
- ``connections`` (an operator's listing): the instance's cell, the host's
  cell, or every cell, pages merged in hash order; a cell that is down
  fails the page, naming it, once the others have answered.

Only a legacy URL, without the instance uuid, cannot be routed. Then
``get_by_hash`` asks every cell at once, on a small thread pool per cell:
the first cell that knows the hash wins, and the search is bounded by
``search_timeout``. When no cell knows the hash, a cell that failed or did
not answer in time makes the answer ``BackendUnavailable``, never "unknown",
because the token may be in exactly that cell. Whether legacy URLs are
searched at all is the service's ``require_instance_uuid`` (``True``:
refused before any lookup).

Depends on the ports only, so any repository adapter can serve a cell.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import Final, TypeVar
from uuid import UUID

from console_auth.domain import BackendUnavailable, ConsoleConnection, InvalidRequest, UnknownCell

from .ports import CellLocator, ConsoleConnectionRepository, StoredConnection

logger = logging.getLogger(__name__)
_R = TypeVar("_R")
_S = TypeVar("_S")

DEFAULT_SEARCH_TIMEOUT: Final = 2.0
"""Seconds a legacy URL's search across cells may take: well under what a
console user waits, above a healthy database's milliseconds."""
MAX_SEARCH_TIMEOUT: Final = 60.0
SEARCH_WORKERS_PER_CELL: Final = 8
"""Threads asking one cell at once for legacy searches."""
SEARCH_BACKLOG_PER_CELL: Final = 64
"""Searches of one cell running or queued at most. A cell that hangs holds
its workers for its whole connect timeout; past this backlog it counts as
unavailable at once, so a long outage cannot queue work without bound, and
the other cells, which have their own workers, never wait behind it."""


class CellRoutedConsoleConnectionRepository:
    """A ``ConsoleConnectionRepository`` over one ``ConsoleConnectionRepository``
    per cell, placed by a ``CellLocator``.

    ``cells`` maps every cell name to its repository; the locator must not
    name a cell without one. A token hash is unique within its cell only:
    checking every cell on each ``add`` would cost the search routing
    avoids, and 256-bit random tokens never meet across cells. Errors of a cell propagate as
    ``BackendUnavailable`` naming the cell, with the driver's error still
    chained as ``__cause__``; ``UnknownCell`` comes from the locator.
    Thread-safe when the cells' repositories are. ``close()`` stops the
    search threads.
    """

    def __init__(
        self,
        cells: Mapping[str, ConsoleConnectionRepository],
        locator: CellLocator,
        *,
        search_timeout: float = DEFAULT_SEARCH_TIMEOUT,
        search_workers: int = SEARCH_WORKERS_PER_CELL,
        search_backlog: int = SEARCH_BACKLOG_PER_CELL,
    ) -> None:
        check_cell_stores(cells, locator)
        if not 0 < search_timeout <= MAX_SEARCH_TIMEOUT:
            raise InvalidRequest(
                f"cell search timeout must be above 0 and at most {MAX_SEARCH_TIMEOUT:g} s"
            )
        if search_workers < 1 or search_backlog < search_workers:
            raise InvalidRequest("cell search needs a worker, and a backlog of at least those")
        self._cells = dict(cells)
        self._locator = locator
        self._search_timeout = search_timeout
        self._searchers = {
            name: _CellSearcher(name, search_workers, search_backlog) for name in self._cells
        }

    @property
    def cell_names(self) -> tuple[str, ...]:
        return tuple(self._cells)

    @property
    def locator(self) -> CellLocator:
        return self._locator

    def cell(self, name: str) -> ConsoleConnectionRepository:
        """The repository of one cell."""
        try:
            return self._cells[name]
        except KeyError:
            raise InvalidRequest(f"no cell is named {name!r}") from None

    # --- ConsoleConnectionRepository -----------------------------------------------------------

    def add(self, connection: ConsoleConnection) -> None:
        name = self._locator.cell_of(connection.instance_uuid)
        in_cell(name, self.cell(name).add, connection)

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        """The instance's cell only; without the uuid, search every cell at
        once (see the module docstring)."""
        if instance_uuid is not None:
            name = self._locator.cell_of(instance_uuid)
            return in_cell(name, self.cell(name).get_by_hash, token_hash)
        if len(self._cells) == 1:
            ((name, only),) = self._cells.items()
            return in_cell(name, only.get_by_hash, token_hash)
        return self._search(token_hash)

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        """Every cell, each keeping the record: see the module docstring."""
        return in_every_cell(
            self._cells,
            lambda cell: cell.delete_by_instance(instance_uuid, revoked_at),
            lambda n: f"{n} console tokens of instance {instance_uuid} deleted",
        )

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        """Each instance's cell, asked once for all of its instances; one the
        cell map no longer places (deleted since) is asked of every cell,
        where revoke wrote its record. A cell that fails is logged and
        skipped, so only its own instances' sessions run on; when no cell
        answers, ``BackendUnavailable`` names them."""
        asked = self._by_cell(instance_uuids)
        found: dict[UUID, datetime] = {}
        failed: dict[str, BackendUnavailable] = {}
        for name, listed in asked.items():
            try:
                latest(found, self.cell(name).revocations(listed))
            except BackendUnavailable as exc:
                logger.warning("revocations not read in cell %s: %s", name, exc)
                failed[name] = exc
        if failed and len(failed) == len(asked):
            raise cells_unavailable("no revocation records read", failed)
        return found

    def _by_cell(self, instance_uuids: Collection[UUID]) -> dict[str, list[UUID]]:
        """The instances each cell is asked about: its own, and every one
        the cell map does not place."""
        by_cell: dict[str, list[UUID]] = {name: [] for name in self._cells}
        for instance_uuid in instance_uuids:
            try:
                by_cell[self._locator.cell_of(instance_uuid)].append(instance_uuid)
            except UnknownCell:
                for listed in by_cell.values():
                    listed.append(instance_uuid)
        return {name: listed for name, listed in by_cell.items() if listed}

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        """Each cell that may hold ``host``'s connections to the end in turn:
        the host's cell when the locator knows it, otherwise every cell."""
        of_host = f" of {host}" if host else ""
        return in_every_cell(
            self._cells_of_host(host),
            lambda cell: cell.purge_expired(now, host, batch_size),
            lambda n: f"purged {n} expired console tokens{of_host}",
        )

    def _cells_of_host(self, host: str | None) -> Mapping[str, ConsoleConnectionRepository]:
        if host is not None:
            name = self._locator.cell_of_host(host)
            if name is not None:
                return {name: self.cell(name)}
        return self._cells

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        """Each instance's cell, asked once for all of its instances."""
        asked = self._by_cell(instance_uuids)
        return in_every_cell(
            {name: (self.cell(name), listed) for name, listed in asked.items()},
            lambda pair: pair[0].purge_instances(now, pair[1], batch_size),
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
        """Each cell that may hold them, merged in hash order; see the port."""
        pages: list[list[StoredConnection]] = []
        failed: dict[str, BackendUnavailable] = {}
        for name, cell in self._cells_listing(instance_uuid, host).items():
            try:
                page = cell.connections(
                    after, limit, instance_uuid=instance_uuid, host=host, live_at=live_at
                )
            except BackendUnavailable as exc:
                failed[name] = exc
                continue
            pages.append([StoredConnection(s.connection, s.cell or name) for s in page])
        if failed:
            raise cells_unavailable("console tokens listed in the cells that answered", failed)
        merged = heapq.merge(*pages, key=lambda s: s.connection.token_hash)
        return [stored for stored, _ in zip(merged, range(limit), strict=False)]

    def _cells_listing(
        self, instance_uuid: UUID | None, host: str | None
    ) -> Mapping[str, ConsoleConnectionRepository]:
        if instance_uuid is not None:
            try:
                name = self._locator.cell_of(instance_uuid)
            except UnknownCell:  # deleted since: its tokens may be in any cell
                return self._cells
            return {name: self.cell(name)}
        return self._cells_of_host(host)

    def delete_by_hash(self, token_hash: str) -> int:
        return in_every_cell(
            self._cells,
            lambda cell: cell.delete_by_hash(token_hash),
            lambda n: f"{n} console tokens deleted by hash",
        )

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        if instance_uuid is not None:
            return f"cell {self._locator.cell_of(instance_uuid)}"
        if len(self._cells) == 1:
            return f"cell {next(iter(self._cells))}"
        return "every cell (" + ", ".join(self._cells) + ")"

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the search threads; searches still queued are cancelled."""
        for searcher in self._searchers.values():
            searcher.close()

    # --- inside --------------------------------------------------------------------------------

    def _search(self, token_hash: str) -> ConsoleConnection | None:
        deadline = time.monotonic() + self._search_timeout
        pending, failed = self._submit(token_hash)
        cause: BaseException | None = None
        try:
            for future in as_completed(list(pending), timeout=deadline - time.monotonic()):
                name = pending.pop(future)
                try:
                    found = future.result()
                except BackendUnavailable as exc:
                    failed[name] = str(exc)
                    cause = cause or exc.__cause__ or exc
                    continue
                if found is not None:
                    return found
        except TimeoutError:
            failed.update(
                dict.fromkeys(pending.values(), f"no answer within {self._search_timeout:g} s")
            )
        finally:
            for future in pending:  # those not started yet never will be
                future.cancel()
        if failed:
            raise _not_searched(token_hash, failed) from cause
        return None

    def _submit(
        self, token_hash: str
    ) -> tuple[dict[Future[ConsoleConnection | None], str], dict[str, str]]:
        """A lookup on each cell's searcher: the futures by cell, and the
        cells whose backlog is full."""
        pending: dict[Future[ConsoleConnection | None], str] = {}
        failed: dict[str, str] = {}
        for name, searcher in self._searchers.items():
            future = searcher.submit(self._cells[name].get_by_hash, token_hash)
            if future is None:
                failed[name] = "too many searches already waiting for it"
            else:
                pending[future] = name
        return pending, failed


def _not_searched(token_hash: str, failed: Mapping[str, str]) -> BackendUnavailable:
    """A miss while some cells did not answer: the token may be in one of them."""
    logger.warning(
        "console token (hash %.8s) not found, and cells could not be searched: %s",
        token_hash,
        "; ".join(f"{name}: {why}" for name, why in sorted(failed.items())),
    )
    return BackendUnavailable(
        "console token not found in the cells that answered; unavailable: "
        + "; ".join(f"cell {name}: {why}" for name, why in sorted(failed.items()))
    )


def check_cell_stores(cells: Mapping[str, object], locator: CellLocator) -> None:
    """A router needs a store for every cell its locator may answer."""
    if not cells:
        raise InvalidRequest("a cell-routed repository needs at least one cell")
    without_store = sorted(set(locator.cells()) - set(cells))
    if without_store:
        raise InvalidRequest(
            f"the cell locator names cells that have no store: {', '.join(without_store)}"
        )


class PartlyUnavailable(BackendUnavailable):
    """Work that went through every part but some: ``done`` counts what the
    others did, so a composite of composites (a fallback over cells) sums it."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


def cells_unavailable(
    done: str, failed: Mapping[str, BackendUnavailable], count: int = 0
) -> PartlyUnavailable:
    """One error for work that went through every cell but ``failed``: what
    was ``done`` (``count`` of it), then each failed cell and why; the first
    driver error stays the ``__cause__``."""
    first = next(iter(failed.values()))
    error = PartlyUnavailable(
        f"{done}, but not in every cell: "
        + "; ".join(f"cell {name}: {exc}" for name, exc in failed.items()),
        count,
    )
    error.__cause__ = first.__cause__ or first  # as ``raise ... from`` sets it
    error.__suppress_context__ = True
    return error


def in_every_cell(
    cells: Mapping[str, _S], call: Callable[[_S], int], done: Callable[[int], str]
) -> int:
    """``call`` on each cell in turn, its counts summed. A cell that fails is
    skipped; once the others are done, ``cells_unavailable`` names it and
    says what was ``done`` (given the sum)."""
    total = 0
    failed: dict[str, BackendUnavailable] = {}
    for name, cell in cells.items():
        try:
            total += call(cell)
        except BackendUnavailable as exc:
            logger.warning("cell %s skipped: %s", name, exc)
            total += exc.done if isinstance(exc, PartlyUnavailable) else 0
            failed[name] = exc
    if failed:
        raise cells_unavailable(done(total), failed, total)
    return total


def latest(found: dict[UUID, datetime], answers: Mapping[UUID, datetime]) -> None:
    """Merge revocation ``answers`` into ``found``, keeping each instance's later time."""
    for instance_uuid, at in answers.items():
        found[instance_uuid] = max(at, found.get(instance_uuid, at))


def in_cell(name: str, call: Callable[..., _R], *args: object) -> _R:
    """``call(*args)``, its ``BackendUnavailable`` naming the cell; the
    driver's error stays the ``__cause__``."""
    try:
        return call(*args)
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"cell {name}: {exc}") from (exc.__cause__ or exc)


class _CellSearcher:
    """One cell's search threads, and a bound on the work waiting for them."""

    def __init__(self, name: str, workers: int, backlog: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"console-auth-cell-{name}"
        )
        self._backlog = backlog
        self._in_flight = 0
        self._lock = threading.Lock()

    def submit(
        self, call: Callable[[str], ConsoleConnection | None], token_hash: str
    ) -> Future[ConsoleConnection | None] | None:
        """The running search, or ``None`` when the backlog is full."""
        with self._lock:
            if self._in_flight >= self._backlog:
                return None
            self._in_flight += 1
        try:
            future = self._executor.submit(call, token_hash)
        except BaseException:
            self._finished()
            raise
        future.add_done_callback(self._finished)
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _finished(self, _future: object = None) -> None:
        with self._lock:
            self._in_flight -= 1
