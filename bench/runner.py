"""The measurements: library against floor, and lookups against table size.

Repetitions interleave the sides (and alternate which goes first), so a
noisy neighbour or a CPU frequency change lands on both rather than on
whichever happened to run at that moment; medians then drop the outliers.
"""

from __future__ import annotations

import gc
import random
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final, TypeVar

from console_auth.application import ServicePolicy
from console_auth.domain import TOKEN_BYTES
from console_auth.domain.types import to_microseconds

from .sqlite import (
    BIG_FILE,
    FLOOR_FILE,
    LIBRARY_FILE,
    SMALL_FILE,
    FloorSide,
    LibrarySide,
    Side,
    bulk_insert,
    create_schema,
    fake_rows,
    known_tokens,
    schema_of,
)
from .workload import (
    LONG_TTL,
    ROUND_STEP,
    T0,
    TOKENS_PER_INSTANCE,
    TTL_US,
    BenchClock,
    Sizes,
)

Progress = Callable[[str], None]
_T = TypeVar("_T")

OPERATIONS: Final = ("authorize", "validate_hit", "validate_miss", "revoke", "purge")
UNITS: Final = {
    "authorize": "op",
    "validate_hit": "op",
    "validate_miss": "op",
    "revoke": "instance",
    "purge": "row",
}
"""What one counted unit is: a purge is one call over many rows, so its
rate is rows per second; a revoke deletes ``TOKENS_PER_INSTANCE`` rows."""


class BenchError(RuntimeError):
    """A side did not do the work asked of it: its timing would be a lie."""


@dataclass
class Series:
    """Timed repetitions of one operation on one side."""

    counts: list[int] = field(default_factory=list)
    elapsed_ns: list[int] = field(default_factory=list)

    def add(self, count: int, elapsed_ns: int) -> None:
        self.counts.append(count)
        self.elapsed_ns.append(max(elapsed_ns, 1))

    def rates(self) -> list[float]:
        """Units per second, one per repetition."""
        return [c * 1e9 / ns for c, ns in zip(self.counts, self.elapsed_ns, strict=True)]


@dataclass
class Comparison:
    """Library and floor series per operation, plus what keeps them honest."""

    series: dict[str, dict[str, Series]]
    schema_identical: bool


@dataclass
class Growth:
    """Validate-hit series on a small and a big table, per side."""

    small_rows: int
    big_rows: int
    series: dict[str, dict[str, Series]]
    """``series[side][size]`` with size ``"small"`` or ``"big"``."""


def timed(call: Callable[[], _T]) -> tuple[_T, int]:
    """Run ``call`` once on a freshly collected heap; its result and nanoseconds.

    The collector stays on: the library's allocations trigger collections in
    production too, and that cost belongs to it.
    """
    gc.collect()
    start = time.perf_counter_ns()
    result = call()
    return result, time.perf_counter_ns() - start


def expect(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise BenchError(f"{what}: expected {expected}, got {actual}")


def compare(workdir: Path, sizes: Sizes, progress: Progress) -> Comparison:
    """Time every operation on the library and on the floor, interleaved."""
    library_path, floor_path = workdir / LIBRARY_FILE, workdir / FLOOR_FILE
    progress("creating both databases with the library's migration")
    create_schema(library_path)
    create_schema(floor_path)
    schema_identical = schema_of(library_path) == schema_of(floor_path)
    if not schema_identical:
        raise BenchError("library and floor databases have different schemas")
    rng = random.Random(sizes.seed)
    background = list(
        fake_rows(
            sizes.background,
            expires_us=to_microseconds(T0 + LONG_TTL),
            issued_us=to_microseconds(T0),
            rng=rng,
        )
    )
    for path in (library_path, floor_path):
        bulk_insert(path, background)
    clock = BenchClock()
    policy = ServicePolicy(purge_batch_size=sizes.purge_batch, purge_grace=timedelta(0))
    library = LibrarySide(library_path, clock, policy)
    try:
        floor = FloorSide(floor_path, clock, policy)
        try:
            series = {op: {"library": Series(), "floor": Series()} for op in OPERATIONS}
            rounds = [(0, sizes.warmup_ops)] if sizes.warmup_ops else []
            rounds += [(n, sizes.ops) for n in range(1, sizes.repeat + 1)]
            for number, ops in rounds:
                progress(
                    "warm-up round"
                    if number == 0
                    else f"round {number}/{sizes.repeat} ({ops} ops per side)"
                )
                clock.set(T0 + number * ROUND_STEP)
                sides: list[Side] = [library, floor] if number % 2 else [floor, library]
                timings = _round(
                    sides, ops, sizes.purge_rows, [library_path, floor_path], clock, rng
                )
                if number:
                    for op, by_side in timings.items():
                        for name, (count, elapsed) in by_side.items():
                            series[op][name].add(count, elapsed)
        finally:
            floor.close()
    finally:
        library.close()
    return Comparison(series=series, schema_identical=schema_identical)


def _round(
    sides: Sequence[Side],
    ops: int,
    purge_rows: int,
    paths: Sequence[Path],
    clock: BenchClock,
    rng: random.Random,
) -> dict[str, dict[str, tuple[int, int]]]:
    """One repetition of every operation on every side, side by side.

    Rows authorized here are revoked here and the purge only finds rows
    seeded for it, so each round leaves the table as it found it.
    """
    out: dict[str, dict[str, tuple[int, int]]] = {op: {} for op in OPERATIONS}
    instances = [uuid.uuid4() for _ in range(ops // TOKENS_PER_INSTANCE)]
    issued_for = [i for i in instances for _ in range(TOKENS_PER_INSTANCE)]
    tokens: dict[str, list[str]] = {}
    for side in sides:
        issued, ns = timed(lambda: side.authorize(issued_for))  # noqa: B023 - called at once
        expect(len(issued), ops, f"{side.name} authorize")
        tokens[side.name] = issued
        out["authorize"][side.name] = (ops, ns)
    for side in sides:
        present = rng.sample(tokens[side.name], ops)
        hits, ns = timed(lambda: side.validate(present))  # noqa: B023
        expect(hits, ops, f"{side.name} validate hits")
        out["validate_hit"][side.name] = (ops, ns)
    unknown = [secrets.token_urlsafe(TOKEN_BYTES) for _ in range(ops)]
    for side in sides:
        hits, ns = timed(lambda: side.validate(unknown))  # noqa: B023
        expect(hits, 0, f"{side.name} validate misses")
        out["validate_miss"][side.name] = (ops, ns)
    doomed = rng.sample(instances, len(instances))
    for side in sides:
        deleted, ns = timed(lambda: side.revoke(doomed))  # noqa: B023
        expect(deleted, ops, f"{side.name} revoke")
        out["revoke"][side.name] = (len(doomed), ns)
    expired_us = to_microseconds(clock.now()) - 1
    expired = list(
        fake_rows(purge_rows, expires_us=expired_us, issued_us=expired_us - TTL_US, rng=rng)
    )
    for path in paths:
        bulk_insert(path, expired)
    for side in sides:
        deleted, ns = timed(side.purge)
        expect(deleted, purge_rows, f"{side.name} purge")
        out["purge"][side.name] = (purge_rows, ns)
    return out


def grow(workdir: Path, sizes: Sizes, progress: Progress) -> Growth:
    """Time validate hits on a small and a big table of the library's schema.

    Two files rather than one table grown in place, so the two sizes can be
    interleaved like the sides are. Each round presents a fresh random
    sample: a repeated one would find its pages already cached.
    """
    rng = random.Random(sizes.seed + 1)
    clock = BenchClock()
    policy = ServicePolicy(purge_batch_size=sizes.purge_batch, purge_grace=timedelta(0))
    pools: dict[str, list[str]] = {}
    paths = {"small": workdir / SMALL_FILE, "big": workdir / BIG_FILE}
    for size, rows in (("small", sizes.small), ("big", sizes.big)):
        progress(f"populating {rows:,} rows for the growth measurement")
        path = paths[size]
        create_schema(path)
        known = known_tokens(rows, sizes.sample * (sizes.repeat + 1), rng)
        bulk_insert(
            path,
            fake_rows(
                rows,
                expires_us=to_microseconds(T0 + LONG_TTL),
                issued_us=to_microseconds(T0),
                rng=rng,
                known=known,
            ),
        )
        pools[size] = list(known.values())
    series = {side: {"small": Series(), "big": Series()} for side in ("library", "floor")}
    opened: list[Side] = []
    try:
        runs: list[tuple[str, Side]] = []
        for size, path in paths.items():
            opened.append(LibrarySide(path, clock, policy))
            runs.append((size, opened[-1]))
            opened.append(FloorSide(path, clock, policy))
            runs.append((size, opened[-1]))
        for number in range(sizes.repeat + 1):
            progress(
                "growth warm-up"
                if number == 0
                else f"growth round {number}/{sizes.repeat} ({sizes.sample} hits per table)"
            )
            for size, side in runs if number % 2 else runs[::-1]:
                present = rng.sample(pools[size], sizes.sample)
                hits, ns = timed(lambda: side.validate(present))  # noqa: B023
                expect(hits, sizes.sample, f"{side.name} validate hits on the {size} table")
                if number:
                    series[side.name][size].add(sizes.sample, ns)
    finally:
        for side in opened:
            side.close()
    return Growth(small_rows=sizes.small, big_rows=sizes.big, series=series)
