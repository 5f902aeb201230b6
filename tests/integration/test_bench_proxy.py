"""``python -m bench --proxy`` still runs end to end and measures what it claims.

Only the plumbing is checked, at tiny sizes: both proxies really relayed
every session, memory is summed over websockify's forked processes, and
nothing is left running. Speed targets belong to ``--check``, not here.
"""

from __future__ import annotations

import io
import json
import math
import os
from contextlib import redirect_stdout
from typing import Any

import pytest

from bench.cli import main
from bench.proxy import MEASURES, PEERS, QUICK, as_table, descendants


@pytest.fixture(scope="module")
def quick_run() -> tuple[dict[str, Any], set[int]]:
    """One quick run for every test here, and the processes it left behind."""
    before = set(descendants(os.getpid()))
    stdout = io.StringIO()  # not capsys: that fixture is per test, this run is not
    with redirect_stdout(stdout):
        status = main(["--proxy", "--quick", "--json"])
    assert status == 0
    return json.loads(stdout.getvalue()), set(descendants(os.getpid())) - before


def _positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_every_measure_has_figures_for_both_proxies(
    quick_run: tuple[dict[str, Any], set[int]],
) -> None:
    measures = quick_run[0]["measures"]
    assert set(measures) == set(MEASURES)
    for name, figures in measures.items():
        repetitions = QUICK.memory_repeat if name.startswith("idle_") else QUICK.repeat
        for peer in PEERS:
            assert _positive(figures[peer]), (name, peer)
            assert len(figures[f"{peer}_runs"]) == repetitions, (name, peer)
        assert _positive(figures["ratio"]), name


def test_every_session_of_both_proxies_proved_its_relay(
    quick_run: tuple[dict[str, Any], set[int]],
) -> None:
    """Warm-up included: set-up sessions in two modes and a throughput
    session per round, then the idle sessions and their warm-up."""
    rounds = QUICK.repeat + 1
    expected = rounds * (2 * QUICK.sessions + 1) + QUICK.memory_repeat * (
        2 * QUICK.concurrency + QUICK.idle
    )
    assert quick_run[0]["sessions"] == dict.fromkeys(PEERS, expected)


def test_idle_memory_counts_every_websockify_process(
    quick_run: tuple[dict[str, Any], set[int]],
) -> None:
    output = quick_run[0]
    assert output["idle_sessions"] == dict.fromkeys(PEERS, QUICK.idle)
    assert output["idle_processes"] == {"console_auth": 1, "websockify": QUICK.idle + 1}


def test_every_target_gets_a_verdict_and_a_table_row(
    quick_run: tuple[dict[str, Any], set[int]],
) -> None:
    output = quick_run[0]
    assert [(t["name"], t["limit"]) for t in output["targets"]] == [
        ("set-up, one at a time", 2.0),
        (f"set-up, {QUICK.concurrency} at once", 2.0),
        ("relay throughput", 1.0),
        ("idle memory, PSS", 0.1),
    ]
    assert all(isinstance(t["passed"], bool) for t in output["targets"])
    assert isinstance(output["passed"], bool)
    table = as_table(output)
    for target in output["targets"]:
        (row,) = [line for line in table.splitlines() if line.startswith(target["name"])]
        assert row.endswith("PASS" if target["passed"] else "FAIL")
    assert f"websockify {QUICK.idle} in {QUICK.idle + 1} " in table


def test_no_process_is_left_running(quick_run: tuple[dict[str, Any], set[int]]) -> None:
    assert quick_run[1] == set()
