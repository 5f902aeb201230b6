"""``PeriodicPurge``: jitter, a failing round, and stopping, with a fake wait
(no real time passes) and once in a real thread."""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from console_auth.application.purge import PeriodicPurge
from console_auth.domain import BackendUnavailable, InvalidRequest


class Waits:
    """A wait that records each delay and returns at once; the loop is
    stopped once ``rounds`` waits have been granted."""

    def __init__(self, rounds: int) -> None:
        self.delays: list[float] = []
        self._rounds = rounds

    def __call__(self, stop: threading.Event, seconds: float) -> bool:
        self.delays.append(seconds)
        if len(self.delays) > self._rounds:
            stop.set()
        return stop.is_set()


def test_rounds_come_at_jittered_intervals_after_a_random_start() -> None:
    waits = Waits(rounds=200)
    loop = PeriodicPurge(lambda: 3, 60, jitter=0.1, rng=random.Random(7), wait=waits)
    loop.run()
    assert (loop.rounds, loop.failures, loop.purged) == (200, 0, 600)
    first, *rest = waits.delays
    assert 0 <= first <= 60
    assert all(54 <= delay <= 66 for delay in rest)
    assert len(set(rest)) > 150  # jittered, not in step
    assert max(rest) - min(rest) > 10


def test_two_nodes_started_together_do_not_purge_in_step() -> None:
    starts = []
    for seed in (1, 2):
        waits = Waits(rounds=1)
        PeriodicPurge(lambda: 0, 60, rng=random.Random(seed), wait=waits).run()
        starts.append(waits.delays[0])
    assert abs(starts[0] - starts[1]) > 1


def test_no_jitter_means_the_interval_exactly() -> None:
    waits = Waits(rounds=3)
    PeriodicPurge(lambda: 0, 5, jitter=0, wait=waits).run()
    assert waits.delays[1:] == [5.0, 5.0, 5.0]


def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[Exception | int] = [
        BackendUnavailable("SQL token store unavailable: connection refused"),
        RuntimeError("a bug"),
        4,
    ]

    def purge() -> int:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    caplog.set_level(logging.INFO, "console_auth.application.purge")
    loop = PeriodicPurge(purge, 30, wait=Waits(rounds=3))
    loop.run()
    assert (loop.rounds, loop.failures, loop.purged) == (3, 2, 4)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.WARNING
    assert "connection refused" in levels[0][1]
    assert levels[1][0] == logging.ERROR
    assert caplog.records[1].exc_info is not None
    assert levels[2] == (logging.INFO, "periodic purge: 4 expired console tokens deleted")


def test_stop_ends_a_waiting_loop_at_once_not_after_its_interval() -> None:
    ran = threading.Event()

    def purge() -> int:
        ran.set()
        return 0

    loop = PeriodicPurge(purge, 3600)
    loop.start()
    started = time.monotonic()
    assert loop.stop() is True
    assert time.monotonic() - started < 1
    assert not ran.is_set()


def test_a_thread_runs_rounds_until_stopped() -> None:
    rounds = threading.Semaphore(0)

    def purge() -> int:
        rounds.release()
        return 1

    loop = PeriodicPurge(purge, 0.05, rng=random.Random(3))
    loop.start()
    for _ in range(3):
        assert rounds.acquire(timeout=5)
    assert loop.stop() is True
    assert loop.rounds >= 3
    with pytest.raises(InvalidRequest, match="already started"):
        loop.start()


@pytest.mark.parametrize(
    ("interval", "jitter"), [(0, 0.1), (-1, 0.1), (86_401, 0.1), (True, 0.1), (60, 1), (60, -0.1)]
)
def test_bounds(interval: float, jitter: float) -> None:
    with pytest.raises(InvalidRequest):
        PeriodicPurge(lambda: 0, interval, jitter=jitter)
