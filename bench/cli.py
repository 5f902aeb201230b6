"""``python -m bench``: measure, print, and with ``--check`` gate on the targets.

One process runs everything, so both sides share the interpreter, the
SQLite build and the machine's state at that moment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from console_auth.application import ServicePolicy

from . import report
from .runner import BenchError, Progress, compare, grow
from .workload import TOKENS_PER_INSTANCE, Sizes

FULL: Final = {
    "ops": 3_000,
    "repeat": 9,
    "warmup": 500,
    "background": 10_000,
    "small": 10_000,
    "big": 1_000_000,
    "sample": 3_000,
}
"""About a minute on two cores; the median of nine interleaved repetitions
is stable to a few percent even with a busy neighbour."""
QUICK: Final = {
    "ops": 40,
    "repeat": 2,
    "warmup": 10,
    "background": 100,
    "small": 200,
    "big": 2_000,
    "sample": 40,
}
"""Small enough for a test to run in seconds; it proves the plumbing, and
its figures mean nothing."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time console-auth on a SQLite file against plain sqlite3 doing the "
        "same work, and validate hits on a small against a big table.",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "memcached", "postgresql", "mariadb"),
        default="sqlite",
        help="sqlite: against plain sqlite3 (default); memcached: against raw pymemcache; "
        "postgresql, mariadb: against raw psycopg / PyMySQL running the same SQL",
    )
    parser.add_argument(
        "--url",
        help="server for --backend postgresql|mariadb (default: CONSOLE_AUTH_TEST_POSTGRESQL_URL "
        "or CONSOLE_AUTH_TEST_MARIADB_URL); a private database is created on it and dropped",
    )
    parser.add_argument(
        "--memcached",
        metavar="HOST:PORT",
        help="memcached server for --backend memcached (default: start one from PATH)",
    )
    parser.add_argument(
        "--purge-scale",
        type=int,
        metavar="N",
        help="instead: purge N expired rows (e.g. 1000000) on --backend sqlite, postgresql or "
        "mariadb, in batches of --purge-batch, while a thread validates; print rows/s, "
        "batches, peak memory and the validates' latency",
    )
    parser.add_argument(
        "--proxy",
        action="store_true",
        help="instead: console-auth's proxy against websockify with its TokenFile plugin, "
        "both relaying to one local echo target; set-up rate, throughput, idle memory "
        "(--quick and --repeat apply)",
    )
    parser.add_argument(
        "--consoles",
        action="store_true",
        help="instead: authorize_console on libvirt's test:///default against plain "
        "authorize of the same endpoint, on SQLite and memory (--quick, --ops, --repeat "
        "and --warmup apply)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="instead: validate with the Prometheus recorder wired against the same service "
        "without it, on SQLite (the target) and in memory (--quick and --repeat apply)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--ops", type=int, help=f"ops per timed batch ({FULL['ops']:,})")
    parser.add_argument("--repeat", type=int, help=f"timed repetitions ({FULL['repeat']})")
    parser.add_argument("--warmup", type=int, help=f"warm-up ops per side ({FULL['warmup']})")
    parser.add_argument(
        "--background", type=int, help=f"long-lived rows present ({FULL['background']:,})"
    )
    parser.add_argument(
        "--purge-rows",
        type=int,
        help="expired rows per timed purge (10 x ops, at least 2.5 batches)",
    )
    parser.add_argument(
        "--purge-batch",
        type=int,
        default=ServicePolicy().purge_batch_size,
        help="ServicePolicy.purge_batch_size, the floor's batch too (%(default)s)",
    )
    parser.add_argument("--small", type=int, help=f"small table size ({FULL['small']:,})")
    parser.add_argument("--big", type=int, help=f"big table size ({FULL['big']:,})")
    parser.add_argument(
        "--sample", type=int, help=f"validate hits per growth repetition ({FULL['sample']:,})"
    )
    parser.add_argument("--seed", type=int, default=20260101, help="random seed (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target fails")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the databases in this directory instead of a removed temporary one",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL

    def pick(name: str) -> int:
        value: int | None = getattr(args, name)
        return base[name] if value is None else value

    ops = pick("ops")
    if ops > 0:  # whole instances: each gets TOKENS_PER_INSTANCE tokens
        ops = max(ops - ops % TOKENS_PER_INSTANCE, TOKENS_PER_INSTANCE)
    warmup = pick("warmup")
    warmup -= warmup % TOKENS_PER_INSTANCE
    batch: int = args.purge_batch
    purge_rows: int = (
        max(10 * ops, 2 * batch + batch // 2) if args.purge_rows is None else args.purge_rows
    )
    return Sizes(
        ops=ops,
        repeat=pick("repeat"),
        warmup_ops=warmup,
        background=pick("background"),
        purge_rows=purge_rows,
        purge_batch=batch,
        small=pick("small"),
        big=pick("big"),
        sample=min(pick("sample"), pick("small")),
        seed=args.seed,
    )


def _progress_from(start_ns: int) -> Progress:
    """Progress on stderr, timed, so ``--json`` output stays parseable and a
    slow phase shows where it is."""

    def progress(message: str) -> None:
        elapsed = (time.perf_counter_ns() - start_ns) / 1e9
        print(f"bench [{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def _verdict(run: Callable[[Progress], bool], *, check: bool) -> int:
    """Exit status of one benchmark mode: 2 when it could not run, 1 when
    ``--check`` and a target failed."""
    try:
        passed = run(_progress_from(time.perf_counter_ns()))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 1 if check and not passed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = sizes_from(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.proxy:
        from . import proxy  # needs the proxy extra, websockets and websockify

        return _verdict(
            lambda progress: proxy.main(
                proxy.sizes(quick=args.quick, repeat=args.repeat),
                progress,
                as_json_output=args.json,
            ),
            check=args.check,
        )
    if args.consoles:
        from . import consoles  # needs the libvirt extra

        return _verdict(
            lambda progress: consoles.main(
                sizes.ops, sizes.repeat, sizes.warmup_ops, progress, as_json_output=args.json
            ),
            check=args.check,
        )
    if args.metrics:
        from . import metrics  # needs the metrics extra (prometheus-client)

        return _verdict(
            lambda progress: metrics.main(
                metrics.sizes(quick=args.quick, repeat=args.repeat),
                progress,
                as_json_output=args.json,
            ),
            check=args.check,
        )
    if args.purge_scale is not None:
        from . import purge

        return _verdict(
            lambda progress: purge.main(
                args.backend,
                args.url,
                args.purge_scale,
                args.purge_batch,
                progress,
                as_json_output=args.json,
            ),
            check=args.check,
        )
    if args.backend in ("postgresql", "mariadb"):
        from . import servers  # needs the postgresql or mysql extra

        return _verdict(
            lambda progress: servers.main(
                args.backend, args.url, sizes, progress, as_json_output=args.json
            ),
            check=args.check,
        )
    if args.backend == "memcached":
        from . import memcached  # needs the memcached extra (pymemcache)

        return _verdict(
            lambda progress: memcached.main(
                args.memcached, sizes, progress, as_json_output=args.json
            ),
            check=args.check,
        )
    with ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="console-auth-bench-"))
            )
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            if any(workdir.glob("*.sqlite3")):
                print(f"bench: {workdir} already holds databases", file=sys.stderr)
                return 2
        progress = _progress_from(time.perf_counter_ns())
        comparison = compare(workdir, sizes, progress)
        growth = grow(workdir, sizes, progress)
    if args.json:
        output = report.as_json(sizes, comparison, growth)
        print(json.dumps(output, indent=2))
        passed = bool(output["passed"])
    else:
        print(report.as_table(sizes, comparison, growth))
        passed = all(t.passed for t in report.targets(comparison, growth))
    return 1 if args.check and not passed else 0
