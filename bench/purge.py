"""``python -m bench --purge-scale N [--backend sqlite|postgresql|mariadb]``:
purge N expired rows in bounded batches, and show that it scales.

Three purges of N freshly seeded rows (see ``run``) show:

- **Throughput**: rows per second of ``service.purge_expired()``, the number
  of batches (``--purge-batch``, the ``purge_batch_size`` setting), and the
  median time of the first and of the last ten batches: equal when a batch
  costs the same at any depth of the table.
- **Memory flat in N**: the growth of the process's resident memory over the
  purge (sampled every few milliseconds from ``/proc/self/statm``; the
  ``ru_maxrss`` high-water mark where there is no ``/proc``), and, in a run
  of its own because tracing slows it several times over, the peak of the
  Python heap (``tracemalloc``).
- **Validations keep being served**: a second thread validates live tokens
  all along a purge (its own pooled connection from the same engine, in the
  same process, so sharing the GIL as well: harsher than a purge job in its
  own process). Its latency percentiles are printed beside those of a quiet
  second just before.

The rows are written by the database itself (``generate_series``,
MariaDB's ``seq_1_to_N``, a recursive CTE on SQLite), 100,000 per
transaction, so seeding costs this process no memory. They look issued:
ids in the order of expiry, hashes and instance uuids in random order (so
every deleted row costs its unique and instance index an entry anywhere in
them, as in production), and a thousand rows to each expiry (a bulk load,
one clock tick): the case where a purge that sorted would read every
expired row per batch. Servers get a private database, dropped at the end.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.pool import NullPool

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from console_auth.adapters.system import SecretsTokenSource
from console_auth.application import ConsoleAuthService, ServicePolicy
from console_auth.application.ports import StoredConnection
from console_auth.application.service import purge_in_batches
from console_auth.domain import ConsoleConnection
from console_auth.domain.types import to_microseconds

from .runner import BenchError
from .workload import (
    ACCESS_URL_BASE,
    CONSOLE_TYPE,
    LONG_TTL,
    OPTIONS,
    PORT,
    STORED_OPTIONS,
    TTL_US,
    BenchClock,
)

BACKENDS: Final = ("sqlite", "postgresql", "mariadb")
SEED_CHUNK: Final = 100_000
"""Rows per seeding transaction."""
ROWS_PER_EXPIRY: Final = 1_000
"""Rows sharing one expiry: tokens issued in one clock tick, a bulk load."""
HOSTS: Final = 50
LIVE_TOKENS: Final = 200
"""Live tokens the validating thread cycles through."""
QUIET_S: Final = 1.0
"""Seconds of validation measured before the purge starts."""
RSS_SAMPLE_S: Final = 0.005
MAX_TRACED_PEAK: Final = 16 * 2**20
"""Bytes: a batch of ids and one statement's buffers, far from any N."""
MAX_BATCH_DRIFT: Final = 3.0
"""The last batches may cost at most this many times the first ones."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PurgeScale:
    """One run's figures; see ``run`` for the three purges they come from."""

    backend: str
    rows: int
    batch: int
    purged: int
    """The fewest rows any of the three purges deleted."""
    seconds: float
    rows_per_s: float
    batches: int
    first_batches_ms: float
    last_batches_ms: float
    rss_growth_bytes: int
    traced_peak_bytes: int
    concurrent_rows_per_s: float
    validates: int
    validate_errors: int
    validates_per_s: float
    validate_p50_us: float
    validate_p99_us: float
    validate_max_us: float
    quiet_p50_us: float
    quiet_p99_us: float
    live_left: int

    def targets(self) -> list[dict[str, Any]]:
        drift = self.last_batches_ms / max(self.first_batches_ms, 1e-6)
        checks = [
            ("every expired row purged", self.purged, self.rows, self.purged == self.rows),
            ("live rows kept", self.live_left, LIVE_TOKENS, self.live_left == LIVE_TOKENS),
            (
                "Python heap peak (bytes)",
                self.traced_peak_bytes,
                MAX_TRACED_PEAK,
                self.traced_peak_bytes <= MAX_TRACED_PEAK,
            ),
            ("last/first batch time", drift, MAX_BATCH_DRIFT, drift <= MAX_BATCH_DRIFT),
            ("validates failed", self.validate_errors, 0, self.validate_errors == 0),
        ]
        return [
            {"name": name, "value": value, "limit": limit, "passed": passed}
            for name, value, limit, passed in checks
        ]


@dataclass(frozen=True)
class Alone:
    purged: int
    seconds: float
    batch_seconds: list[float]
    rss_growth_bytes: int


@dataclass(frozen=True)
class Validating:
    purged: int
    seconds: float
    quiet_ns: list[int]
    """Sorted latencies of validates in the quiet second before the purge."""
    during_ns: list[int]
    """Sorted latencies of validates during the purge."""
    errors: int
    batch_seconds: list[float]


@dataclass(frozen=True)
class Traced:
    purged: int
    peak_bytes: int


class PurgeBench:
    """A service on ``engine`` (a migrated database) with ``LIVE_TOKENS``
    live tokens, and the three ways ``run`` purges; each seeds its rows."""

    def __init__(self, engine: Engine, batch: int, progress: Progress) -> None:
        self.engine = engine
        self.batch = batch
        self._progress = progress
        self._clock = BenchClock()
        self._timed = _TimedBatches(SqlConsoleConnectionRepository(Statements(engine)))
        self.service = ConsoleAuthService(
            self._timed,
            self._clock,
            SecretsTokenSource(),
            ServicePolicy(purge_batch_size=batch, purge_grace=timedelta(0)),
        )
        self.live = [
            self.service.authorize(
                uuid.uuid4(), "compute-0", PORT, CONSOLE_TYPE, options=OPTIONS, ttl=LONG_TTL
            ).token.get_secret_value()
            for _ in range(LIVE_TOKENS)
        ]

    def alone(self, rows: int) -> Alone:
        """Rate, per-batch times and resident memory growth."""
        self._seed(rows, "alone")
        sampler = _RssSampler()
        sampler.start()
        started = time.perf_counter()
        try:
            purged = self._purge(timed=True)
        finally:
            seconds = time.perf_counter() - started
            rss_growth = sampler.stop()
        return Alone(purged, seconds, self._timed.take(), rss_growth)

    def validating(self, rows: int) -> Validating:
        """The purge while another thread validates, and that thread's latencies."""
        self._seed(rows, "while a thread validates")
        validator = _Validator(self.service, self.live)
        validator.start()
        try:
            time.sleep(QUIET_S)
            quiet = validator.lap()
            started = time.perf_counter()
            purged = self._purge(timed=True)
            seconds = time.perf_counter() - started
            during = validator.lap()
        finally:
            errors = validator.stop()
        return Validating(purged, seconds, quiet, during, errors, self._timed.take())

    def traced(self, rows: int) -> Traced:
        """The Python heap's peak during the purge (``tracemalloc``, every
        thread), in a run of its own: tracing slows it several times over.
        Nothing of the benchmark's grows with N meanwhile (no batch times)."""
        self._seed(rows, "traced")
        tracemalloc.start()
        try:
            purged = self._purge(timed=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return Traced(purged, peak)

    def live_left(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(CONSOLE_CONNECTIONS)) or 0)

    def _seed(self, rows: int, phase: str) -> None:
        self._progress(f"{phase}: seeding {rows:,} expired rows")
        seed_expired(self.engine, rows, self._clock.now())
        self._progress(f"{phase}: purging in batches of {self.batch:,}")

    def _purge(self, *, timed: bool) -> int:
        self._timed.batch_seconds = [] if timed else None
        return self.service.purge_expired()


def run(
    engine: Engine, rows: int, batch: int, progress: Progress, backend: str = ""
) -> PurgeScale:
    """Three purges of ``rows`` freshly seeded expired rows in the (migrated,
    empty) database of ``engine``, beside ``LIVE_TOKENS`` live ones: alone,
    while a thread validates, and under ``tracemalloc``."""
    bench = PurgeBench(engine, batch, progress)
    alone = bench.alone(rows)
    validating = bench.validating(rows)
    traced = bench.traced(rows)
    times, during, quiet = alone.batch_seconds or [0.0], validating.during_ns, validating.quiet_ns
    return PurgeScale(
        backend=backend or engine.dialect.name,
        rows=rows,
        batch=batch,
        purged=min(alone.purged, validating.purged, traced.purged),
        seconds=alone.seconds,
        rows_per_s=alone.purged / alone.seconds,
        batches=len(times),
        first_batches_ms=statistics.median(times[:10]) * 1e3,
        last_batches_ms=statistics.median(times[-11:-1] or times) * 1e3,
        rss_growth_bytes=alone.rss_growth_bytes,
        traced_peak_bytes=traced.peak_bytes,
        concurrent_rows_per_s=validating.purged / validating.seconds,
        validates=len(during),
        validate_errors=validating.errors,
        validates_per_s=len(during) / validating.seconds,
        validate_p50_us=percentile(during, 0.50) / 1e3,
        validate_p99_us=percentile(during, 0.99) / 1e3,
        validate_max_us=(during[-1] if during else 0) / 1e3,
        quiet_p50_us=percentile(quiet, 0.50) / 1e3,
        quiet_p99_us=percentile(quiet, 0.99) / 1e3,
        live_left=bench.live_left(),
    )


def seed_expired(engine: Engine, rows: int, now: datetime) -> None:
    """``rows`` expired connections, written by the database itself.

    Unique hashes and instance uuids in random order, ``HOSTS`` hosts, the
    workload's options and base URL, and expiries before ``now``, rising
    with the id, ``ROWS_PER_EXPIRY`` rows to each.
    """
    dialect = engine.dialect.name
    now_us = to_microseconds(now)
    params = {
        "options": json.dumps(STORED_OPTIONS, sort_keys=True),
        "base": ACCESS_URL_BASE,
        "port": PORT,
        "console_type": CONSOLE_TYPE,
        "now_us": now_us,
        "ttl_us": TTL_US,
        "rows": rows,
    }
    # A plain engine of its own: the library's bounds each read to a few
    # seconds, and a chunk of a big seed may take longer on a busy server.
    seeder = create_engine(engine.url, poolclass=NullPool)
    try:
        for low in range(1, rows + 1, SEED_CHUNK):
            high = min(low + SEED_CHUNK - 1, rows)
            with seeder.begin() as conn:
                conn.execute(text(_seed_sql(dialect, low, high)), params)
        analyze = "ANALYZE TABLE" if dialect in ("mysql", "mariadb") else "ANALYZE"
        with seeder.begin() as conn:
            conn.execute(text(f"{analyze} console_connections"))
    finally:
        seeder.dispose()


def _seed_sql(dialect: str, low: int, high: int) -> str:
    """Rows ``low..high`` as a compute API would have issued them: ids in
    the order of issue and expiry, ``ROWS_PER_EXPIRY`` rows to an expiry,
    hashes (and instance uuids) in random order, ``HOSTS`` hosts."""
    mysql = dialect in ("mysql", "mariadb")

    def concat(*parts: str) -> str:
        return f"CONCAT({', '.join(parts)})" if mysql else " || ".join(parts)

    if dialect == "postgresql":
        source = f"generate_series({low}, {high}) AS n"
        token_hash = "encode(sha256(n::text::bytea), 'hex')"
    elif mysql:
        source = f"(SELECT seq AS n FROM seq_{low}_to_{high}) AS s"
        token_hash = "SHA2(n, 256)"
    else:
        source = (
            f"(WITH RECURSIVE s(n) AS (SELECT {low} UNION ALL SELECT n + 1 FROM s "
            f"WHERE n < {high}) SELECT n FROM s)"
        )
        token_hash = "lower(hex(randomblob(32)))"
    instance = concat(
        "SUBSTR(h, 1, 8)",
        "'-'",
        "SUBSTR(h, 9, 4)",
        "'-4'",
        "SUBSTR(h, 14, 3)",
        "'-8'",
        "SUBSTR(h, 18, 3)",
        "'-'",
        "SUBSTR(h, 21, 12)",
    )
    host = concat("'compute-'", f"CAST(n % {HOSTS} AS {'CHAR' if mysql else 'TEXT'})")
    divided = "DIV" if mysql else "/"  # integer division
    expires = f"(:now_us - 1 - (:rows - n) {divided} {ROWS_PER_EXPIRY})"
    columns = (
        "token_hash, instance_uuid, host, port, console_type, options, access_url_base, "
        "expires_at_us, issued_at_us"
    )
    return (
        f"INSERT INTO console_connections ({columns}) "
        f"SELECT h, {instance}, {host}, :port, :console_type, :options, :base, "
        f"{expires}, {expires} - :ttl_us "
        f"FROM (SELECT n, {token_hash} AS h FROM {source}) AS numbered"
    )


class _TimedBatches:
    """The repository, with the time of every ``delete_expired`` call kept."""

    def __init__(self, inner: SqlConsoleConnectionRepository) -> None:
        self._inner = inner
        self.batch_seconds: list[float] | None = None
        """``None``: time nothing."""

    def take(self) -> list[float]:
        taken, self.batch_seconds = self.batch_seconds or [], None
        return taken

    def add(self, connection: ConsoleConnection) -> None:
        self._inner.add(connection)

    def get_by_hash(
        self, token_hash: str, instance_uuid: uuid.UUID | None = None
    ) -> ConsoleConnection | None:
        return self._inner.get_by_hash(token_hash, instance_uuid)

    def delete_by_instance(self, instance_uuid: uuid.UUID, revoked_at: datetime) -> int:
        return self._inner.delete_by_instance(instance_uuid, revoked_at)

    def revocations(self, instance_uuids: Collection[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        return self._inner.revocations(instance_uuids)

    def delete_revocations(self, before: datetime) -> int:
        return self._inner.delete_revocations(before)

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        return purge_in_batches(self, now, host, batch_size)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        if self.batch_seconds is None:
            return self._inner.delete_expired(now, host, limit)
        started = time.perf_counter()
        deleted = self._inner.delete_expired(now, host, limit)
        self.batch_seconds.append(time.perf_counter() - started)
        return deleted

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[uuid.UUID], batch_size: int
    ) -> int:
        return self._inner.purge_instances(now, instance_uuids, batch_size)

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: uuid.UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        return self._inner.connections(
            after, limit, instance_uuid=instance_uuid, host=host, live_at=live_at
        )

    def delete_by_hash(self, token_hash: str) -> int:
        return self._inner.delete_by_hash(token_hash)

    def looked_in(self, instance_uuid: uuid.UUID | None) -> str | None:
        return self._inner.looked_in(instance_uuid)


class _Validator(threading.Thread):
    """Validates live tokens until stopped; ``lap()`` hands over the sorted
    latencies (ns) since the previous lap."""

    def __init__(self, service: ConsoleAuthService, tokens: Sequence[str]) -> None:
        super().__init__(name="bench-validator", daemon=True)
        self._service = service
        self._tokens = tokens
        self._latencies: list[int] = []
        self._errors = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def run(self) -> None:
        validate, tokens, n = self._service.validate, self._tokens, 0
        while not self._stopped.is_set():
            token = tokens[n % len(tokens)]
            n += 1
            started = time.perf_counter_ns()
            try:
                validate(token)
            except Exception:
                with self._lock:
                    self._errors += 1
                continue
            elapsed = time.perf_counter_ns() - started
            with self._lock:
                self._latencies.append(elapsed)

    def lap(self) -> list[int]:
        with self._lock:
            lap, self._latencies = self._latencies, []
        return sorted(lap)

    def stop(self) -> int:
        """Stop; the number of validations that raised."""
        self._stopped.set()
        self.join(timeout=10)
        return self._errors


class _RssSampler(threading.Thread):
    """The peak resident set size over a stretch, as growth over its start."""

    def __init__(self) -> None:
        super().__init__(name="bench-rss", daemon=True)
        self._stopped = threading.Event()
        self._start_rss = _rss()
        self._start_max = _max_rss()
        self._peak = self._start_rss or 0

    def run(self) -> None:
        while not self._stopped.wait(RSS_SAMPLE_S):
            self._peak = max(self._peak, _rss() or 0)

    def stop(self) -> int:
        self._stopped.set()
        self.join(timeout=5)
        if self._start_rss is None:  # no /proc: the high-water mark is all there is
            return max(0, _max_rss() - self._start_max)
        return max(0, max(self._peak, _rss() or 0) - self._start_rss)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _max_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


def percentile(ordered: Sequence[int], fraction: float) -> float:
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


@contextmanager
def database(backend: str, url: str | None, progress: Progress) -> Iterator[Engine]:
    """A migrated, empty database of ``backend``: a temporary SQLite file, or
    a private database on the server (see ``bench.servers``)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="console-auth-purge-") as workdir:
            engine = open_engine(f"sqlite:///{Path(workdir) / 'purge.sqlite3'}", auto_migrate=True)
            try:
                yield engine
            finally:
                engine.dispose()
        return
    from .servers import private_database, server_url  # needs a server driver

    with private_database(server_url(backend, url), progress) as db_url:
        engine = open_engine(db_url)
        try:
            yield engine
        finally:
            engine.dispose()


def as_table(result: PurgeScale) -> str:
    mib = 2**20
    lines = [
        f"purge of {result.rows:,} expired rows on {result.backend}, "
        f"in batches of {result.batch:,}",
        "",
        f"alone       {result.seconds:.1f} s: {result.rows_per_s:,.0f} rows/s, "
        f"{result.batches:,} batches (median of the first 10: {result.first_batches_ms:.1f} ms, "
        f"of the last 10: {result.last_batches_ms:.1f} ms)",
        f"memory      resident growth {result.rss_growth_bytes / mib:.2f} MiB; "
        f"Python heap peak {result.traced_peak_bytes / mib:.2f} MiB (tracemalloc, own run)",
        f"validating  {result.concurrent_rows_per_s:,.0f} rows/s while another thread "
        f"validated {result.validates:,} times ({result.validates_per_s:,.0f}/s): "
        f"p50 {result.validate_p50_us:,.0f} us, p99 {result.validate_p99_us:,.0f} us, "
        f"max {result.validate_max_us:,.0f} us, {result.validate_errors} failed "
        f"(quiet: p50 {result.quiet_p50_us:,.0f} us, p99 {result.quiet_p99_us:,.0f} us)",
        "",
    ]
    lines += [
        f"{t['name']:<26}{t['value']:>14,.2f}  limit {t['limit']:,}  "
        f"{'PASS' if t['passed'] else 'FAIL'}"
        for t in result.targets()
    ]
    return "\n".join(lines)


def as_json(result: PurgeScale) -> dict[str, Any]:
    targets = result.targets()
    return {
        "purge_scale": asdict(result),
        "targets": targets,
        "passed": all(t["passed"] for t in targets),
    }


def main(
    backend: str,
    url: str | None,
    rows: int,
    batch: int,
    progress: Progress,
    *,
    as_json_output: bool,
) -> bool:
    """Run, print, and say whether every target passed."""
    if backend not in BACKENDS:
        raise BenchError(f"--purge-scale runs on {', '.join(BACKENDS)}, not {backend}")
    if rows < 1 or batch < 1:
        raise BenchError("--purge-scale and --purge-batch must be at least 1")
    with database(backend, url, progress) as engine:
        result = run(engine, rows, batch, progress, backend)
    print(json.dumps(as_json(result), indent=2) if as_json_output else as_table(result))
    return all(t["passed"] for t in result.targets())
