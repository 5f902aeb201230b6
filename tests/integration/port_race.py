"""Two processes of eight threads racing for serial ports through the
service, round by round: one shared script for every backend that stores
leases across processes (SQL).

Each round, every thread presents the round's token at once (exactly one
must win, every other get ``PortAlreadyConnected``), then every thread
allocates a port of the round's range (each port handed out exactly once).
Processes are spawned, so they share nothing but the store; each test
module's worker builds its own service and calls ``race``.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from typing import Any, Final

from console_auth.application.serial import ConsolePortService
from console_auth.domain.errors import PortAlreadyConnected

INSTANCE: Final = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
THREADS: Final = 8
PROCESSES: Final = 2
ROUNDS: Final = 5


def issue_tokens(service: ConsolePortService) -> list[str]:
    """One serial console per round, each on its own port."""
    return [
        service.authorize_serial(
            INSTANCE, "compute-1", [10000 + r], ttl=timedelta(minutes=5)
        ).token.get_secret_value()
        for r in range(ROUNDS)
    ]


def race(
    service: ConsolePortService, tokens: list[str], barrier: Barrier, results: Any, index: int
) -> None:
    """One process's part: THREADS threads connect with each round's token
    at once, then all allocate a port of the round's range."""

    def one(thread: int, round_: int, token: str) -> None:
        barrier.wait(timeout=60)
        try:
            service.connect(token, INSTANCE, f"proxy-{index}-{thread}")
            results.put(("won", index))
        except PortAlreadyConnected:
            results.put(("refused", index))
        except Exception as exc:
            results.put(("error", repr(exc)))
        barrier.wait(timeout=60)
        first = 40000 + round_ * THREADS * PROCESSES
        try:
            allocated = service.allocate_port(
                "compute-1", range(first, first + THREADS * PROCESSES)
            )
        except Exception as exc:
            results.put(("error", repr(exc)))
        else:
            results.put(("port", (round_, allocated)))

    for round_, token in enumerate(tokens):
        threads = [threading.Thread(target=one, args=(t, round_, token)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def run_race(worker: Callable[..., None], *args: Any) -> list[Any]:
    """Spawn PROCESSES ``worker(*args, barrier, results, index)`` and gather
    every outcome; fails at once if a worker dies (say, on import) rather
    than after the whole timeout."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(THREADS * PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(*args, barrier, results, i)) for i in range(PROCESSES)
    ]
    count = ROUNDS * THREADS * PROCESSES * 2
    outcomes: list[Any] = []
    try:
        for process in workers:
            process.start()
        deadline = time.monotonic() + 120
        while len(outcomes) < count:
            try:
                outcomes.append(results.get(timeout=1))
            except queue.Empty:
                died = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
                assert died == [], f"a worker process died (exit codes {died})"
                assert time.monotonic() < deadline, f"only {len(outcomes)} of {count} results"
        for process in workers:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:
        for process in workers:
            if process.is_alive():
                process.terminate()
    return outcomes


def check_outcomes(outcomes: Sequence[Any]) -> None:
    """One winner per round, every other thread refused, no port twice."""
    assert [o for o in outcomes if o[0] == "error"] == []
    assert sum(o[0] == "won" for o in outcomes) == ROUNDS
    assert sum(o[0] == "refused" for o in outcomes) == ROUNDS * (THREADS * PROCESSES - 1)
    for round_ in range(ROUNDS):
        ports = sorted(o[1][1] for o in outcomes if o[0] == "port" and o[1][0] == round_)
        first = 40000 + round_ * THREADS * PROCESSES
        assert ports == list(range(first, first + THREADS * PROCESSES))  # each one exactly once
