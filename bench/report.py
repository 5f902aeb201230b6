"""Figures out of series: medians, ratios, targets, and their two renderings.

Targets are ratios to the floor, never absolute rates: a laptop and a CI
runner disagree on ops/s by a factor but agree on how far the library is
from plain ``sqlite3`` on the same machine.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import sqlalchemy

from console_auth.adapters.sql.engine import SQLITE_PRAGMAS

from .runner import OPERATIONS, UNITS, Comparison, Growth, Series
from .workload import Sizes

LABELS: Final = {
    "authorize": "authorize",
    "validate_hit": "validate (hit)",
    "validate_miss": "validate (miss)",
    "revoke": "revoke instance",
    "purge": "purge expired",
}
MIN_RATIO: Final = {"validate_hit": 0.3, "authorize": 0.8, "purge": 0.8}
"""Library rate over floor rate, at least; from the issue."""
MAX_GROWTH: Final = 1.5
"""Validate-hit time on the big table over the small one, at most."""


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    at_least: bool
    """Whether ``value`` must reach ``limit`` (a ratio) or stay under it (a growth)."""

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.limit:.2f}x"


def median_rate(series: Series) -> float:
    return statistics.median(series.rates())


def median_us_per_op(series: Series) -> float:
    return statistics.median(ns / count / 1e3 for count, ns in _runs(series))


def _runs(series: Series) -> list[tuple[int, int]]:
    return list(zip(series.counts, series.elapsed_ns, strict=True))


def ratios(comparison: Comparison) -> dict[str, float]:
    """Library median over floor median, per operation."""
    return {
        op: median_rate(comparison.series[op]["library"])
        / median_rate(comparison.series[op]["floor"])
        for op in OPERATIONS
    }


def growth_of(growth: Growth, side: str = "library") -> float:
    by_size = growth.series[side]
    return median_us_per_op(by_size["big"]) / median_us_per_op(by_size["small"])


def targets(comparison: Comparison, growth: Growth) -> list[Target]:
    ratio = ratios(comparison)
    found = [Target(f"{op} ratio", ratio[op], limit, True) for op, limit in MIN_RATIO.items()]
    found.append(Target("validate-hit growth", growth_of(growth), MAX_GROWTH, False))
    return found


def as_json(sizes: Sizes, comparison: Comparison, growth: Growth) -> dict[str, Any]:
    """Everything the table shows, plus the raw repetitions behind each median."""
    ratio = ratios(comparison)
    found = targets(comparison, growth)
    return {
        "environment": environment(),
        "sizes": asdict(sizes),
        "schema_identical": comparison.schema_identical,
        "operations": {
            op: {
                "unit": UNITS[op],
                "library_per_s": median_rate(comparison.series[op]["library"]),
                "floor_per_s": median_rate(comparison.series[op]["floor"]),
                "ratio": ratio[op],
                "library_runs_per_s": comparison.series[op]["library"].rates(),
                "floor_runs_per_s": comparison.series[op]["floor"].rates(),
            }
            for op in OPERATIONS
        },
        "growth": {
            "small_rows": growth.small_rows,
            "big_rows": growth.big_rows,
            **{
                f"{side}_{size}_us_per_op": median_us_per_op(growth.series[side][size])
                for side in ("library", "floor")
                for size in ("small", "big")
            },
            "library_growth": growth_of(growth, "library"),
            "floor_growth": growth_of(growth, "floor"),
        },
        "targets": [
            {
                "name": t.name,
                "value": t.value,
                "limit": t.limit,
                "at_least": t.at_least,
                "passed": t.passed,
            }
            for t in found
        ],
        "passed": all(t.passed for t in found),
    }


def as_table(sizes: Sizes, comparison: Comparison, growth: Growth) -> str:
    ratio = ratios(comparison)
    limits: Mapping[str, Target] = {
        t.name.removesuffix(" ratio"): t for t in targets(comparison, growth)
    }
    lines = [
        f"console-auth on SQLite vs plain sqlite3 - median of {sizes.repeat} interleaved "
        f"repetitions, {sizes.ops:,} ops each, {sizes.background:,} background rows",
        "",
        f"floor: plain sqlite3, same schema (the library's migration), same pragmas "
        f"({'; '.join(SQLITE_PRAGMAS)})",
        "",
        f"{'operation':<17}{'unit':>9}{'library/s':>13}{'floor/s':>13}{'ratio':>8}  target",
    ]
    for op in OPERATIONS:
        target = limits.get(op)
        verdict = (
            "" if target is None else f"{target.describe()} {'PASS' if target.passed else 'FAIL'}"
        )
        lines.append(
            f"{LABELS[op]:<17}{UNITS[op]:>9}"
            f"{median_rate(comparison.series[op]['library']):>13,.0f}"
            f"{median_rate(comparison.series[op]['floor']):>13,.0f}"
            f"{ratio[op]:>7.2f}x  {verdict}".rstrip()
        )
    lib, floor = growth.series["library"], growth.series["floor"]
    grown = limits["validate-hit growth"]
    lines += [
        "",
        f"validate (hit) by table size - median of {sizes.repeat}, {sizes.sample:,} random "
        "hits each",
        f"{'stored tokens':<17}{'library us/op':>15}{'floor us/op':>13}",
        f"{growth.small_rows:<17,}{median_us_per_op(lib['small']):>15.1f}"
        f"{median_us_per_op(floor['small']):>13.1f}",
        f"{growth.big_rows:<17,}{median_us_per_op(lib['big']):>15.1f}"
        f"{median_us_per_op(floor['big']):>13.1f}",
        f"{'growth':<17}{grown.value:>14.2f}x{growth_of(growth, 'floor'):>12.2f}x  "
        f"{grown.describe()} {'PASS' if grown.passed else 'FAIL'}",
        "",
        f"schema identical: {'yes' if comparison.schema_identical else 'NO'}; "
        f"{sum(t.passed for t in limits.values())}/{len(limits)} targets pass",
    ]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What a reader needs to tell two runs' machines apart."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
