"""Serial ports on real databases: 2 processes x 8 threads race each round.

Exactly one client wins a port per round, every other gets the typed
"port already connected" error; ``allocate_port`` never hands a port out
twice. Processes are spawned, so they share nothing but the database.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from console_auth.adapters.sql import (
    SqlConsoleConnectionRepository,
    SqlPortLeaseRepository,
    SqlPortReservationRepository,
    open_engine,
)
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.application.serial import ConsolePortService
from console_auth.domain.errors import PortAlreadyConnected
from tests.backends.sql_servers import database

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
THREADS = 8
PROCESSES = 2
ROUNDS = 5


def make_service(url: str) -> ConsolePortService:
    engine = open_engine(url, auto_migrate=url.startswith("sqlite"))
    clock, tokens = SystemClock(), SecretsTokenSource()
    consoles = ConsoleAuthService(SqlConsoleConnectionRepository(engine), clock, tokens)
    return ConsolePortService(
        consoles,
        SqlPortLeaseRepository(engine),
        SqlPortReservationRepository(engine),
        clock,
        tokens,
    )


def worker(url: str, tokens: list[str], barrier: Barrier, results: Any, index: int) -> None:
    """One process: THREADS threads connect with each round's token at once."""
    service = make_service(url)

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
        allocated = service.allocate_port("compute-1", range(first, first + THREADS * PROCESSES))
        results.put(("port", (round_, allocated)))

    for round_, token in enumerate(tokens):
        threads = [threading.Thread(target=one, args=(t, round_, token)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@contextmanager
def _url(dialect: str, tmp_path: Path) -> Iterator[str]:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/ports.sqlite3"
        open_engine(url, auto_migrate=True).dispose()
        yield url
        return
    with database(dialect) as url:
        open_engine(url, auto_migrate=True).dispose()
        yield url


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_one_winner_per_round_and_no_port_allocated_twice(dialect: str, tmp_path: Path) -> None:
    with _url(dialect, tmp_path) as url:
        service = make_service(url)
        tokens = [
            service.authorize_serial(
                INSTANCE, "compute-1", [10000 + r], ttl=timedelta(minutes=5)
            ).token.get_secret_value()
            for r in range(ROUNDS)
        ]
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(THREADS * PROCESSES)
        results = context.Queue()
        processes = [
            context.Process(target=worker, args=(url, tokens, barrier, results, i))
            for i in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in range(ROUNDS * THREADS * PROCESSES * 2)]
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    errors = [o for o in outcomes if o[0] == "error"]
    assert errors == []
    assert sum(o[0] == "won" for o in outcomes) == ROUNDS
    assert sum(o[0] == "refused" for o in outcomes) == ROUNDS * (THREADS * PROCESSES - 1)
    for round_ in range(ROUNDS):
        ports = sorted(o[1][1] for o in outcomes if o[0] == "port" and o[1][0] == round_)
        first = 40000 + round_ * THREADS * PROCESSES
        assert ports == list(range(first, first + THREADS * PROCESSES))  # each one exactly once
