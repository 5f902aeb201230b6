"""Serial ports on real databases: 2 processes x 8 threads race each round.

Exactly one client wins a port per round, every other gets the typed
"port already connected" error; ``allocate_port`` never hands a port out
twice. Processes are spawned, so they share nothing but the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from console_auth.adapters.sql import (
    SqlConsoleConnectionRepository,
    SqlPortLeaseRepository,
    SqlPortReservationRepository,
    Statements,
    open_engine,
)
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.application.serial import ConsolePortService
from tests.backends.sql_servers import database
from tests.integration.port_race import check_outcomes, issue_tokens, race, run_race


def make_service(url: str) -> ConsolePortService:
    engine = open_engine(url, auto_migrate=url.startswith("sqlite"))
    clock, tokens = SystemClock(), SecretsTokenSource()
    consoles = ConsoleAuthService(
        SqlConsoleConnectionRepository(Statements(engine)), clock, tokens
    )
    return ConsolePortService(
        consoles,
        SqlPortLeaseRepository(Statements(engine)),
        SqlPortReservationRepository(Statements(engine)),
        SecretsLeaseIdSource(),
    )


def worker(url: str, tokens: list[str], barrier: Barrier, results: Any, index: int) -> None:
    race(make_service(url), tokens, barrier, results, index)


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
        outcomes = run_race(worker, url, issue_tokens(service))
    check_outcomes(outcomes)
