"""``python -m bench --consoles`` runs end to end on libvirt's
``test:///default`` and reports both sides on both stores; its figures at
this size mean nothing."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

from bench.cli import main
from tests.console_drivers import libvirt_or_skip


def _positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_a_quick_run_measures_both_sides_on_both_stores() -> None:
    libvirt_or_skip()
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        status = main(["--consoles", "--quick", "--json"])

    assert status == 0
    output = json.loads(stdout.getvalue())
    assert set(output["stores"]) == {"sqlite", "memory"}
    for figures in output["stores"].values():
        for key in ("authorize_per_s", "authorize_console_per_s", "ratio"):
            assert _positive(figures[key])
    assert _positive(output["driver_endpoint_per_s"])
