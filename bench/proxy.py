"""``python -m bench --proxy``: console-auth's proxy against websockify 0.13,
in the same run, on the same machine, relaying to the same echo target.

Every process is separate, so no two share an event loop or a core's worth
of Python: the echo target (asyncio, a process of its own), ``console-auth
proxy`` on a SQLite file, ``python -m websockify`` with its ``TokenFile``
plugin, and the client (``websockets``, in this process). Both proxies are
given the same request target, ``/websockify?token=..&instance_uuid=..``,
with tokens console-auth issued and the same tokens written to websockify's
token file; every session proves its relay with a round trip through the
echo target, and a session that does not is an error, not a figure.

Measured, with the peers alternating which goes first in each repetition:

- set-up rate: sessions per second, each one opened (validation included),
  one probe echoed, closed; one at a time and ``concurrency`` at once;
- relay throughput: one session sends ``mebibytes`` in 64 KiB messages
  while it reads the echo back; payload MB/s;
- idle memory: fresh proxy processes, warmed up, then ``idle`` sessions
  opened and left idle; the growth of the proxy's whole process tree
  (websockify forks one process per session) per session. Summed RSS
  counts each shared page once per process, so the target is judged on
  PSS (``smaps_rollup``), which splits shared pages among their sharers.
  websockify holds at most ``WEBSOCKIFY_IDLE_MAX`` of them (see there);
  its figure is per session all the same, one process each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Origin, Subprotocol

from console_auth.adapters.container import build_container
from console_auth.adapters.settings import DatabaseSettings, Settings
from console_auth.domain import ConsoleType

from .report import Target
from .runner import BenchError, Progress

PEERS: Final = ("console_auth", "websockify")
PEER_LABELS: Final = {"console_auth": "console-auth", "websockify": "websockify"}
INSTANCE: Final = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
PROBE: Final = b"console-auth bench probe"
CHUNK: Final = 64 << 10
"""Bytes per WebSocket message in the throughput run; both proxies read
their target 64 KiB at a time too."""
TOKEN_TTL: Final = timedelta(days=1)
REPO: Final = Path(__file__).resolve().parent.parent
START_TIMEOUT: Final = 60.0
SESSION_TIMEOUT: Final = 10.0
"""Seconds to open one session and echo its probe."""
WEBSOCKIFY_IDLE_MAX: Final = 480
"""websockify 0.13 drops sessions past about 510 at once: its listener keeps
two descriptors per live child (multiprocessing's), so accepted sockets get
numbers past 1023, which the child's ``select()`` refuses ("filedescriptor
out of range in select()"), whatever the open-files limit."""


@dataclass(frozen=True)
class Measure:
    label: str
    unit: str
    limit: float | None
    at_least: bool = True
    scale: float = 1.0
    """Displayed value = stored value / scale."""


MEASURES: Final = {
    "setup_sequential": Measure("set-up, one at a time", "sessions/s", 2.0),
    "setup_concurrent": Measure("set-up, {concurrency} at once", "sessions/s", 2.0),
    "throughput": Measure("relay throughput", "MB/s", 1.0, scale=1e6),
    "idle_pss": Measure("idle memory, PSS", "KiB/session", 0.1, at_least=False, scale=1024),
    "idle_rss": Measure("idle memory, RSS sum", "KiB/session", None, scale=1024),
}
"""Ratios are console-auth over websockify; limits from issue 11. Stored
values are sessions/s, bytes/s and bytes per session."""


@dataclass(frozen=True)
class ProxySizes:
    sessions: int
    """Sessions per set-up repetition, in each mode."""
    concurrency: int
    repeat: int
    """Interleaved repetitions of the set-up and throughput runs."""
    mebibytes: int
    """Payload of one throughput repetition."""
    idle: int
    """Idle sessions held per memory repetition."""
    memory_repeat: int
    """Memory repetitions, on fresh proxy processes each."""
    tokens: int


FULL: Final = ProxySizes(
    sessions=300, concurrency=16, repeat=5, mebibytes=64, idle=1000, memory_repeat=3, tokens=16
)
"""A few minutes on two cores, most of it websockify forking 1,000 processes."""
QUICK: Final = ProxySizes(
    sessions=6, concurrency=2, repeat=2, mebibytes=1, idle=8, memory_repeat=1, tokens=4
)
"""Seconds: proves the plumbing; its figures mean nothing."""


def sizes(*, quick: bool, repeat: int | None = None) -> ProxySizes:
    base = QUICK if quick else FULL
    return base if repeat is None else replace(base, repeat=repeat)


# --- the echo target, run in a process of its own -------------------------


class _Echo(asyncio.Protocol):
    """Writes back what it reads; stops reading while its peer is not."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def _echo_until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:  # a bench that dies closes our stdin: no orphan is left
        await loop.run_in_executor(None, sys.stdin.buffer.read)


def serve_echo() -> None:
    """The echo target's process: prints its port, serves until stdin closes."""
    asyncio.run(_echo_until_stdin_closes())


# --- processes -----------------------------------------------------------


@dataclass(frozen=True)
class TreeMemory:
    processes: int
    rss: int
    pss: int | None
    """``None`` without ``/proc/<pid>/smaps_rollup`` (Linux before 4.14)."""


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def tree_memory(root: int) -> TreeMemory:
    """Summed over ``root``'s tree; a process that is gone (or a zombie) is skipped."""
    with_pss = Path("/proc/self/smaps_rollup").exists()
    processes, rss, pss = 0, 0, 0
    for pid in descendants(root):
        try:
            one_rss = _kib(Path(f"/proc/{pid}/status"), "VmRSS:")
            one_pss = _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") if with_pss else 0
        except (OSError, KeyError):
            continue
        processes, rss, pss = processes + 1, rss + one_rss, pss + one_pss
    return TreeMemory(processes, rss, pss if with_pss else None)


def _kib(path: Path, key: str) -> int:
    """A ``key  N kB`` line of a ``/proc`` file, in bytes."""
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@dataclass
class Peer:
    name: str
    process: asyncio.subprocess.Process
    port: int

    def uri(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/websockify?token={token}&instance_uuid={INSTANCE}"

    @property
    def origin(self) -> Origin:
        """What a browser on the proxy's own page sends."""
        return Origin(f"http://127.0.0.1:{self.port}")


@dataclass
class Setup:
    """What the peers need: the echo target, tokens, and where to log."""

    workdir: Path
    echo_port: int
    tokens: list[str]
    env: dict[str, str]
    token_file: Path


async def _python(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, *args, cwd=REPO, **kwargs)


async def _first_line(process: asyncio.subprocess.Process, what: str) -> str:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        raise BenchError(f"{what} did not start within {START_TIMEOUT:g} s") from None
    if not line:
        raise BenchError(f"{what} exited at start (status {await process.wait()})")
    return line.decode().strip()


@contextlib.asynccontextmanager
async def echo_target() -> AsyncIterator[int]:
    process = await _python(
        "-c",
        "from bench.proxy import serve_echo; serve_echo()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield int(await _first_line(process, "the echo target"))
    finally:
        await _stop(process)


async def _start(setup: Setup, name: str) -> Peer:
    log = open(setup.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child's, closed below
    try:
        if name == "console_auth":
            script = Path(sys.executable).parent / "console-auth"
            if not script.exists():
                raise BenchError(f"{script} is missing: install console-auth with the proxy extra")
            process = await asyncio.create_subprocess_exec(
                script, "proxy", "--listen", "127.0.0.1:0",
                env=setup.env, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
            line = await _first_line(process, "console-auth proxy")
            if not line.startswith("listening: "):
                raise BenchError(f"console-auth proxy said {line!r}")
            return Peer(name, process, int(line.rsplit(":", 1)[1]))
        port = _free_port()
        process = await _python(
            "-m", "websockify", "--token-plugin", "TokenFile",
            "--token-source", str(setup.token_file), f"127.0.0.1:{port}",
            stdout=log, stderr=log,
        )  # fmt: skip
        await _listening(process, port)
        return Peer(name, process, port)
    finally:
        log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _listening(process: asyncio.subprocess.Process, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise BenchError(f"websockify exited at start (status {process.returncode})")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise BenchError(f"websockify did not listen within {START_TIMEOUT:g} s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL for the process and anything it left behind."""
    if process.returncode is not None:
        return
    children = {pid: _started(pid) for pid in descendants(process.pid)[1:]}
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()
    for pid, started in children.items():
        if started is not None and _started(pid) == started:  # not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks after boot), or ``None`` if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return None


@contextlib.asynccontextmanager
async def running(setup: Setup, name: str) -> AsyncIterator[Peer]:
    peer = await _start(setup, name)
    try:
        yield peer
    finally:
        await _stop(peer.process)


# --- the client ----------------------------------------------------------


async def _open(peer: Peer, token: str) -> ClientConnection:
    """A session that has proved its relay with one echoed probe."""
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            ws = await connect(
                peer.uri(token),
                origin=peer.origin,
                subprotocols=[Subprotocol("binary")],
                compression=None,
                ping_interval=None,  # a browser does not ping; the proxy may
                open_timeout=None,
                close_timeout=SESSION_TIMEOUT,
                max_size=None,
            )
            try:
                await ws.send(PROBE)
                echoed = b""
                while len(echoed) < len(PROBE):
                    echoed += _as_bytes(await ws.recv())
            except BaseException:
                await ws.close()
                raise
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise BenchError(f"{PEER_LABELS[peer.name]}: a session failed: {exc!r}") from None
    if echoed != PROBE:
        await ws.close()
        raise BenchError(f"{PEER_LABELS[peer.name]}: the echo came back wrong")
    return ws


def _as_bytes(message: str | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.encode()


async def _sessions(peer: Peer, tokens: Sequence[str], count: int, concurrency: int) -> int:
    """``count`` sessions opened, proved and closed, ``concurrency`` at a time;
    nanoseconds taken."""

    async def worker(first: int) -> None:
        for number in range(first, count, concurrency):
            ws = await _open(peer, tokens[number % len(tokens)])
            await ws.close()

    start = time.perf_counter_ns()
    async with asyncio.TaskGroup() as group:
        for first in range(min(concurrency, count)):
            group.create_task(worker(first))
    return time.perf_counter_ns() - start


async def _throughput(peer: Peer, token: str, total: int) -> int:
    """One session echoes ``total`` bytes; nanoseconds from the first send to
    the last byte back."""
    ws = await _open(peer, token)
    payload = os.urandom(CHUNK)
    try:

        async def send() -> None:
            for _ in range(total // CHUNK):
                await ws.send(payload)

        start = time.perf_counter_ns()
        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            received = 0
            while received < total:
                received += len(_as_bytes(await ws.recv()))
        elapsed = time.perf_counter_ns() - start
    finally:
        await ws.close()
    if received != total:
        raise BenchError(f"{PEER_LABELS[peer.name]}: {received} bytes came back of {total}")
    return elapsed


async def _settle(peer: Peer, processes: int) -> TreeMemory:
    """The tree's memory once it has ``processes`` processes (websockify's
    children come and go on their own time), and a breath after."""
    deadline = time.monotonic() + 30
    while tree_memory(peer.process.pid).processes != processes:
        if time.monotonic() > deadline:
            raise BenchError(f"{PEER_LABELS[peer.name]} never settled at {processes} processes")
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    return tree_memory(peer.process.pid)


def idle_sessions(name: str, sizes: ProxySizes) -> int:
    return sizes.idle if name == "console_auth" else min(sizes.idle, WEBSOCKIFY_IDLE_MAX)


async def _idle_memory(setup: Setup, name: str, sizes: ProxySizes) -> tuple[float, float, int]:
    """Fresh processes: RSS and PSS growth per idle session, and the number
    of processes holding them."""
    count = idle_sessions(name, sizes)
    processes = 1 if name == "console_auth" else 1 + count
    async with running(setup, name) as peer:
        await _sessions(peer, setup.tokens, 2 * sizes.concurrency, sizes.concurrency)
        before = await _settle(peer, 1)
        opened: list[ClientConnection] = []
        gate = asyncio.Semaphore(sizes.concurrency)

        async def hold(number: int) -> None:
            async with gate:
                opened.append(await _open(peer, setup.tokens[number % len(setup.tokens)]))

        try:
            async with asyncio.TaskGroup() as group:
                for number in range(count):
                    group.create_task(hold(number))
            after = await _settle(peer, processes)
        finally:
            async with asyncio.TaskGroup() as group:
                for ws in opened:
                    group.create_task(ws.close())
    if before.pss is None or after.pss is None:
        raise BenchError("no /proc/<pid>/smaps_rollup: PSS, the fair figure, is unknown")
    return (
        (after.rss - before.rss) / count,
        (after.pss - before.pss) / count,
        after.processes,
    )


# --- the run -------------------------------------------------------------


@dataclass
class ProxyRun:
    sizes: ProxySizes
    runs: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {m: {p: [] for p in PEERS} for m in MEASURES}
    )
    """``runs[measure][peer]``: one value per repetition."""
    sessions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PEERS, 0))
    """Sessions that proved their relay, per peer, warm-ups included."""
    idle_processes: dict[str, int] = field(default_factory=dict)


def raise_open_files(needed: int) -> None:
    """Every idle session is a socket here, two in the proxy, one in the
    echo target; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"the open-files limit is {hard}; {needed} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def issue_tokens(workdir: Path, echo_port: int, count: int) -> tuple[dict[str, str], list[str]]:
    """Tokens for the echo target on a fresh SQLite store; the proxy's environment."""
    url = f"sqlite:///{workdir / 'proxy.sqlite3'}"
    container = build_container(Settings(database=DatabaseSettings(url=url)))
    try:
        service = container.service()
        tokens = [
            service.authorize(
                INSTANCE, "127.0.0.1", echo_port, ConsoleType.NOVNC, ttl=TOKEN_TTL
            ).token.get_secret_value()
            for _ in range(count)
        ]
    finally:
        container.shutdown_resources()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_AUTH_")}
    env |= {"CONSOLE_AUTH_DATABASE__URL": url, "CONSOLE_AUTH_PROXY__DRAIN_TIMEOUT": "1"}
    return env, tokens


async def run(workdir: Path, sizes: ProxySizes, progress: Progress) -> ProxyRun:
    raise_open_files(4 * sizes.idle + 1024)
    result = ProxyRun(sizes)
    async with echo_target() as echo_port:
        progress(f"echo target on 127.0.0.1:{echo_port}; issuing {sizes.tokens} tokens")
        env, tokens = issue_tokens(workdir, echo_port, sizes.tokens)
        token_file = workdir / "websockify-tokens"
        token_file.write_text("".join(f"{t}: 127.0.0.1:{echo_port}\n" for t in tokens))
        setup = Setup(workdir, echo_port, tokens, env, token_file)
        async with running(setup, PEERS[0]) as first, running(setup, PEERS[1]) as second:
            peers = {first.name: first, second.name: second}
            await _timed(peers, setup, sizes, progress, result)
        for number in range(1, sizes.memory_repeat + 1):
            for name in PEERS if number % 2 else PEERS[::-1]:
                progress(
                    f"memory {number}/{sizes.memory_repeat}: {idle_sessions(name, sizes):,} "
                    f"idle sessions on a fresh {PEER_LABELS[name]}"
                )
                async with asyncio.timeout(600):
                    rss, pss, processes = await _idle_memory(setup, name, sizes)
                result.runs["idle_rss"][name].append(rss)
                result.runs["idle_pss"][name].append(pss)
                result.idle_processes[name] = processes
                result.sessions[name] += 2 * sizes.concurrency + idle_sessions(name, sizes)
    return result


async def _timed(
    peers: dict[str, Peer], setup: Setup, sizes: ProxySizes, progress: Progress, result: ProxyRun
) -> None:
    total = sizes.mebibytes << 20
    for number in range(sizes.repeat + 1):
        progress(
            "warm-up" if number == 0 else f"round {number}/{sizes.repeat}: set-up and throughput"
        )
        order = [peers[n] for n in (PEERS if number % 2 else PEERS[::-1])]
        timings: dict[str, dict[str, float]] = {m: {} for m in MEASURES}
        async with asyncio.timeout(600):
            for measure, concurrency in (
                ("setup_sequential", 1),
                ("setup_concurrent", sizes.concurrency),
            ):
                for peer in order:
                    ns = await _sessions(peer, setup.tokens, sizes.sessions, concurrency)
                    timings[measure][peer.name] = sizes.sessions * 1e9 / ns
                    result.sessions[peer.name] += sizes.sessions
            for peer in order:
                ns = await _throughput(peer, setup.tokens[0], total)
                timings["throughput"][peer.name] = total * 1e9 / ns
                result.sessions[peer.name] += 1
        if number:
            for measure, by_peer in timings.items():
                for name, value in by_peer.items():
                    result.runs[measure][name].append(value)


# --- figures -------------------------------------------------------------


def ratio(result: ProxyRun, measure: str) -> float:
    mine, theirs = (statistics.median(result.runs[measure][p]) for p in PEERS)
    return mine / theirs


def targets(result: ProxyRun) -> list[Target]:
    return [
        Target(_label(name, result.sizes), ratio(result, name), measure.limit, measure.at_least)
        for name, measure in MEASURES.items()
        if measure.limit is not None
    ]


def _label(name: str, sizes: ProxySizes) -> str:
    return MEASURES[name].label.format(concurrency=sizes.concurrency)


def environment() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **{p: version(p) for p in ("websockify", "numpy", "aiohttp", "websockets")},
    }


def as_json(result: ProxyRun) -> dict[str, Any]:
    found = targets(result)
    return {
        "mode": "proxy",
        "environment": environment(),
        "sizes": asdict(result.sizes),
        "measures": {
            name: {
                "label": _label(name, result.sizes),
                "unit": measure.unit,
                **{peer: statistics.median(result.runs[name][peer]) for peer in PEERS},
                "ratio": ratio(result, name),
                **{f"{peer}_runs": result.runs[name][peer] for peer in PEERS},
            }
            for name, measure in MEASURES.items()
        },
        "sessions": result.sessions,
        "idle_sessions": {peer: idle_sessions(peer, result.sizes) for peer in PEERS},
        "idle_processes": result.idle_processes,
        "targets": [
            {"name": t.name, "value": t.value, "limit": t.limit, "at_least": t.at_least}
            | {"passed": t.passed}
            for t in found
        ],
        "passed": all(t.passed for t in found),
    }


def as_table(output: dict[str, Any]) -> str:
    sizes, env = output["sizes"], output["environment"]
    verdicts = {t["name"]: t for t in output["targets"]}
    lines = [
        f"console-auth proxy vs websockify {env['websockify']} (TokenFile), both relaying to "
        f"one local echo target - median (min-max) of {sizes['repeat']} interleaved "
        f"repetitions; memory: {sizes['memory_repeat']} repetitions on fresh processes",
        "",
        f"{'measure':<22}{'unit':>12}{'console-auth':>24}{'websockify':>26}{'ratio':>8}  target",
    ]
    for name, figures in output["measures"].items():
        scale = MEASURES[name].scale
        target = verdicts.get(figures["label"])
        verdict = (
            ""
            if target is None
            else f"{'>=' if target['at_least'] else '<='} {target['limit']:.2f}x "
            f"{'PASS' if target['passed'] else 'FAIL'}"
        )
        cells = [
            _cell(figures[peer] / scale, [v / scale for v in figures[f"{peer}_runs"]])
            for peer in PEERS
        ]
        lines.append(
            f"{figures['label']:<22}{figures['unit']:>12}{cells[0]:>24}{cells[1]:>26}"
            f"{figures['ratio']:>7.{2 if figures['ratio'] >= 0.1 else 3}f}x  {verdict}".rstrip()
        )
    held, processes = output["idle_sessions"], output["idle_processes"]
    lines += [
        "",
        f"idle sessions: console-auth {held['console_auth']:,} in "
        f"{processes.get('console_auth', '?')} process, websockify {held['websockify']:,} in "
        f"{processes.get('websockify', '?')} (it drops sessions past about 510 at once); RSS "
        "sums count a shared page once per process, PSS splits it: the target is on PSS",
        f"sessions proved by an echo: console-auth {output['sessions']['console_auth']:,}, "
        f"websockify {output['sessions']['websockify']:,}; websockify {env['websockify']} with "
        f"numpy {env['numpy']}, Python {env['python']}, {env['cpus']} CPUs",
        "",
        f"{sum(t['passed'] for t in output['targets'])}/{len(output['targets'])} targets pass",
    ]
    return "\n".join(lines)


def _cell(median: float, runs: Sequence[float]) -> str:
    digits = 0 if median >= 100 else 1
    return f"{median:,.{digits}f} ({min(runs):,.{digits}f}-{max(runs):,.{digits}f})"


def main(sizes: ProxySizes, progress: Progress, *, as_json_output: bool) -> bool:
    """Run, print, and say whether every target passed."""
    with tempfile.TemporaryDirectory(prefix="console-auth-bench-proxy-") as workdir:
        try:
            result = asyncio.run(run(Path(workdir), sizes, progress))
        except ExceptionGroup as group:  # from a TaskGroup: the first failure says why
            failed = group.subgroup(BenchError)
            if failed is None:
                raise
            raise _first(failed) from None
    output = as_json(result)
    print(json.dumps(output, indent=2) if as_json_output else as_table(output))
    return bool(output["passed"])


def _first(group: BaseExceptionGroup[BenchError]) -> BenchError:
    found = group.exceptions[0]
    return found if isinstance(found, BenchError) else _first(found)
