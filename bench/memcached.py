"""``python -m bench --backend memcached``: the library on memcached against
raw pymemcache moving the same bytes, in the same run, on the same server.

The raw side is what any memcached token store must do at least: one plain
pymemcache ``Client.set`` of the library's own item bytes per authorize, one
``Client.get`` per validate, one ``Client.set`` of a revocation record per
revoked instance and one ``Client.delete`` per token of it. The ratio is
therefore the cost of everything the library adds: token checks and
hashing, the connection pool and shard choice, the index updates an
authorize needs so that revoke and purge can find its token, and
the validation of what comes back. The issue's target is on validate hits.

Like the SQLite benchmark, each round issues tokens for fresh instances
(``TOKENS_PER_INSTANCE`` each) and revokes them at its end, so rounds do not
pile up tokens in the indexes.

Without ``--memcached HOST:PORT`` the benchmark starts ``memcached`` from
PATH on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import pymemcache
from pymemcache.client.base import Client

from console_auth.adapters.memcached import (
    MemcachedClient,
    MemcachedConsoleConnectionRepository,
    parse_server,
)
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.domain import hash_token

from .runner import BenchError, Series, expect, timed
from .workload import (
    TOKENS_PER_INSTANCE,
    TTL,
    Sizes,
    authorize_all,
    revoke_all,
    validate_all,
)

OPERATIONS: Final = ("authorize", "validate_hit", "validate_miss", "revoke")
LABELS: Final = {
    "authorize": "authorize",
    "validate_hit": "validate (hit)",
    "validate_miss": "validate (miss)",
    "revoke": "revoke instance",
}
UNITS: Final = {
    "authorize": "op",
    "validate_hit": "op",
    "validate_miss": "op",
    "revoke": "instance",
}
MIN_RATIO: Final = {"validate_hit": 0.6}
"""Library rate over raw rate, at least; from the issue."""

Progress = Callable[[str], None]


@contextmanager
def memcached_server(named: str | None, progress: Progress) -> Iterator[str]:
    """The named server, or a ``memcached`` started for this run."""
    if named:
        yield named
        return
    binary = shutil.which("memcached")
    if binary is None:
        raise BenchError("memcached is not on PATH; install it or pass --memcached HOST:PORT")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024", "-t", "2"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    progress(f"starting memcached on 127.0.0.1:{port}")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("memcached did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class LibrarySide:
    """``ConsoleAuthService`` on ``MemcachedConsoleConnectionRepository``."""

    name = "library"

    def __init__(self, server: str, prefix: str) -> None:
        self.client = MemcachedClient([parse_server(server)])
        self.repository = MemcachedConsoleConnectionRepository(self.client, key_prefix=prefix)
        self.service = ConsoleAuthService(self.repository, SystemClock(), SecretsTokenSource())

    def authorize(self, instances: Sequence[uuid.UUID]) -> list[str]:
        return authorize_all(self.service, instances)

    def revoke(self, instances: Sequence[uuid.UUID]) -> int:
        return revoke_all(self.service, instances)

    def validate(self, tokens: Sequence[str]) -> int:
        return validate_all(self.service, tokens)

    def item(self, token: str) -> tuple[str, bytes]:
        """The key and the exact bytes the library stored for ``token``."""
        key = self.repository.connection_key(hash_token(token))
        value = self.client.get(key)
        if value is None:
            raise BenchError("the library did not store an item")
        return key, value

    def close(self) -> None:
        self.client.close()


class RawSide:
    """One plain pymemcache ``Client``: a set or a get per operation."""

    name = "raw"

    def __init__(self, server: str) -> None:
        parsed = parse_server(server)
        self.client = Client(
            (parsed.host, parsed.port), no_delay=True, default_noreply=False, timeout=5
        )

    def store(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        set_ = self.client.set
        expire = int(TTL.total_seconds())
        return [key for key, value in items if set_(key, value, expire)]

    def fetch(self, keys: Sequence[str]) -> int:
        get = self.client.get
        return sum(1 for key in keys if get(key) is not None)

    def remove(self, keys: Sequence[str], revoked: Sequence[str]) -> int:
        """One ``set`` per revoked instance's record, as the library writes, then the deletes."""
        set_, delete = self.client.set, self.client.delete
        for key in revoked:
            set_(key, b"1767225600000000", expire=86400)
        return sum(1 for key in keys if delete(key))

    def close(self) -> None:
        self.client.close()


def run(server: str, sizes: Sizes, progress: Progress) -> dict[str, dict[str, Series]]:
    """Interleaved rounds of authorize and validate, library and raw."""
    library = LibrarySide(server, f"bench-{uuid.uuid4().hex}")
    raw = RawSide(server)
    raw_prefix = f"bench-raw-{uuid.uuid4().hex}"
    series = {op: {"library": Series(), "raw": Series()} for op in OPERATIONS}
    try:
        rounds = [(0, sizes.warmup_ops)] if sizes.warmup_ops else []
        rounds += [(n, sizes.ops) for n in range(1, sizes.repeat + 1)]
        for number, ops in rounds:
            progress(
                "warm-up round" if number == 0 else f"round {number}/{sizes.repeat} ({ops} ops)"
            )
            for op, by_side in _round(library, raw, raw_prefix, ops, number % 2 == 0).items():
                if number:
                    for side, (count, elapsed) in by_side.items():
                        series[op][side].add(count, elapsed)
    finally:
        library.close()
        raw.close()
    return series


def _round(
    library: LibrarySide, raw: RawSide, raw_prefix: str, ops: int, raw_first: bool
) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {op: {} for op in OPERATIONS}
    instances = [uuid.uuid4() for _ in range(ops // TOKENS_PER_INSTANCE)]
    issued_for = [i for i in instances for _ in range(TOKENS_PER_INSTANCE)]
    tokens, ns = timed(lambda: library.authorize(issued_for))
    expect(len(tokens), ops, "library authorize")
    # The raw side stores the library's own item bytes under keys of its own.
    items = [library.item(token) for token in tokens]
    raw_items = [(f"{raw_prefix}:{key}", value) for key, value in items]
    raw_keys, raw_ns = timed(lambda: raw.store(raw_items))
    expect(len(raw_keys), ops, "raw set")
    out["authorize"] = {"library": (ops, ns), "raw": (ops, raw_ns)}

    unknown = [SecretsTokenSource().new_token() for _ in range(ops)]
    missing = [f"{raw_prefix}:missing:{hash_token(t)}" for t in unknown]
    steps: list[tuple[str, str, Callable[[], int], int]] = [
        ("validate_hit", "library", lambda: library.validate(tokens), ops),
        ("validate_hit", "raw", lambda: raw.fetch(raw_keys), ops),
        ("validate_miss", "library", lambda: library.validate(unknown), 0),
        ("validate_miss", "raw", lambda: raw.fetch(missing), 0),
    ]
    if raw_first:
        steps = [steps[1], steps[0], steps[3], steps[2]]
    for op, side, call, hits in steps:
        found, elapsed = timed(call)
        expect(found, hits, f"{side} {op}")
        out[op][side] = (ops, elapsed)
    revokes: list[tuple[str, Callable[[], int]]] = [
        ("library", lambda: library.revoke(instances)),
        ("raw", lambda: raw.remove(raw_keys, [f"{raw_prefix}:r:{i}" for i in instances])),
    ]
    for side, call in revokes[::-1] if raw_first else revokes:
        deleted, elapsed = timed(call)
        expect(deleted, ops, f"{side} revoke")
        out["revoke"][side] = (len(instances), elapsed)
    return out


def ratios(series: dict[str, dict[str, Series]]) -> dict[str, float]:
    return {
        op: statistics.median(by_side["library"].rates())
        / statistics.median(by_side["raw"].rates())
        for op, by_side in series.items()
    }


def as_json(server: str, sizes: Sizes, series: dict[str, dict[str, Series]]) -> dict[str, Any]:
    ratio = ratios(series)
    targets = [
        {"name": f"{op} ratio", "value": ratio[op], "limit": limit, "at_least": True}
        | {"passed": ratio[op] >= limit}
        for op, limit in MIN_RATIO.items()
    ]
    return {
        "backend": "memcached",
        "server": server,
        "environment": {
            "python": platform.python_version(),
            "pymemcache": pymemcache.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "sizes": {"ops": sizes.ops, "repeat": sizes.repeat, "warmup_ops": sizes.warmup_ops},
        "operations": {
            op: {
                "unit": UNITS[op],
                "library_per_s": statistics.median(by_side["library"].rates()),
                "raw_per_s": statistics.median(by_side["raw"].rates()),
                "ratio": ratio[op],
                "library_us_per_op": 1e6 / statistics.median(by_side["library"].rates()),
                "raw_us_per_op": 1e6 / statistics.median(by_side["raw"].rates()),
            }
            for op, by_side in series.items()
        },
        "targets": targets,
        "passed": all(t["passed"] for t in targets),
    }


def as_table(output: dict[str, Any]) -> str:
    sizes = output["sizes"]
    lines = [
        f"console-auth on memcached ({output['server']}) vs raw pymemcache get/set of the same "
        f"bytes - median of {sizes['repeat']} interleaved rounds, {sizes['ops']:,} ops each",
        "",
        f"{'operation':<17}{'unit':>9}{'library/s':>11}{'raw/s':>11}{'lib us':>9}"
        f"{'raw us':>9}{'ratio':>8}  target",
    ]
    targets = {t["name"].removesuffix(" ratio"): t for t in output["targets"]}
    for op, figures in output["operations"].items():
        target = targets.get(op)
        verdict = (
            ""
            if target is None
            else f">= {target['limit']:.2f}x {'PASS' if target['passed'] else 'FAIL'}"
        )
        lines.append(
            f"{LABELS[op]:<17}{figures['unit']:>9}"
            f"{figures['library_per_s']:>11,.0f}{figures['raw_per_s']:>11,.0f}"
            f"{figures['library_us_per_op']:>9.1f}{figures['raw_us_per_op']:>9.1f}"
            f"{figures['ratio']:>7.2f}x  {verdict}".rstrip()
        )
    passed = sum(t["passed"] for t in output["targets"])
    lines += ["", f"{passed}/{len(output['targets'])} targets pass"]
    return "\n".join(lines)


def main(server: str | None, sizes: Sizes, progress: Progress, *, as_json_output: bool) -> bool:
    """Run, print, and say whether every target passed."""
    with memcached_server(server, progress) as address:
        series = run(address, sizes, progress)
        output = as_json(address, sizes, series)
    print(json.dumps(output, indent=2) if as_json_output else as_table(output))
    return bool(output["passed"])
