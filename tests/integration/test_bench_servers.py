"""``python -m bench --backend postgresql|mariadb`` still runs end to end.

Only the plumbing: figures of a run this small mean nothing, and the
targets belong to ``python -m bench --check`` on a quiet machine.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from typing import Any

import pytest

from bench.cli import main
from bench.servers import OPERATIONS
from tests.backends.sql_servers import SERVER_NAMES, server


@pytest.fixture(scope="module", params=SERVER_NAMES)
def quick_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    url = server(request.param).url.render_as_string(hide_password=False)
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        status = main(["--backend", request.param, "--url", url, "--quick", "--json"])
    assert status == 0
    output: dict[str, Any] = json.loads(stdout.getvalue())
    return output


def _positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_every_operation_has_a_rate_for_both_sides(quick_run: dict[str, Any]) -> None:
    operations = quick_run["operations"]
    assert set(operations) == set(OPERATIONS)
    for figures in operations.values():
        assert _positive(figures["library_per_s"])
        assert _positive(figures["floor_per_s"])


def test_threaded_validate_reports_throughput_and_tail(quick_run: dict[str, Any]) -> None:
    threaded = quick_run["threaded_validate"]
    assert threaded["threads"] == 8
    assert threaded["validates"] >= 8 * 10
    assert 0 < threaded["p50_us"] <= threaded["p99_us"] <= threaded["max_us"]


def test_targets_are_judged(quick_run: dict[str, Any]) -> None:
    names = {t["name"] for t in quick_run["targets"]}
    assert names == {"validate_hit ratio", "authorize ratio"}
    assert isinstance(quick_run["passed"], bool)
