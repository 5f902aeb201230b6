"""``python -m bench --consoles``: ``authorize_console`` on libvirt against
plain ``authorize`` of the same endpoint, in the same run, on the same store.

``authorize_console`` asks the libvirt driver where the console listens (a
domain lookup by uuid, one ``XMLDesc`` and its parse) and then authorizes
exactly what plain ``authorize`` is given here: the same host, port, kind,
options, base URL and TTL. The ratio is therefore the cost of the driver
call. libvirt is its in-process ``test:///default`` driver, so no daemon
round trip is in the figure: a real ``qemu:///system`` adds two RPCs to
libvirtd per call (the lookup and ``XMLDesc``). Two stores: the default
SQLite file, where the write dominates, and memory, where the driver's
share shows best. The driver alone (``endpoint`` calls per second) is
reported too.

Rounds interleave the sides and alternate which goes first, as the other
benchmarks do; medians of the repetitions are reported.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from uuid import UUID

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.sql.engine import open_engine
from console_auth.adapters.sql.repository import SqlConsoleConnectionRepository
from console_auth.adapters.sql.statements import Statements
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource
from console_auth.application import ConsoleAuthService, ConsoleConnectionRepository
from console_auth.application.consoles import InstanceConsoleService
from console_auth.application.serial import ConsolePortService
from console_auth.domain import ConsoleType

from .runner import BenchError, Progress, Series, expect, timed
from .sqlite import create_schema, sqlite_url
from .workload import ACCESS_URL_BASE, HOST, PORT, TTL, BenchClock

URI: Final = "test:///default"
DOMAINS: Final = 50
"""Running domains on the fake host, a busy compute node's worth: the
lookup by uuid searches among them."""
STORES: Final = ("sqlite", "memory")
SIDES: Final = ("authorize", "authorize_console")


def _libvirt() -> Any:
    try:
        import libvirt  # the libvirt extra
    except ImportError:
        raise BenchError("needs libvirt-python: pip install 'console-auth[libvirt]'") from None
    return libvirt


@contextmanager
def _domains(count: int) -> Iterator[list[UUID]]:
    """``count`` running domains with a VNC console each, on a connection
    held open (``test:///default`` forgets them when the last one closes)."""
    libvirt = _libvirt()
    connection = libvirt.open(URI)
    instances = [uuid.uuid4() for _ in range(count)]
    try:
        for number, instance in enumerate(instances):
            connection.defineXML(
                f"<domain type='test'><name>bench-{instance}</name><uuid>{instance}</uuid>"
                "<memory>8192</memory><os><type>hvm</type></os><devices>"
                f"<graphics type='vnc' port='{PORT + number}' autoport='no' listen='0.0.0.0'/>"
                "<graphics type='spice' port='6900' tlsPort='6901' autoport='no'/>"
                "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='10000'/>"
                "<protocol type='raw'/></serial></devices></domain>"
            ).create()
        yield instances
    finally:
        for instance in instances:
            try:
                domain = connection.lookupByUUIDString(str(instance))
                domain.destroy()
                domain.undefine()
            except libvirt.libvirtError:
                pass
        connection.close()


class _Store:
    """Both sides over one store, so they write to the same table."""

    def __init__(self, repository: ConsoleConnectionRepository, endpoints: Any) -> None:
        self.service = ConsoleAuthService(repository, BenchClock(), SecretsTokenSource())
        ports = ConsolePortService(
            self.service,
            InMemoryPortLeaseRepository(),
            InMemoryPortReservationRepository(),
            SecretsLeaseIdSource(),
        )
        self.consoles = InstanceConsoleService(self.service, endpoints, lambda: ports)
        self.endpoints = endpoints

    def plain(self, calls: Sequence[tuple[UUID, Any]]) -> int:
        """``authorize`` of each endpoint as the driver gives it."""
        authorize = self.service.authorize
        for instance, endpoint in calls:
            authorize(
                instance,
                endpoint.host,
                endpoint.port,
                ConsoleType.NOVNC,
                options=endpoint.options,
                access_url_base=ACCESS_URL_BASE,
                ttl=TTL,
            )
        return len(calls)

    def from_driver(self, instances: Sequence[UUID]) -> int:
        authorize_console = self.consoles.authorize_console
        for instance in instances:
            authorize_console(
                instance, ConsoleType.NOVNC, access_url_base=ACCESS_URL_BASE, ttl=TTL
            )
        return len(instances)

    def driver_only(self, instances: Sequence[UUID]) -> int:
        endpoint = self.endpoints.endpoint
        return sum(1 for instance in instances if endpoint(instance, ConsoleType.NOVNC))


def run(
    ops: int, repeat: int, warmup: int, progress: Progress, workdir: Path
) -> dict[str, dict[str, Series]]:
    """``series[store][side]``, plus ``series["driver"]["endpoint"]``."""
    from console_auth.adapters.libvirt import LibvirtConsoleEndpoints

    series = {store: {side: Series() for side in SIDES} for store in STORES}
    series["driver"] = {"endpoint": Series()}
    progress(f"defining and starting {DOMAINS} domains on {URI}")
    with _domains(DOMAINS) as instances:
        endpoints = LibvirtConsoleEndpoints(URI, vnc_host=HOST, spice_host=HOST, serial_host=HOST)
        path = workdir / "consoles.sqlite3"
        create_schema(path)
        engine = open_engine(sqlite_url(path))
        try:
            stores = {
                "sqlite": _Store(SqlConsoleConnectionRepository(Statements(engine)), endpoints),
                "memory": _Store(InMemoryConsoleConnectionRepository(), endpoints),
            }
            rounds = [(0, warmup)] if warmup else []
            rounds += [(n, ops) for n in range(1, repeat + 1)]
            for number, count in rounds:
                progress(
                    "warm-up round" if number == 0 else f"round {number}/{repeat} ({count} ops)"
                )
                asked = [instances[i % DOMAINS] for i in range(count)]
                found = [(i, endpoints.endpoint(i, ConsoleType.NOVNC)) for i in asked]
                for name, store in stores.items():
                    steps: list[tuple[str, Callable[[], int]]] = [
                        ("authorize", functools.partial(store.plain, found)),
                        ("authorize_console", functools.partial(store.from_driver, asked)),
                    ]
                    for side, call in steps[::-1] if number % 2 else steps:
                        done, elapsed = timed(call)
                        expect(done, count, f"{name} {side}")
                        if number:
                            series[name][side].add(count, elapsed)
                done, elapsed = timed(functools.partial(stores["memory"].driver_only, asked))
                expect(done, count, "driver endpoint")
                if number:
                    series["driver"]["endpoint"].add(count, elapsed)
        finally:
            endpoints.close()
            engine.dispose()
    return series


def as_json(ops: int, repeat: int, series: dict[str, dict[str, Series]]) -> dict[str, Any]:
    libvirt = _libvirt()
    median = {
        store: {side: statistics.median(s.rates()) for side, s in by_side.items()}
        for store, by_side in series.items()
    }
    return {
        "benchmark": "authorize_console on libvirt vs authorize",
        "libvirt_uri": URI,
        "domains": DOMAINS,
        "environment": {
            "python": platform.python_version(),
            "libvirt": libvirt.getVersion(),
            "libvirt_python": _libvirt_python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "sizes": {"ops": ops, "repeat": repeat},
        "stores": {
            store: {
                "authorize_per_s": median[store]["authorize"],
                "authorize_console_per_s": median[store]["authorize_console"],
                "ratio": median[store]["authorize_console"] / median[store]["authorize"],
                "authorize_us_per_op": 1e6 / median[store]["authorize"],
                "authorize_console_us_per_op": 1e6 / median[store]["authorize_console"],
            }
            for store in STORES
        },
        "driver_endpoint_per_s": median["driver"]["endpoint"],
        "driver_endpoint_us_per_op": 1e6 / median["driver"]["endpoint"],
    }


def _libvirt_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libvirt-python")
    except PackageNotFoundError:
        return "unknown"


def as_table(output: dict[str, Any]) -> str:
    sizes = output["sizes"]
    lines = [
        f"authorize_console on libvirt {output['libvirt_uri']} ({output['domains']} running "
        f"domains) vs plain authorize of the same endpoint - median of {sizes['repeat']} "
        f"interleaved rounds, {sizes['ops']:,} ops each",
        "",
        f"{'store':<8}{'authorize/s':>13}{'console/s':>11}{'auth us':>9}{'cons us':>9}"
        f"{'ratio':>8}",
    ]
    for store, figures in output["stores"].items():
        lines.append(
            f"{store:<8}{figures['authorize_per_s']:>13,.0f}"
            f"{figures['authorize_console_per_s']:>11,.0f}"
            f"{figures['authorize_us_per_op']:>9.1f}{figures['authorize_console_us_per_op']:>9.1f}"
            f"{figures['ratio']:>7.2f}x"
        )
    lines += [
        "",
        f"driver alone (lookup, XMLDesc, parse): {output['driver_endpoint_per_s']:,.0f}/s, "
        f"{output['driver_endpoint_us_per_op']:.1f} us per call",
    ]
    return "\n".join(lines)


def main(ops: int, repeat: int, warmup: int, progress: Progress, *, as_json_output: bool) -> bool:
    """Run and print; there is no target to pass, so it always does."""
    with tempfile.TemporaryDirectory(prefix="console-auth-bench-consoles-") as workdir:
        series = run(ops, repeat, warmup, progress, Path(workdir))
    output = as_json(ops, repeat, series)
    print(json.dumps(output, indent=2) if as_json_output else as_table(output))
    return True
