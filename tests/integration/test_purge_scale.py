"""Purge at scale on SQLite, PostgreSQL and MariaDB: bounded batches read
from an index in order, memory flat in the number of rows, and validations
served all along.

The 100,000-row runs use ``bench.purge.PurgeBench``, the purges behind
``python -m bench --purge-scale N``, which runs them at a million rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from sqlalchemy import Engine, text

from bench.purge import LIVE_TOKENS, PurgeBench, percentile, seed_expired
from console_auth.adapters.sql import open_engine
from console_auth.adapters.sql.repository import expired_again, oldest_expired
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from tests.backends.sql_servers import database
from tests.fakes import T0

ROWS: Final = 100_000
SMALL: Final = 10_000
BATCH: Final = 1_000
FLAT_SLACK: Final = 512 * 1024
"""Bytes the Python heap's peak may grow from 10,000 to 100,000 rows: ten
times the rows, the same batch, so the same peak, give or take the
allocator."""
MAX_VALIDATE_P99_NS: Final = 250_000_000
"""Generous: a loaded two-core CI machine, and the purge holds the GIL
between its statements. Quiet, it is well under a millisecond."""


def _engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    if backend == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path}/purge.sqlite3", auto_migrate=True)
        yield engine
        engine.dispose()
        return
    with database(backend) as url:
        engine = open_engine(url, auto_migrate=True)
        yield engine
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty migrated database of each backend."""
    yield from _engine(request.param, tmp_path)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    yield from _engine("sqlite", tmp_path)


def _plan(engine: Engine, sql: str) -> str:
    explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN"
    with engine.connect() as conn:
        return "\n".join(str(row) for row in conn.execute(text(f"{explain} {sql}")))


def _literal(statement: object, engine: Engine) -> str:
    compile_ = getattr(statement, "compile")  # noqa: B009 - a Core statement
    return str(compile_(engine, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize(
    ("host", "index"),
    [
        (None, "ix_console_connections_expires_at_us"),
        ("compute-7", "ix_console_connections_host_expires_at_us"),
    ],
    ids=["global", "per-host"],
)
def test_sqlite_reads_each_batch_from_an_index_in_order(
    sqlite_engine: Engine, host: str | None, index: str
) -> None:
    """``EXPLAIN QUERY PLAN``: a covering index search, no temporary b-tree
    (a sort); the delete finds each row by its rowid."""
    seed_expired(sqlite_engine, 20_000, T0)
    plan = _plan(sqlite_engine, _literal(oldest_expired(T0, host, BATCH), sqlite_engine))
    assert re.search(rf"SEARCH console_connections USING COVERING INDEX {index} \(", plan), plan
    assert "TEMP B-TREE" not in plan, plan
    delete = CONSOLE_CONNECTIONS.delete().where(
        CONSOLE_CONNECTIONS.c.id.in_(list(range(1, 501))), expired_again(T0)
    )
    plan = _plan(sqlite_engine, _literal(delete, sqlite_engine))
    assert "USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan


@pytest.mark.slow
def test_purging_a_hundred_thousand_rows_is_flat_and_keeps_validations_served(
    engine: Engine,
) -> None:
    bench = PurgeBench(engine, BATCH, lambda _message: None)
    small, big = bench.traced(SMALL), bench.traced(ROWS)
    assert (small.purged, big.purged) == (SMALL, ROWS)
    assert big.peak_bytes <= small.peak_bytes + FLAT_SLACK, (small, big)

    if engine.dialect.name == "postgresql":  # a thousand rows to an expiry: still no sort
        seed_expired(engine, SMALL, T0)
        plan = _plan(engine, _literal(oldest_expired(T0, None, BATCH), engine))
        assert "Sort" not in plan, plan
        assert bench.service.purge_expired() == SMALL

    served = bench.validating(ROWS)
    assert served.purged == ROWS
    assert len(served.batch_seconds) == ROWS // BATCH + 1
    first, last = served.batch_seconds[:10], served.batch_seconds[-11:-1]
    assert sorted(last)[5] <= 3 * sorted(first)[5], served.batch_seconds  # medians
    assert served.errors == 0
    assert len(served.during_ns) >= 100
    assert percentile(served.during_ns, 0.99) < MAX_VALIDATE_P99_NS
    assert bench.live_left() == LIVE_TOKENS
