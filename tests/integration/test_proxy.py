"""The console proxy end to end on loopback: a ``websockets`` client, the
proxy (in-process on aiohttp's runner, or ``console-auth proxy`` as a
process), and consoles that are real TCP servers counting who reached them.
The store is real too: the in-memory adapters, or a SQLite file or memcached
for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import pytest
from aiohttp import ClientSession
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from console_auth.adapters import cli
from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.settings import load_settings
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource
from console_auth.adapters.web.proxy import ProxyConfig, create_app, start, stop
from console_auth.adapters.web.relay import RelayLimits
from console_auth.application import ConsoleAuthService, ConsolePortService, ServicePolicy
from console_auth.application.ports import ConsoleConnectionRepository
from console_auth.domain import BackendUnavailable, ConsoleType, InvalidRequest
from tests.backends.memcached import fresh_prefix
from tests.fakes import FakeClock, UnavailableRepository
from tests.integration.rfb_target import RFB_VERSION, target, unanswered_port

INSTANCE = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
OTHER_INSTANCE = "0f1e2d3c-4b5a-4697-8877-665544332211"
SCRIPT = str(Path(sys.executable).parent / "console-auth")
SESSION_LOG = "console_auth.adapters.web.proxy"


@dataclass
class Consoles:
    """The real services on the in-memory store, with a clock the test moves."""

    repository: ConsoleConnectionRepository = field(
        default_factory=InMemoryConsoleConnectionRepository
    )
    clock: FakeClock = field(default_factory=lambda: FakeClock(datetime.now(UTC)))
    lease_ttl: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        self.service = ConsoleAuthService(
            self.repository,
            self.clock,
            SecretsTokenSource(),
            ServicePolicy(lease_ttl=self.lease_ttl),
        )
        self.ports = ConsolePortService(
            self.service,
            InMemoryPortLeaseRepository(),
            InMemoryPortReservationRepository(),
            SecretsLeaseIdSource(),
        )

    def novnc(self, port: int, instance: str = INSTANCE, **options: Any) -> str:
        issued = self.service.authorize(
            instance, "127.0.0.1", port, ConsoleType.NOVNC, options=options
        )
        return issued.token.get_secret_value()

    def serial(self, port: int) -> str:
        issued = self.ports.authorize_serial(INSTANCE, "127.0.0.1", [port])
        return issued.token.get_secret_value()


CONFIG = ProxyConfig(proxy_id="test-proxy", connect_timeout=1.0, drain_timeout=0.5)


@contextlib.asynccontextmanager
async def proxy(consoles: Consoles, config: ProxyConfig = CONFIG) -> AsyncIterator[int]:
    """The proxy in this event loop on a free loopback port; yields the port."""
    runner = await start(create_app(consoles.service, consoles.ports, config), "127.0.0.1", 0)
    try:
        yield runner.addresses[0][1]
    finally:
        await stop(runner)


def console_uri(port: int, token: str, instance: str = INSTANCE) -> str:
    return f"ws://127.0.0.1:{port}/websockify?token={token}&instance_uuid={instance}"


def client(uri: str, port: int, **options: Any) -> Any:
    """A client as a browser on the proxy's own page would be (same Origin)."""
    options.setdefault("origin", Origin(f"http://127.0.0.1:{port}"))
    return connect(uri, open_timeout=5, close_timeout=2, **options)


async def refusal(uri: str, port: int, **options: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        async with client(uri, port, **options):
            pass
    response = caught.value.response
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.status_code, response.body.decode()


async def closed(ws: ClientConnection, within: float) -> ConnectionClosed:
    """Read until the proxy closes the session; how it closed it."""
    async with asyncio.timeout(within):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc


def session_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage() for r in caplog.records if r.name == SESSION_LOG)
    return [line for line in lines if line.startswith("console session ")]


@pytest.mark.asyncio
async def test_a_good_token_relays_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # every logger: aiohttp's access log would show the token
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles) as port:
        token = consoles.novnc(console.port)
        async with client(console_uri(port, token), port) as ws:
            assert await ws.recv() == RFB_VERSION
            await ws.send(b"RFB 003.008\n")
            assert await ws.recv() == b"RFB 003.008\n"
        assert console.accepted == 1
        await asyncio.sleep(0.1)
    (line,) = session_lines(caplog)
    assert f"instance={INSTANCE}" in line
    assert f"target=127.0.0.1:{console.port} kind=novnc" in line
    assert "outcome=client_closed" in line
    assert "bytes_in=12 bytes_out=24" in line
    assert token not in caplog.text


@pytest.mark.asyncio
async def test_the_access_urls_novnc_path_reaches_the_console() -> None:
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles) as port:
        issued = consoles.service.authorize(
            INSTANCE,
            "127.0.0.1",
            console.port,
            ConsoleType.NOVNC,
            access_url_base=f"http://127.0.0.1:{port}/vnc.html?path=websockify",
        )
        assert issued.access_url is not None
        (path,) = parse_qs(urlsplit(issued.access_url).query)["path"]
        async with client(f"ws://127.0.0.1:{port}/{path}", port) as ws:
            assert await ws.recv() == RFB_VERSION


@pytest.mark.asyncio
async def test_a_client_without_origin_is_served() -> None:
    """No browser sends a WebSocket handshake without Origin (the rules' choice)."""
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles) as port:
        uri = console_uri(port, consoles.novnc(console.port))
        async with connect(uri, open_timeout=5) as ws:
            assert await ws.recv() == RFB_VERSION


REFUSALS = {
    "missing token": (401, "missing_token"),
    "malformed token": (401, "malformed_token"),
    "unknown token": (403, "unknown_token"),
    "expired token": (403, "expired_token"),
    "revoked token": (403, "unknown_token"),
    "wrong instance": (403, "wrong_instance"),
    "wrong console kind": (403, "wrong_console_kind"),
    "bad origin": (403, "bad_origin"),
    "store unavailable": (503, "backend_unavailable"),
}


def refused_target(
    consoles: Consoles, case: str, port: int, console_port: int, token: str
) -> tuple[str, str]:
    """The request target of a refusal ``case`` (a key of ``REFUSALS``) built
    from ``token``, a good one issued for ``console_port``, and the token it
    presents; the store is changed where the case needs it."""
    instance = INSTANCE
    if case == "malformed token":
        token = "not-a-token"
    elif case == "unknown token":
        token = token[::-1]
    elif case == "expired token":
        consoles.clock.advance(timedelta(minutes=10))
    elif case == "revoked token":
        consoles.service.revoke_instance(INSTANCE)
    elif case == "wrong instance":
        instance = OTHER_INSTANCE
    elif case == "wrong console kind":
        token = consoles.serial(console_port)
    elif case == "missing token":
        return f"ws://127.0.0.1:{port}/websockify?instance_uuid={INSTANCE}", token
    return console_uri(port, token, instance), token


@pytest.mark.asyncio
@pytest.mark.parametrize("case", REFUSALS)
async def test_a_refused_request_gets_its_status_and_reaches_no_console(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, SESSION_LOG)
    down = case == "store unavailable"
    consoles = Consoles(repository=UnavailableRepository()) if down else Consoles()
    novnc_only = replace(CONFIG, console_types=frozenset({ConsoleType.NOVNC}))
    config = novnc_only if case == "wrong console kind" else CONFIG
    async with target("rfb") as console, proxy(consoles, config) as port:
        token = "A" * 43 if down else consoles.novnc(console.port)
        uri, token = refused_target(consoles, case, port, console.port, token)
        options = {"origin": Origin("http://evil.example")} if case == "bad origin" else {}
        status, body = await refusal(uri, port, **options)
    assert (status, body.split(":")[0]) == REFUSALS[case]
    assert console.accepted == 0
    assert token not in body
    (line,) = session_lines(caplog)
    assert f"outcome=refused:{REFUSALS[case][1]}" in line
    assert token not in caplog.text


@pytest.mark.asyncio
async def test_session_max_closes_a_live_session() -> None:
    consoles = Consoles()
    config = replace(CONFIG, limits=RelayLimits(session_max=0.5))
    async with (
        target("rfb") as console,
        proxy(consoles, config) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        started = time.monotonic()
        assert await ws.recv() == RFB_VERSION
        ended = await closed(ws, within=3)
    assert 0.4 < time.monotonic() - started < 2
    assert ended.rcvd is not None
    assert ended.rcvd.reason == "session time limit reached"


@pytest.mark.asyncio
async def test_a_revoke_closes_the_instances_live_sessions_within_session_recheck(
    repository: ConsoleConnectionRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """On every backend, and after the tokens expired and were purged: the
    revocation record, not the token, ends the session."""
    caplog.set_level(logging.INFO, logger=SESSION_LOG)
    consoles = Consoles(repository=repository)
    config = replace(CONFIG, session_recheck=0.2)
    async with target("echo") as console, proxy(consoles, config) as port:
        revoked_token = consoles.novnc(console.port)
        kept_token = consoles.novnc(console.port, instance=OTHER_INSTANCE)
        revoked_uri = console_uri(port, revoked_token)
        kept_uri = console_uri(port, kept_token, OTHER_INSTANCE)
        async with client(revoked_uri, port) as revoked, client(kept_uri, port) as kept:
            consoles.clock.advance(timedelta(hours=1))  # both tokens expired, then purged
            await asyncio.to_thread(consoles.service.purge_expired)
            await asyncio.sleep(0.5)  # rechecks find nothing: the sessions run on
            for ws in (revoked, kept):
                await ws.send(b"still here")
                assert await ws.recv() == b"still here"
            await asyncio.to_thread(consoles.service.revoke_instance, INSTANCE)
            started = time.monotonic()
            ended = await closed(revoked, within=3)
            assert time.monotonic() - started < 1.0  # session_recheck, with slack
            assert ended.rcvd is not None
            assert (ended.rcvd.code, ended.rcvd.reason) == (1008, "console access was revoked")
            consoles.clock.advance(timedelta(microseconds=1))
            after_uri = console_uri(port, consoles.novnc(console.port))
            async with client(after_uri, port) as after:  # issued after the revoke
                await asyncio.sleep(0.5)
                for ws in (kept, after):
                    await ws.send(b"not revoked")
                    assert await ws.recv() == b"not revoked"
    outcomes = sorted(line.split("outcome=")[1].split()[0] for line in session_lines(caplog))
    assert outcomes == ["client_closed", "client_closed", "revoked"]
    assert revoked_token not in caplog.text


class _RecheckFails(InMemoryConsoleConnectionRepository):
    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        raise BackendUnavailable("store unavailable")


class _RecheckBreaksOnce(InMemoryConsoleConnectionRepository):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        if self.broken:
            self.broken = False
            raise RuntimeError("a bug in a store")
        return super().revocations(instance_uuids)


@pytest.mark.asyncio
async def test_the_recheck_outlives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    repository = _RecheckBreaksOnce()
    consoles = Consoles(repository=repository)
    config = replace(CONFIG, session_recheck=0.1)
    async with (
        target("echo") as console,
        proxy(consoles, config) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        await asyncio.sleep(0.3)
        assert not repository.broken
        await asyncio.to_thread(consoles.service.revoke_instance, INSTANCE)
        ended = await closed(ws, within=3)
    assert ended.rcvd is not None
    assert ended.rcvd.reason == "console access was revoked"
    assert "live sessions not rechecked for revocation" in caplog.text


@pytest.mark.asyncio
async def test_sessions_run_on_while_the_recheck_cannot_reach_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consoles = Consoles(repository=_RecheckFails())
    config = replace(CONFIG, session_recheck=0.1)
    async with (
        target("echo") as console,
        proxy(consoles, config) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        await asyncio.sleep(0.5)
        await ws.send(b"ping")
        assert await ws.recv() == b"ping"
    assert "live sessions not rechecked for revocation: store unavailable" in caplog.text


@pytest.mark.asyncio
async def test_idle_timeout_closes_a_quiet_session_only() -> None:
    consoles = Consoles()
    config = replace(CONFIG, limits=RelayLimits(idle_timeout=0.4))
    async with (
        target("echo") as console,
        proxy(consoles, config) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        for _ in range(4):  # traffic keeps it open past the idle bound
            await asyncio.sleep(0.2)
            await ws.send(b"ping")
            assert await ws.recv() == b"ping"
        ended = await closed(ws, within=3)
    assert ended.rcvd is not None
    assert ended.rcvd.reason == "idle too long"


@pytest.mark.asyncio
async def test_a_console_that_does_not_answer_is_a_504_within_the_connect_timeout() -> None:
    consoles = Consoles()
    config = replace(CONFIG, connect_timeout=0.5)
    with unanswered_port() as console_port:
        async with proxy(consoles, config) as port:
            started = time.monotonic()
            status, body = await refusal(console_uri(port, consoles.novnc(console_port)), port)
    assert status == 504
    assert body.startswith("console_timeout: the console did not answer within 0.5 s")
    assert time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_a_console_that_refuses_is_a_502() -> None:
    consoles = Consoles()
    with unanswered_port() as closed_port:
        pass  # bound, then closed: nothing listens there now
    async with proxy(consoles) as port:
        status, body = await refusal(console_uri(port, consoles.novnc(closed_port)), port)
    assert status == 502
    assert body.startswith("console_unreachable:")
    assert "127.0.0.1" not in body


@pytest.mark.asyncio
async def test_a_console_that_closes_mid_session_closes_the_websocket() -> None:
    consoles = Consoles()
    async with (
        target("greet_and_close") as console,
        proxy(consoles) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        assert await ws.recv() == RFB_VERSION
        ended = await closed(ws, within=3)
    assert ended.rcvd is not None
    assert (ended.rcvd.code, ended.rcvd.reason) == (1000, "the console closed the connection")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.asyncio
async def test_a_client_that_stops_reading_keeps_the_proxy_bounded() -> None:
    """The console floods; the client reads nothing. Backpressure reaches the
    console (its writes stall) and the proxy's memory does not grow with it."""
    consoles = Consoles()
    async with target("flood") as console, proxy(consoles) as port:
        uri = console_uri(port, consoles.novnc(console.port))
        async with client(uri, port, max_queue=1, max_size=1 << 20) as ws:
            before = rss()
            await asyncio.sleep(1.5)
            stalled_at = console.flooded
            await asyncio.sleep(1.5)
            grown = rss() - before
            assert console.flooded - stalled_at <= 256 << 10  # the console's writes stall
            assert console.flooded < 32 << 20  # kernel buffers plus a bounded few chunks
            assert grown < 32 << 20
            ws.transport.abort()


@pytest.mark.asyncio
async def test_a_second_serial_client_gets_409_and_the_lease_frees_on_close() -> None:
    consoles = Consoles()
    async with target("echo") as console, proxy(consoles) as port:
        uri = console_uri(port, consoles.serial(console.port))
        async with client(uri, port) as ws:
            await ws.send(b"ls\n")
            assert await ws.recv() == b"ls\n"
            (lease,) = consoles.ports.leases()
            assert (lease.kind, lease.proxy_id) == ("connected", "test-proxy")
            status, body = await refusal(uri, port)
            assert (status, body.split(":")[0]) == (409, "port_in_use")
        assert console.accepted == 1
        for _ in range(50):
            if not consoles.ports.leases():
                break
            await asyncio.sleep(0.05)
        assert consoles.ports.leases() == []
        async with client(uri, port) as ws:  # the port is free again
            await ws.send(b"again")
            assert await ws.recv() == b"again"


@pytest.mark.asyncio
async def test_the_heartbeat_keeps_a_serial_lease_past_its_ttl() -> None:
    consoles = Consoles(lease_ttl=timedelta(seconds=60))
    config = replace(CONFIG, lease_heartbeat=0.05)
    async with target("echo") as console, proxy(consoles, config) as port:
        uri = console_uri(port, consoles.serial(console.port))
        async with client(uri, port) as ws:
            (first,) = consoles.ports.leases()
            for _ in range(3):  # 150 s of store time, renewed every 50 s
                consoles.clock.advance(timedelta(seconds=50))
                await asyncio.sleep(0.3)
            (renewed,) = consoles.ports.leases()
            assert renewed.expires_at > first.expires_at + timedelta(seconds=100)
            status, _ = await refusal(uri, port)
            assert status == 409
            await ws.send(b"still here")
            assert await ws.recv() == b"still here"


@pytest.mark.asyncio
async def test_stop_drains_then_closes_live_sessions() -> None:
    consoles = Consoles()
    runner = await start(create_app(consoles.service, consoles.ports, CONFIG), "127.0.0.1", 0)
    port = runner.addresses[0][1]
    async with target("echo") as console:
        async with client(console_uri(port, consoles.novnc(console.port)), port) as ws:
            started = time.monotonic()
            stopping = asyncio.create_task(stop(runner))
            await asyncio.sleep(0.2)
            with pytest.raises(ConnectionRefusedError):  # no longer accepting
                await asyncio.open_connection("127.0.0.1", port)
            await ws.send(b"typed while draining")  # the session still works
            assert await ws.recv() == b"typed while draining"
            ended = await closed(ws, within=5)
            took = time.monotonic() - started
        await asyncio.wait_for(stopping, 2)
    assert CONFIG.drain_timeout - 0.1 < took < CONFIG.drain_timeout + 1
    assert ended.rcvd is not None
    assert (ended.rcvd.code, ended.rcvd.reason) == (1001, "the console proxy is shutting down")


@pytest.mark.asyncio
async def test_web_dir_serves_files_beside_the_websocket(tmp_path: Path) -> None:
    (tmp_path / "vnc.html").write_text("<html>noVNC</html>")
    consoles = Consoles()
    config = replace(CONFIG, web_dir=tmp_path)
    async with target("rfb") as console, proxy(consoles, config) as port:
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/vnc.html") as page:
                assert (page.status, await page.text()) == (200, "<html>noVNC</html>")
            async with http.get(f"http://127.0.0.1:{port}/../etc/passwd") as escape:
                assert escape.status in (403, 404)
        async with client(console_uri(port, consoles.novnc(console.port)), port) as ws:
            assert await ws.recv() == RFB_VERSION


def proxy_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``console-auth`` process on a SQLite file in
    ``tmp_path``, none of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_AUTH_")}
    return env | {
        "CONSOLE_AUTH_DATABASE__URL": f"sqlite:///{tmp_path / 'proxy.sqlite3'}",
        "CONSOLE_AUTH_PROXY__DRAIN_TIMEOUT": "1",
    }


async def cli_token(env: dict[str, str], console_port: int) -> str:
    """A noVNC token for the console on ``console_port``, from ``console-auth authorize``."""
    issue = await asyncio.create_subprocess_exec(
        SCRIPT, "authorize", "--instance", INSTANCE, "--host", "127.0.0.1",
        "--port", str(console_port), "--type", "novnc",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await issue.communicate()
    assert issue.returncode == 0
    return next(
        line.split(": ", 1)[1] for line in out.decode().splitlines() if line.startswith("token")
    )


@contextlib.asynccontextmanager
async def proxy_process(
    env: dict[str, str],
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``console-auth proxy`` on a free loopback port, and that port; killed
    at the end if it has not exited."""
    server = await asyncio.create_subprocess_exec(
        SCRIPT, "proxy", "--listen", "127.0.0.1:0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        assert ready.startswith("listening: 127.0.0.1:")
        yield server, int(ready.rsplit(":", 1)[1])
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["database", "memcached"])
async def test_the_console_auth_proxy_command(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """``console-auth proxy`` on a SQLite file, or on memcached serving every
    kind but serial: a token from ``authorize`` reaches the console; SIGTERM
    drains, closes, and exits 0; no token logged."""
    env = proxy_env(tmp_path)
    if backend == "memcached":  # it keeps no serial port leases
        env |= {
            "CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND": "memcached",
            "CONSOLE_AUTH_MEMCACHED__SERVERS": ",".join(request.getfixturevalue("servers")),
            "CONSOLE_AUTH_MEMCACHED__KEY_PREFIX": fresh_prefix(),
            "CONSOLE_AUTH_PROXY__CONSOLE_TYPES": ",".join(
                kind for kind in ConsoleType if kind is not ConsoleType.SERIAL
            ),
        }
    async with target("rfb") as console:
        token = await cli_token(env, console.port)
        async with proxy_process(env) as (server, port):
            async with client(console_uri(port, token), port) as ws:
                assert await ws.recv() == RFB_VERSION
                await ws.send(b"hello")
                assert await ws.recv() == b"hello"
                started = time.monotonic()
                server.send_signal(signal.SIGTERM)
                ended = await closed(ws, within=10)
            status = await asyncio.wait_for(server.wait(), 10)
            took = time.monotonic() - started
        assert server.stderr is not None
        log = (await server.stderr.read()).decode()
    assert status == 0
    assert 0.9 < took < 3.5  # the drain, not aiohttp's 5 s wait for a frozen close
    assert ended.rcvd is not None
    assert ended.rcvd.code == 1001
    assert "console session" in log
    assert "outcome=shutdown" in log
    assert f"target=127.0.0.1:{console.port}" in log
    assert token not in log


def test_proxy_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CONSOLE_AUTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__ALLOWED_ORIGINS", "HTTPS://Console.Example:443")
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__CONSOLE_TYPES", "novnc,serial")
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__SESSION_MAX", "3600")
    monkeypatch.setenv("CONSOLE_AUTH_SERIAL_LEASE_TTL", "30")
    settings = load_settings()
    config = ProxyConfig.from_settings(settings.proxy, serial_lease_ttl=settings.serial_lease_ttl)
    assert config.rules.allowed_origins == {"https://console.example"}
    assert [str(net) for net in config.rules.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert config.console_types == {ConsoleType.NOVNC, ConsoleType.SERIAL}
    assert config.limits == RelayLimits(session_max=3600)
    assert config.lease_heartbeat == 10
    assert config.proxy_id == f"{socket.gethostname()}:{os.getpid()}"


def test_the_proxy_command_refuses_bad_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", f"sqlite:///{tmp_path / 'unused.sqlite3'}")
    assert cli.main(["proxy", "--listen", "no-port"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.main(["proxy", "--listen", f"127.0.0.1:{taken.getsockname()[1]}"]) == 1
    assert capsys.readouterr().err.startswith("console-auth: error: cannot listen on 127.0.0.1:")
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__ALLOWED_ORIGINS", "ftp://console.example")
    assert cli.main(["proxy", "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("console-auth: error: allowed origins must be http(s)://host[:port]")
    assert len(err.splitlines()) == 1


def test_a_proxy_on_memcached_that_serves_serial_consoles_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """memcached may evict a port lease, so it keeps none, and the default
    ``proxy.console_types`` include serial: the error names both settings."""
    for name in [name for name in os.environ if name.startswith("CONSOLE_AUTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memcached")

    assert cli.main(["proxy", "--listen", "127.0.0.1:0"]) == 1
    assert capsys.readouterr().err == (
        "console-auth: error: proxy.console_types includes serial: serial consoles need "
        'the database backend (console_tokens_backend = "database"): '
        "memcached may evict a port lease\n"
    )


def test_a_proxy_without_a_port_service_serves_no_serial_consoles() -> None:
    consoles = Consoles()
    with pytest.raises(InvalidRequest, match="serves serial consoles needs a ConsolePortService"):
        create_app(consoles.service, None, CONFIG)
    novnc_only = replace(CONFIG, console_types=frozenset({ConsoleType.NOVNC}))
    assert create_app(consoles.service, None, novnc_only) is not None


IDLE_SESSIONS = 500


@pytest.mark.asyncio
async def test_500_idle_sessions_stay_open_and_each_still_relays() -> None:
    """Held open together, as a cloud's idle consoles are; then every one
    still carries bytes both ways, and the proxy kept one console
    connection per session."""
    consoles = Consoles()
    async with target("echo") as console, proxy(consoles) as port:
        uri = console_uri(port, consoles.novnc(console.port))
        async with contextlib.AsyncExitStack() as stack:
            opened = [
                await stack.enter_async_context(client(uri, port)) for _ in range(IDLE_SESSIONS)
            ]
            await asyncio.sleep(0.5)  # idle: nothing flows
            assert console.accepted == IDLE_SESSIONS

            async def echoed(ws: ClientConnection, n: int) -> bytes:
                await ws.send(f"probe {n}".encode())
                return cast(bytes, await asyncio.wait_for(ws.recv(), 10))

            answers = await asyncio.gather(*(echoed(ws, n) for n, ws in enumerate(opened)))
            assert answers == [f"probe {n}".encode() for n in range(IDLE_SESSIONS)]
