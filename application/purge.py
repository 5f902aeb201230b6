"""The spec's periodic task to clean expired objects, as a loop a host
service starts and stops (and ``console-auth purge --every`` runs).

Each compute node purges what it is responsible for (its host, or the
instances it runs: ``ConsoleAuthService.purge_instances``), so the work is
spread over the nodes. Jitter keeps nodes started together from purging in
step: the first round comes at a random point of the first interval, and
each interval after it is stretched or shrunk by up to ``jitter``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Final

from console_auth.domain import ConsoleAuthError, InvalidRequest

logger = logging.getLogger(__name__)

MAX_INTERVAL: Final = 86_400.0
"""Seconds between rounds at most: a day, past which expired rows pile up."""
DEFAULT_JITTER: Final = 0.1

Wait = Callable[[threading.Event, float], bool]
"""Wait up to the seconds given, or until the event is set; whether it is."""


def _wait(stop: threading.Event, seconds: float) -> bool:
    return stop.wait(seconds)


class PeriodicPurge:
    """Call ``purge`` every ``interval`` seconds (jittered) until stopped.

    A round that raises is logged and the loop goes on: a store that is
    down now may answer next round. ``start`` runs the loop in a daemon
    thread, ``stop`` ends it (a running round finishes first); ``run`` runs
    it in the caller's thread until ``stop_event`` is set. ``rng`` and
    ``wait`` are for tests: a seeded ``random.Random`` and a wait that moves
    a fake clock.
    """

    def __init__(
        self,
        purge: Callable[[], int],
        interval: float,
        *,
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
        wait: Wait = _wait,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise InvalidRequest("the purge interval is a number of seconds")
        if not 0 < interval <= MAX_INTERVAL:
            raise InvalidRequest(
                f"the purge interval must be above 0 and at most {MAX_INTERVAL:g} s"
            )
        if not 0 <= jitter < 1:
            raise InvalidRequest("the purge jitter is a fraction from 0 to below 1")
        self._purge = purge
        self._interval = float(interval)
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311  spreading rounds, not secrets
        self._wait = wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rounds = 0
        """Rounds run, failed ones included."""
        self.failures = 0
        self.purged = 0
        """Connections deleted by all rounds."""

    @property
    def interval(self) -> float:
        return self._interval

    def delays(self) -> tuple[float, float]:
        """The bounds of the wait before a round after the first."""
        return self._interval * (1 - self._jitter), self._interval * (1 + self._jitter)

    def run_once(self) -> int | None:
        """One round: how many went, or ``None`` when it failed (logged)."""
        try:
            count = self._purge()
        except ConsoleAuthError as exc:
            logger.warning("periodic purge failed, next round in %g s: %s", self._interval, exc)
            count = None
        except Exception:  # a bug or a driver fault unmapped: the loop must outlive it
            logger.exception("periodic purge failed, next round in %g s", self._interval)
            count = None
        with self._lock:
            self.rounds += 1
            if count is None:
                self.failures += 1
            else:
                self.purged += count
        if count is not None:
            logger.info("periodic purge: %d expired console tokens deleted", count)
        return count

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Rounds until ``stop_event`` (default: ``stop()``'s) is set."""
        stop = self._stop if stop_event is None else stop_event
        delay = self._rng.uniform(0, self._interval)
        while not self._wait(stop, delay):
            self.run_once()
            delay = self._rng.uniform(*self.delays())

    def start(self) -> None:
        """Run the loop in a daemon thread; once."""
        if self._thread is not None:
            raise InvalidRequest("this periodic purge was already started")
        self._thread = threading.Thread(target=self.run, name="console-auth-purge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """End the loop; wait up to ``timeout`` seconds (default: one
        interval) for a running round; whether the thread has ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(self._interval if timeout is None else timeout)
        return not self._thread.is_alive()
