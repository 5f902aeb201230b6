"""``python -m bench --metrics``: the validate rate with the Prometheus
recorder wired, against the same service without one (the ``metrics``
extra), and that one against a validate with no reporting hook at all.

The services share one repository, so they read the same rows through the
same connection; the only difference left is the recording. Within each
round they take turns every ``CHUNK`` calls, each leading as often (the
first to read a token's page pays for it); the medians of the rounds'
rates are reported.
The SQLite ratio is the target; the in-memory store, with no I/O at all,
shows the recording's whole cost against the service's own work.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from uuid import UUID

from prometheus_client import CollectorRegistry

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.prometheus import PrometheusConsoleEvents
from console_auth.adapters.sql.engine import open_engine
from console_auth.adapters.sql.repository import SqlConsoleConnectionRepository
from console_auth.adapters.sql.statements import Statements
from console_auth.adapters.system import SecretsTokenSource
from console_auth.application import ConsoleAuthService, ConsoleConnectionRepository
from console_auth.domain.types import to_microseconds

from . import report
from .runner import Progress, Series, expect
from .servers import URL_ENV, private_database, server_url
from .sqlite import bulk_insert, create_schema, fake_rows, known_tokens, sqlite_url
from .workload import LONG_TTL, T0, BenchClock, authorize_all, validate_all

MIN_RATIO: Final = 0.95
"""Metered validate rate over the bare one, at least; from the issue."""
MIN_SILENT_RATIO: Final = 0.98
"""Bare (no recorder) over plain (no hooks at all), at least: "nothing
measurable" within the rounds' spread."""
SIDES: Final = ("plain", "bare", "metered")


def sizes(*, quick: bool, repeat: int | None) -> dict[str, int]:
    base = (
        {"rows": 200, "ops": 100, "repeat": 3, "warmup": 50}
        if quick
        else {"rows": 10_000, "ops": 5_000, "repeat": 11, "warmup": 1_000}
    )
    if repeat is not None:
        base["repeat"] = repeat
    return base


def _services(
    repository: ConsoleConnectionRepository, clock: BenchClock, backend: str
) -> dict[str, ConsoleAuthService]:
    recorder = PrometheusConsoleEvents(CollectorRegistry(), backend=backend)
    return {
        "plain": _Unobserved(repository, clock, SecretsTokenSource()),
        "bare": ConsoleAuthService(repository, clock, SecretsTokenSource()),
        "metered": ConsoleAuthService(repository, clock, SecretsTokenSource(), events=recorder),
    }


CHUNK: Final = 100
"""Calls per turn: the sides alternate every ``CHUNK`` calls within a round,
so a neighbour's burst of load lands on both rather than on one side's
whole batch (a 5% difference is smaller than a busy machine's swings).
Each turn is timed in this thread's CPU time, not wall time: the work is
all CPU (the file is in the page cache), and time spent descheduled by
other processes is then nobody's."""


def _measure(
    name: str,
    services: dict[str, ConsoleAuthService],
    pool: list[str],
    size: dict[str, int],
    progress: Progress,
    *,
    hits: bool,
    clock: Callable[[], int] = time.thread_time_ns,
) -> dict[str, Series]:
    rng = random.Random(20260101)
    series = {side: Series() for side in SIDES}
    repeat = size["repeat"]
    for number in range(repeat + 1):
        ops = size["warmup"] if number == 0 else size["ops"]
        progress(f"{name}: {f'round {number}/{repeat}' if number else 'warm-up'}")
        elapsed = dict.fromkeys(SIDES, 0)
        found = dict.fromkeys(SIDES, 0)
        gc.collect()
        for turn in range(0, ops, CHUNK):
            calls = min(CHUNK, ops - turn)
            present = (  # the same tokens for both: neither finds pages the other did not
                rng.choices(pool, k=calls)
                if hits
                else [SecretsTokenSource().new_token() for _ in range(calls)]
            )
            first = (number + turn // CHUNK) % len(SIDES)  # each side leads as often
            for side in SIDES[first:] + SIDES[:first]:
                started = clock()
                found[side] += validate_all(services[side], present)
                elapsed[side] += clock() - started
        for side in SIDES:
            expect(found[side], ops if hits else 0, f"{name} {side} validate")
            if number:
                series[side].add(ops, elapsed[side])
    return series


def measure(progress: Progress, size: dict[str, int]) -> dict[str, dict[str, Series]]:
    """Validate hits and misses on a SQLite file, hits in memory, and hits on
    the PostgreSQL and MariaDB servers the test variables name, if any."""
    clock = BenchClock()
    out: dict[str, dict[str, Series]] = {}
    with tempfile.TemporaryDirectory(prefix="console-auth-bench-metrics-") as workdir:
        path = Path(workdir) / "metrics.sqlite3"
        progress(f"populating {size['rows']:,} rows")
        create_schema(path)
        rng = random.Random(20260102)
        known = known_tokens(size["rows"], size["rows"] // 2, rng)
        bulk_insert(
            path,
            fake_rows(
                size["rows"],
                expires_us=to_microseconds(T0 + LONG_TTL),
                issued_us=to_microseconds(T0),
                rng=rng,
                known=known,
            ),
        )
        engine = open_engine(sqlite_url(path))
        try:
            services = _services(
                SqlConsoleConnectionRepository(Statements(engine)), clock, "database"
            )
            pool = list(known.values())
            out["sqlite_hit"] = _measure("sqlite hit", services, pool, size, progress, hits=True)
            out["sqlite_miss"] = _measure(
                "sqlite miss", services, pool, size, progress, hits=False
            )
        finally:
            engine.dispose()
    memory = _services(InMemoryConsoleConnectionRepository(), clock, "memory")
    instances = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(size["rows"] // 10)]
    issued = authorize_all(memory["bare"], instances)
    out["memory_hit"] = _measure("memory hit", memory, issued, size, progress, hits=True)
    for backend in SERVERS:
        if os.environ.get(URL_ENV[backend]):
            out[f"{backend}_hit"] = _server_hits(backend, clock, size, progress)
    return out


SERVERS: Final = ("postgresql", "mariadb")


def _server_hits(
    backend: str, clock: BenchClock, size: dict[str, int], progress: Progress
) -> dict[str, Series]:
    """Hits on a server named by the test variables, in wall time: a round
    trip's wait is part of what the recording is weighed against there."""
    with private_database(server_url(backend, None), progress) as url:
        engine = open_engine(url)
        try:
            repository = SqlConsoleConnectionRepository(Statements(engine))
            services = _services(repository, clock, backend)
            instances = [uuid.UUID(int=n + 1, version=4) for n in range(size["rows"] // 10)]
            issued = authorize_all(services["bare"], instances)
            small = {**size, "ops": size["ops"] // 5, "warmup": size["warmup"] // 5}
            wall = time.perf_counter_ns
            return _measure(
                f"{backend} hit", services, issued, small, progress, hits=True, clock=wall
            )
        finally:
            engine.dispose()


LABELS: Final = {
    "sqlite_hit": "validate (hit), SQLite",
    "sqlite_miss": "validate (miss), SQLite",
    "memory_hit": "validate (hit), memory",
    "postgresql_hit": "validate (hit), PostgreSQL",
    "mariadb_hit": "validate (hit), MariaDB",
}


class _Unobserved(ConsoleAuthService):
    """validate with no reporting hook at all: what a silent service is weighed against."""

    def validate(self, token: str | bytes, instance_uuid: UUID | str | None = None) -> Any:
        return self._validate(token, instance_uuid)


def ratio(by_side: dict[str, Series], side: str = "metered", base: str = "bare") -> float:
    return report.median_rate(by_side[side]) / report.median_rate(by_side[base])


def silent_ratio(by_side: dict[str, Series]) -> float:
    return ratio(by_side, "bare", "plain")


def main(size: dict[str, int], progress: Progress, *, as_json_output: bool) -> bool:
    measured = measure(progress, size)
    passed = (
        ratio(measured["sqlite_hit"]) >= MIN_RATIO
        and silent_ratio(measured["sqlite_hit"]) >= MIN_SILENT_RATIO
    )
    if as_json_output:
        print(
            json.dumps(
                {
                    "environment": report.environment(),
                    "sizes": size,
                    "cases": {
                        case: {
                            "bare_per_s": report.median_rate(by_side["bare"]),
                            "metered_per_s": report.median_rate(by_side["metered"]),
                            "ratio": ratio(by_side),
                            "plain_per_s": report.median_rate(by_side["plain"]),
                            "silent_ratio": silent_ratio(by_side),
                            "bare_runs_per_s": by_side["bare"].rates(),
                            "metered_runs_per_s": by_side["metered"].rates(),
                        }
                        for case, by_side in measured.items()
                    },
                    "target": {
                        "case": "sqlite_hit",
                        "min_ratio": MIN_RATIO,
                        "min_silent_ratio": MIN_SILENT_RATIO,
                        "passed": passed,
                    },
                },
                indent=2,
            )
        )
        return passed
    lines = [
        f"validate with the Prometheus recorder wired vs without - median of {size['repeat']} "
        f"interleaved rounds, {size['ops']:,} ops each, {size['rows']:,} rows; silent: no "
        "recorder over no reporting hook at all",
        "",
        f"{'case':<26}{'bare/s':>12}{'metered/s':>12}{'bare us':>9}{'metered us':>12}"
        f"{'ratio':>8}{'silent':>8}  target",
    ]
    for case, by_side in measured.items():
        verdict = (
            f">= {MIN_RATIO:.2f}x, silent >= {MIN_SILENT_RATIO:.2f}x "
            f"{'PASS' if passed else 'FAIL'}"
            if case == "sqlite_hit"
            else ""
        )
        lines.append(
            f"{LABELS[case]:<26}{report.median_rate(by_side['bare']):>12,.0f}"
            f"{report.median_rate(by_side['metered']):>12,.0f}"
            f"{report.median_us_per_op(by_side['bare']):>9.1f}"
            f"{report.median_us_per_op(by_side['metered']):>12.1f}"
            f"{ratio(by_side):>7.3f}x{silent_ratio(by_side):>7.3f}x  {verdict}".rstrip()
        )
    spread = statistics.pstdev(
        m / b
        for m, b in zip(
            measured["sqlite_hit"]["metered"].rates(),
            measured["sqlite_hit"]["bare"].rates(),
            strict=True,
        )
    )
    lines += ["", f"per-round ratio spread (sqlite hit, pstdev): {spread:.3f}"]
    print("\n".join(lines))
    return passed
