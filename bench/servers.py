"""``python -m bench --backend postgresql|mariadb``: the library on a server
database against the raw driver (psycopg 3 / PyMySQL) running the same SQL.

The floor is what any token store on that server must do at least: one
autocommitted statement per call on one open connection, the very SQL the
library sends (its statements, compiled for the dialect), the token hashed
and the expiry checked, nothing else. The ratio is therefore the cost of
everything the library adds: token checks, the held connection's liveness
check (the pool's, for a contended call), row validation into a model.
Both sides share one private database (``console_auth_bench_<random>``,
created with the library's migration and dropped at the end), interleaved
round by round.

Then the library alone serves validate hits from 8 threads: throughput and
latency percentiles, the figures a console proxy under load sees.

The server comes from ``--url`` or ``CONSOLE_AUTH_TEST_POSTGRESQL_URL`` /
``CONSOLE_AUTH_TEST_MARIADB_URL`` (as for the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import sqlalchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.repository import (
    _BY_HASH,
    _BY_INSTANCE,
    _INSERT,
    _record_revocation,
)
from console_auth.adapters.sql.statements import Prepared
from console_auth.adapters.system import SecretsTokenSource
from console_auth.application import ConsoleAuthService
from console_auth.domain import TOKEN_BYTES
from console_auth.domain.types import to_microseconds

from .runner import BenchError, Series, expect, timed
from .workload import (
    ACCESS_URL_BASE,
    CONSOLE_TYPE,
    HOST,
    PORT,
    STORED_OPTIONS,
    TOKENS_PER_INSTANCE,
    TTL_US,
    BenchClock,
    Sizes,
    authorize_all,
    revoke_all,
    validate_all,
)

BACKENDS: Final = ("postgresql", "mariadb")
URL_ENV: Final = {
    "postgresql": "CONSOLE_AUTH_TEST_POSTGRESQL_URL",
    "mariadb": "CONSOLE_AUTH_TEST_MARIADB_URL",
}
OPERATIONS: Final = ("authorize", "validate_hit", "validate_miss", "revoke")
LABELS: Final = {
    "authorize": "authorize",
    "validate_hit": "validate (hit)",
    "validate_miss": "validate (miss)",
    "revoke": "revoke instance",
}
MIN_RATIO: Final = {"validate_hit": 0.5, "authorize": 0.8}
"""Library rate over raw-driver rate, at least; from the issue."""
THREADS: Final = 8

Progress = Callable[[str], None]


class Side(Protocol):
    name: str

    def authorize(self, instances: Sequence[uuid.UUID]) -> list[str]: ...

    def validate(self, tokens: Sequence[str]) -> int: ...

    def revoke(self, instances: Sequence[uuid.UUID]) -> int: ...

    def close(self) -> None: ...


def server_url(backend: str, url: str | None) -> URL:
    named = url or os.environ.get(URL_ENV[backend])
    if not named:
        raise BenchError(f"--backend {backend} needs --url or {URL_ENV[backend]}")
    try:
        return make_url(named)
    except Exception:
        raise BenchError("the server URL is not a SQLAlchemy URL") from None


@contextmanager
def private_database(server: URL, progress: Progress) -> Iterator[str]:
    """A fresh database on ``server`` with the library's schema; dropped after."""
    name = f"console_auth_bench_{secrets.token_hex(6)}"
    quote = '"' if server.get_backend_name() == "postgresql" else "`"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
        progress(f"created database {name} on {server.render_as_string()}")
        try:
            url = server.set(database=name).render_as_string(hide_password=False)
            open_engine(url, auto_migrate=True).dispose()
            yield url
        finally:
            force = " WITH (FORCE)" if quote == '"' else ""
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
    finally:
        admin.dispose()


class LibrarySide:
    name = "library"

    def __init__(self, url: str, clock: BenchClock) -> None:
        self.engine: Engine = open_engine(url)
        self.service = ConsoleAuthService(
            SqlConsoleConnectionRepository(Statements(self.engine)), clock, SecretsTokenSource()
        )

    def authorize(self, instances: Sequence[uuid.UUID]) -> list[str]:
        return authorize_all(self.service, instances)

    def validate(self, tokens: Sequence[str]) -> int:
        return validate_all(self.service, tokens)

    def revoke(self, instances: Sequence[uuid.UUID]) -> int:
        return revoke_all(self.service, instances)

    def close(self) -> None:
        self.engine.dispose()


class FloorSide:
    """One raw driver connection in autocommit, the library's own SQL."""

    name = "floor"

    def __init__(self, url: str, clock: BenchClock) -> None:
        parsed = make_url(url)
        compiler = create_engine(parsed)  # only its dialect: never connects
        self._insert, self._select, self._delete, self._record = (
            Prepared(compiler, statement)
            for statement in (
                _INSERT,
                _BY_HASH,
                _BY_INSTANCE,
                _record_revocation(compiler.dialect.name),
            )
        )
        self._clock = clock
        if parsed.get_backend_name() == "postgresql":
            import psycopg

            self._conn: Any = psycopg.connect(
                host=parsed.host,
                port=parsed.port or 5432,
                user=parsed.username,
                password=parsed.password,
                dbname=parsed.database,
                autocommit=True,
            )
        else:
            import pymysql

            self._conn = pymysql.connect(
                host=parsed.host or "127.0.0.1",
                port=parsed.port or 3306,
                user=parsed.username or "",
                password=parsed.password or "",
                database=parsed.database,
                charset="utf8mb4",
                autocommit=True,
            )
        self._cursor = self._conn.cursor()

    def authorize(self, instances: Sequence[uuid.UUID]) -> list[str]:
        cursor, now, sql, bind = self._cursor, self._clock.now, self._insert.sql, self._insert.bind
        options = json.dumps(STORED_OPTIONS, sort_keys=True)
        tokens = []
        for instance in instances:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            issued_us = to_microseconds(now())
            token_hash = hashlib.sha256(token.encode("ascii")).hexdigest()
            row = {
                "token_hash": token_hash,
                "instance_uuid": str(instance),
                "host": HOST,
                "port": PORT,
                "console_type": CONSOLE_TYPE,
                "options": options,
                "access_url_base": ACCESS_URL_BASE,
                "expires_at_us": issued_us + TTL_US,
                "issued_at_us": issued_us,
                "mac": token_hash,  # the MAC's size; computing it is the library's work
            }
            cursor.execute(sql, bind(row))
            tokens.append(token)
        return tokens

    def validate(self, tokens: Sequence[str]) -> int:
        cursor, now, sql, bind = self._cursor, self._clock.now, self._select.sql, self._select.bind
        hits = 0
        for token in tokens:
            token_hash = hashlib.sha256(token.encode("ascii")).hexdigest()
            cursor.execute(sql, bind({"token_hash": token_hash}))
            row = cursor.fetchone()
            if row is not None and row[7] > to_microseconds(now()):  # expires_at_us
                hits += 1
        return hits

    def revoke(self, instances: Sequence[uuid.UUID]) -> int:
        cursor, sql, bind, record = self._cursor, self._delete.sql, self._delete.bind, self._record
        deleted = 0
        for instance in instances:  # the library's two statements: the record, then the delete
            at = {
                "instance_uuid": str(instance),
                "revoked_at_us": to_microseconds(self._clock.now()),
            }
            cursor.execute(record.sql, record.bind(at))
            cursor.execute(sql, bind({"instance_uuid": str(instance)}))
            deleted += cursor.rowcount
        return deleted

    def close(self) -> None:
        self._cursor.close()
        self._conn.close()


def compare(url: str, sizes: Sizes, progress: Progress) -> dict[str, dict[str, Series]]:
    """Interleaved rounds of every operation, library and floor."""
    clock = BenchClock()
    library, floor = LibrarySide(url, clock), FloorSide(url, clock)
    series = {op: {"library": Series(), "floor": Series()} for op in OPERATIONS}
    try:
        rounds = [(0, sizes.warmup_ops)] if sizes.warmup_ops else []
        rounds += [(n, sizes.ops) for n in range(1, sizes.repeat + 1)]
        for number, ops in rounds:
            progress("warm-up round" if number == 0 else f"round {number}/{sizes.repeat}")
            sides: list[Side] = [library, floor] if number % 2 else [floor, library]
            for op, by_side in _round(sides, ops).items():
                if number:
                    for side, (count, elapsed) in by_side.items():
                        series[op][side].add(count, elapsed)
    finally:
        library.close()
        floor.close()
    return series


def _round(sides: Sequence[Side], ops: int) -> dict[str, dict[str, tuple[int, int]]]:
    """Each side authorizes, validates (hits, then misses) and revokes its
    own tokens, leaving the table as it found it."""
    out: dict[str, dict[str, tuple[int, int]]] = {op: {} for op in OPERATIONS}
    unknown = [secrets.token_urlsafe(TOKEN_BYTES) for _ in range(ops)]
    for side in sides:
        instances = [uuid.uuid4() for _ in range(ops // TOKENS_PER_INSTANCE)]
        issued_for = [i for i in instances for _ in range(TOKENS_PER_INSTANCE)]
        tokens, ns = timed(lambda: side.authorize(issued_for))  # noqa: B023 - called at once
        expect(len(tokens), ops, f"{side.name} authorize")
        out["authorize"][side.name] = (ops, ns)
        hits, ns = timed(lambda: side.validate(tokens))  # noqa: B023
        expect(hits, ops, f"{side.name} validate hits")
        out["validate_hit"][side.name] = (ops, ns)
        hits, ns = timed(lambda: side.validate(unknown))  # noqa: B023
        expect(hits, 0, f"{side.name} validate misses")
        out["validate_miss"][side.name] = (ops, ns)
        deleted, ns = timed(lambda: side.revoke(instances))  # noqa: B023
        expect(deleted, ops, f"{side.name} revoke")
        out["revoke"][side.name] = (len(instances), ns)
    return out


def threaded_validate(url: str, sizes: Sizes, progress: Progress) -> dict[str, float]:
    """``THREADS`` threads sharing one library engine validate hits."""
    clock = BenchClock()
    library = LibrarySide(url, clock)
    per_thread = max(sizes.ops, 10)
    try:
        instances = [uuid.uuid4() for _ in range(per_thread)]
        tokens = library.authorize(instances)
        latencies: list[list[int]] = [[] for _ in range(THREADS)]
        barrier = threading.Barrier(THREADS + 1)
        errors: list[BaseException] = []

        def client(number: int) -> None:
            validate, record = library.service.validate, latencies[number].append
            mine = tokens[number:] + tokens[:number]
            try:
                barrier.wait()
                for token in mine:
                    start = time.perf_counter_ns()
                    validate(token)
                    record(time.perf_counter_ns() - start)
            except BaseException as exc:
                errors.append(exc)

        progress(f"{THREADS} threads x {per_thread} validate hits")
        workers = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter_ns()
        for worker in workers:
            worker.join()
        wall_ns = time.perf_counter_ns() - start
        if errors:
            raise BenchError(f"a validating thread failed: {errors[0]!r}")
        library.revoke(instances)
    finally:
        library.close()
    every = sorted(ns for thread in latencies for ns in thread)
    return {
        "threads": THREADS,
        "validates": len(every),
        "per_s": len(every) * 1e9 / wall_ns,
        "p50_us": _percentile(every, 0.50) / 1e3,
        "p99_us": _percentile(every, 0.99) / 1e3,
        "max_us": every[-1] / 1e3,
    }


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def as_json(
    backend: str,
    server: URL,
    sizes: Sizes,
    series: dict[str, dict[str, Series]],
    threaded: dict[str, float],
) -> dict[str, Any]:
    medians = {
        op: {side: statistics.median(s.rates()) for side, s in by_side.items()}
        for op, by_side in series.items()
    }
    ratio = {op: m["library"] / m["floor"] for op, m in medians.items()}
    targets = [
        {"name": f"{op} ratio", "value": ratio[op], "limit": limit, "at_least": True}
        | {"passed": ratio[op] >= limit}
        for op, limit in MIN_RATIO.items()
    ]
    return {
        "backend": backend,
        "server": server.render_as_string(hide_password=True),
        "environment": {
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "driver": _driver_version(backend),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "sizes": {"ops": sizes.ops, "repeat": sizes.repeat, "warmup_ops": sizes.warmup_ops},
        "operations": {
            op: {
                "library_per_s": m["library"],
                "floor_per_s": m["floor"],
                "ratio": ratio[op],
                "library_us_per_op": 1e6 / m["library"],
                "floor_us_per_op": 1e6 / m["floor"],
            }
            for op, m in medians.items()
        },
        "threaded_validate": threaded,
        "targets": targets,
        "passed": all(t["passed"] for t in targets),
    }


def _driver_version(backend: str) -> str:
    if backend == "postgresql":
        import psycopg

        return f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()})"
    import pymysql

    return f"PyMySQL {pymysql.__version__}"


def as_table(output: dict[str, Any]) -> str:
    sizes, threaded = output["sizes"], output["threaded_validate"]
    floor = "psycopg 3" if output["backend"] == "postgresql" else "PyMySQL"
    lines = [
        f"console-auth on {output['backend']} ({output['server']}) vs raw {floor}, same SQL, "
        f"autocommit - median of {sizes['repeat']} interleaved rounds, {sizes['ops']:,} ops each",
        "",
        f"{'operation':<17}{'unit':>9}{'library/s':>11}{'floor/s':>11}{'lib us':>9}"
        f"{'floor us':>10}{'ratio':>8}  target",
    ]
    targets = {t["name"].removesuffix(" ratio"): t for t in output["targets"]}
    for op, figures in output["operations"].items():
        target = targets.get(op)
        verdict = (
            ""
            if target is None
            else f">= {target['limit']:.2f}x {'PASS' if target['passed'] else 'FAIL'}"
        )
        unit = "instance" if op == "revoke" else "op"
        lines.append(
            f"{LABELS[op]:<17}{unit:>9}{figures['library_per_s']:>11,.0f}"
            f"{figures['floor_per_s']:>11,.0f}{figures['library_us_per_op']:>9.1f}"
            f"{figures['floor_us_per_op']:>10.1f}{figures['ratio']:>7.2f}x  {verdict}".rstrip()
        )
    passed = sum(t["passed"] for t in output["targets"])
    lines += [
        "",
        f"library validate hits from {threaded['threads']} threads, one engine: "
        f"{threaded['per_s']:,.0f}/s, p50 {threaded['p50_us']:.0f} us, "
        f"p99 {threaded['p99_us']:.0f} us, max {threaded['max_us']:.0f} us "
        f"({threaded['validates']:,} calls)",
        "",
        f"{passed}/{len(output['targets'])} targets pass",
    ]
    return "\n".join(lines)


def main(
    backend: str, url: str | None, sizes: Sizes, progress: Progress, *, as_json_output: bool
) -> bool:
    """Run, print, and say whether every target passed."""
    server = server_url(backend, url)
    with private_database(server, progress) as database:
        series = compare(database, sizes, progress)
        threaded = threaded_validate(database, sizes, progress)
    output = as_json(backend, server, sizes, series, threaded)
    print(json.dumps(output, indent=2) if as_json_output else as_table(output))
    return bool(output["passed"])
