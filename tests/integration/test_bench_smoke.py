"""The benchmark still runs end to end and measures what it claims to.

Only the plumbing is checked here: the figures of a run this small say
nothing, and speed targets belong to ``python -m bench --check``, where
a slow machine fails a benchmark rather than the test suite.
"""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
from contextlib import closing, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.metrics import SERVERS
from bench.runner import OPERATIONS
from bench.servers import URL_ENV
from bench.sqlite import FLOOR_FILE, LIBRARY_FILE


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One quick run for every test here: it is the slow part."""
    workdir = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()  # not capsys: that fixture is per test, this run is not
    with redirect_stdout(stdout):
        status = main(["--quick", "--json", "--workdir", str(workdir)])
    assert status == 0
    return json.loads(stdout.getvalue()), workdir


def _positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_every_operation_has_a_rate_for_both_sides(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    operations = quick_run[0]["operations"]
    assert set(operations) == set(OPERATIONS)
    for figures in operations.values():
        assert _positive(figures["library_per_s"])
        assert _positive(figures["floor_per_s"])
        assert _positive(figures["ratio"])


def test_growth_is_measured_on_both_table_sizes(quick_run: tuple[dict[str, Any], Path]) -> None:
    growth = quick_run[0]["growth"]
    assert growth["big_rows"] > growth["small_rows"]
    for side in ("library", "floor"):
        assert _positive(growth[f"{side}_small_us_per_op"])
        assert _positive(growth[f"{side}_big_us_per_op"])
        assert _positive(growth[f"{side}_growth"])


def test_every_target_gets_a_verdict(quick_run: tuple[dict[str, Any], Path]) -> None:
    output = quick_run[0]
    names = {target["name"] for target in output["targets"]}
    assert names == {
        "validate_hit ratio",
        "authorize ratio",
        "purge ratio",
        "validate-hit growth",
    }
    assert isinstance(output["passed"], bool)


def test_floor_and_library_share_one_schema(quick_run: tuple[dict[str, Any], Path]) -> None:
    workdir = quick_run[1]
    library, floor = _schema(workdir / LIBRARY_FILE), _schema(workdir / FLOOR_FILE)
    assert any(name == "console_connections" for _, name, _ in library)
    assert library == floor
    assert quick_run[0]["schema_identical"] is True


def _schema(path: Path) -> list[tuple[str, str, str | None]]:
    with closing(sqlite3.connect(path)) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())


def test_memcached_run_measures_library_and_raw_pymemcache() -> None:
    """``--backend memcached`` on the test server: every operation timed on
    both sides, and the validate-hit target judged."""
    from bench.memcached import OPERATIONS as MEMCACHED_OPERATIONS
    from tests.backends.memcached import session_servers

    servers, process = session_servers()
    try:
        stdout = io.StringIO()
        with redirect_stdout(stdout):
            status = main(
                ["--backend", "memcached", "--memcached", servers[0], "--quick", "--json"]
            )
    finally:
        if process is not None:
            process.stop()

    assert status == 0
    output = json.loads(stdout.getvalue())
    assert output["backend"] == "memcached"
    assert set(output["operations"]) == set(MEMCACHED_OPERATIONS)
    for figures in output["operations"].values():
        assert _positive(figures["library_per_s"])
        assert _positive(figures["raw_per_s"])
        assert _positive(figures["ratio"])
    assert [target["name"] for target in output["targets"]] == ["validate_hit ratio"]
    assert isinstance(output["passed"], bool)


def test_purge_scale_run_reports_every_figure() -> None:
    """``--purge-scale N``: rows/s, batches, memory and validate latency."""
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        status = main(["--purge-scale", "3000", "--purge-batch", "500", "--json", "--check"])
    output = json.loads(stdout.getvalue())
    figures = output["purge_scale"]
    assert (status, output["passed"]) == (0, True), output
    assert (figures["purged"], figures["batches"]) == (3000, 7)
    for name in ("rows_per_s", "concurrent_rows_per_s", "validate_p99_us", "quiet_p99_us"):
        assert _positive(figures[name]), name
    assert figures["traced_peak_bytes"] > 0
    assert figures["validates"] > 0
    assert {t["name"] for t in output["targets"]} >= {
        "Python heap peak (bytes)",
        "validates failed",
    }


def test_the_metrics_run_times_both_sides_of_every_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--metrics``: the same validates with and without the Prometheus
    recorder; a side that did not validate what it was given fails the run."""
    assert main(["--metrics", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    servers = {f"{name}_hit" for name in SERVERS if os.environ.get(URL_ENV[name])}
    assert set(out["cases"]) == {"sqlite_hit", "sqlite_miss", "memory_hit"} | servers
    for figures in out["cases"].values():
        assert _positive(figures["bare_per_s"])
        assert _positive(figures["metered_per_s"])
        assert len(figures["bare_runs_per_s"]) == len(figures["metered_runs_per_s"]) == 3
    assert out["target"]["case"] == "sqlite_hit"
    assert out["target"]["min_ratio"] == 0.95
