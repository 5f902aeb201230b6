"""The console proxy: an aiohttp application, and the runner behind
``console-auth proxy``.

A WebSocket request is answered in this order, and every refusal before the
upgrade is a real HTTP answer (a short text/plain body naming the reason):

1. the request rules (``requests.read_request``): target, origin, token;
2. the token, validated in the store's thread pool, never on the event loop;
   a console kind this proxy does not serve is refused;
3. a serial console's port lease (``ConsolePortService.connect``, 409 if
   the port has a client), renewed while the session lives;
4. the connection to the console (``dial``): TCP, the CONNECT handshake,
   TLS, as the connection asks, bounded by ``connect_timeout`` (504; 502 if
   refused), so an unreachable console is an HTTP answer too;
5. the upgrade, then the relay (``relay.Relay``) until either side ends or
   a bound is hit.

With ``rfb_refusals`` (a noVNC-only proxy), a refused request that is a
well-formed upgrade is upgraded and refused inside RFB instead (``rfb``), so
noVNC shows the reason rather than "code 1006". Origin refusals stay HTTP:
a page from a foreign origin never gets a socket from the proxy.

Each request leaves one INFO line: client, instance, target, console kind,
token hash prefix, outcome or refusal reason, duration, bytes each way;
never the token, nor the request target that carries it (aiohttp's access
log is off for that reason). With the service's ``ConsoleEvents`` wired,
each request is a ``session`` span and reports ``session.refused``, or
``session.started`` and ``session.ended``, with the client's address.

``GET <metrics_path>`` (with an ``exposition``: Prometheus metrics) answers
scrapes on the console listener, only to clients within
``metrics_networks`` (default loopback, as resolved through the trusted
proxies): anyone else gets a 404, as for a path that does not exist, since
browsers reach this listener. Plain GETs are served from ``web_dir`` when one
is given (noVNC's files), so the access URL opens directly; the WebSocket
answers on any path, as websockify does, since noVNC's ``path`` parameter
chooses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Final, TypeVar
from uuid import UUID

from aiohttp import web

from console_auth.adapters.settings import MetricsSettings, ProxySettings
from console_auth.application import ConsoleAuthService
from console_auth.application.events import (
    HASH_PREFIX,
    ConsoleEvent,
    EventFields,
    EventName,
    UseCase,
    as_uuid,
    record_safely,
)
from console_auth.application.serial import ConsolePortService
from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleType,
    InvalidRequest,
    InvalidToken,
    LeaseLost,
    PortLease,
    check_token,
    hash_token,
)
from console_auth.domain.hosts import join_address

from . import rfb
from .dial import Dialer, TargetTLS, target_port
from .refusals import Reason, Refused, refusal_for, wrong_console_kind
from .relay import CLOSE_TIMEOUT, Outcome, Relay, RelayLimits, SessionEnded, Watcher
from .requests import ConsoleRequest, RequestRules, RequestView, client_address, read_request

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

WEBSOCKET_PROTOCOLS: Final = ("binary",)
"""Offered back when asked (older noVNC asks for ``binary``); no base64 mode."""
RFB_KINDS: Final = frozenset({ConsoleType.NOVNC})
"""Console kinds whose clients speak RFB, and so may be refused in it."""
_HTTP_ONLY: Final = frozenset({Reason.BAD_ORIGIN, Reason.ORIGIN_SCHEME_MISMATCH})
_NO_SPAN: Final = contextlib.nullcontext()

Exposition = Callable[[str], tuple[bytes, str]]
"""Renders the metrics for an ``Accept`` header: the body and its content
type (it may block)."""


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """What the application needs; ``from_settings`` builds it for the CLI."""

    proxy_id: str
    rules: RequestRules = field(default_factory=RequestRules)
    console_types: frozenset[ConsoleType] = frozenset(ConsoleType)
    connect_timeout: float = 5.0
    """Seconds to reach a console: TCP, CONNECT and TLS together."""
    target_tls: TargetTLS = field(default_factory=TargetTLS)
    limits: RelayLimits = field(default_factory=RelayLimits)
    drain_timeout: float = 10.0
    ping_interval: float | None = 30.0
    max_message_bytes: int = 1 << 20
    store_threads: int = 8
    lease_heartbeat: float = 20.0
    """Seconds between serial lease renewals: well inside ``serial_lease_ttl``."""
    session_recheck: float = 5.0
    """Seconds between asks whether live sessions' instances were revoked."""
    web_dir: Path | None = None
    rfb_refusals: bool = False
    """Refuse upgrade requests inside RFB rather than with an HTTP status."""
    metrics_path: str = "/metrics"
    metrics_networks: tuple[IPv4Network | IPv6Network, ...] = (
        IPv4Network("127.0.0.0/8"),
        IPv6Network("::1/128"),
    )
    """Clients that may scrape ``metrics_path``; others get a 404."""

    def __post_init__(self) -> None:
        if self.rfb_refusals and not self.console_types <= RFB_KINDS:
            raise InvalidRequest(
                "proxy.rfb_refusals needs proxy.console_types to be novnc only: "
                "clients of other consoles speak no RFB"
            )

    @classmethod
    def from_settings(
        cls,
        proxy: ProxySettings,
        *,
        serial_lease_ttl: float,
        web_dir: Path | None = None,
        metrics: MetricsSettings | None = None,
    ) -> ProxyConfig:
        """A deployment's ``proxy`` settings; ``InvalidRequest`` for a bad origin."""
        metrics = metrics or MetricsSettings()
        return cls(
            proxy_id=proxy.proxy_id,
            rules=RequestRules(
                allowed_origins=frozenset(proxy.allowed_origins),
                trusted_proxies=proxy.trusted_proxies,
            ),
            console_types=frozenset(proxy.console_types),
            connect_timeout=proxy.connect_timeout,
            target_tls=TargetTLS(
                ca_file=proxy.tls_ca_file,
                cert_file=proxy.tls_cert_file,
                key_file=proxy.tls_key_file,
                verify_hostname=proxy.tls_verify_hostname,
            ),
            limits=RelayLimits(idle_timeout=proxy.idle_timeout, session_max=proxy.session_max),
            drain_timeout=proxy.drain_timeout,
            ping_interval=proxy.ping_interval,
            max_message_bytes=proxy.max_message_bytes,
            store_threads=proxy.store_threads,
            lease_heartbeat=serial_lease_ttl / 3,
            session_recheck=proxy.session_recheck,
            web_dir=web_dir,
            rfb_refusals=proxy.rfb_refusals,
            metrics_path=metrics.path,
            metrics_networks=metrics.allowed_networks,
        )


def create_app(
    service: ConsoleAuthService,
    ports: ConsolePortService | None,
    config: ProxyConfig,
    *,
    exposition: Exposition | None = None,
) -> web.Application:
    """The proxy as an aiohttp application; ``start``/``stop`` (or ``serve``) run it.

    ``ports`` may be ``None`` only when ``config.console_types`` leaves out
    serial consoles, the only kind that takes a port lease. The proxy
    reports to ``service.events``; ``exposition`` serves ``metrics_path``.

    aiohttp's access log is off whatever the runner says: it would write each
    request target, token and all. Under another runner, live sessions are
    closed at its shutdown without a drain (aiohttp stops reading every
    connection before ``on_shutdown``); ``stop`` drains them first.
    """
    proxy = _Proxy(service, ports, config, exposition)
    app = web.Application(middlewares=[proxy.middleware], handler_args={"access_log": None})
    app[_PROXY] = proxy
    if config.web_dir is not None:
        app.router.add_static("/", config.web_dir, follow_symlinks=False)
    app.cleanup_ctx.append(proxy.rechecking)
    app.on_shutdown.append(proxy.close_all)
    app.on_cleanup.append(proxy.cleanup)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listen on ``host:port`` (``port`` 0 picks a free one: see ``runner.addresses``)."""
    runner = web.AppRunner(app, shutdown_timeout=CLOSE_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def stop(runner: web.AppRunner) -> None:
    """Stop accepting, give live sessions ``drain_timeout`` to end by
    themselves, close the rest, and release everything."""
    proxy = runner.app[_PROXY]
    for site in list(runner.sites):
        await site.stop()
    logger.info("console proxy stopping: draining for up to %g s", proxy.config.drain_timeout)
    await proxy.drain(proxy.config.drain_timeout)
    await runner.cleanup()


async def serve(app: web.Application, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Run ``app`` on ``host:port`` until SIGTERM or SIGINT, then ``stop``.

    ``ready`` gets the address actually bound once it accepts connections.
    """
    runner = await start(app, host, port)
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, signalled.set)
        bound = runner.addresses[0]
        ready(f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}")
        await signalled.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await stop(runner)


@dataclass(kw_only=True)
class _SessionLog:
    """The one line a request leaves; nothing in it is secret."""

    client: str | None
    started: float
    instance: UUID | str | None = None
    target: str = "-"
    kind: str = "-"
    hash_prefix: str = "-"
    outcome: str = "error"
    bytes_in: int = 0
    bytes_out: int = 0

    def emit(self, ended: float) -> None:
        logger.info(
            "console session client=%s instance=%s target=%s kind=%s token_hash=%s "
            "outcome=%s duration=%.3fs bytes_in=%d bytes_out=%d",
            self.client or "-",
            self.instance or "-",
            self.target,
            self.kind,
            self.hash_prefix,
            self.outcome,
            ended - self.started,
            self.bytes_in,
            self.bytes_out,
        )

    def event(self, name: EventName, reason: str, duration: float | None = None) -> ConsoleEvent:
        fields: EventFields = {"reason": reason}
        if self.client:
            fields["client"] = self.client
        instance = as_uuid(self.instance)
        if instance is not None:
            fields["instance_uuid"] = instance
        if self.kind != "-":
            fields["kind"] = self.kind
        if self.hash_prefix != "-":
            fields["token_hash_prefix"] = self.hash_prefix
        return ConsoleEvent(name, UseCase.SESSION, duration, None, fields)


class _Proxy:
    """The application's state: collaborators, the store's threads, live sessions."""

    def __init__(
        self,
        service: ConsoleAuthService,
        ports: ConsolePortService | None,
        config: ProxyConfig,
        exposition: Exposition | None,
    ) -> None:
        if ports is None and ConsoleType.SERIAL in config.console_types:
            raise InvalidRequest("a proxy that serves serial consoles needs a ConsolePortService")
        self.config = config
        self._service = service
        self._ports = ports
        self._events = service.events
        self._exposition = exposition
        self._dialer = Dialer(config.connect_timeout, config.target_tls)
        self._store_threads = ThreadPoolExecutor(
            config.store_threads, thread_name_prefix="console-auth-store"
        )
        self._live: dict[Relay, ConsoleConnection] = {}
        self._none_live = asyncio.Event()
        self._none_live.set()
        self._stopping = False

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """WebSocket upgrades on any path are console sessions; the rest is static."""
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.console(request)
        if (
            self._exposition is not None
            and request.method in ("GET", "HEAD")
            and request.path == self.config.metrics_path
        ):
            return await self.metrics(request, self._exposition)
        return await handler(request)

    async def metrics(self, request: web.Request, exposition: Exposition) -> web.StreamResponse:
        """The metrics, to a client within ``metrics_networks``; a 404 to others."""
        try:
            client = client_address(_view(request), self.config.rules)
            allowed = client is not None and any(
                ip_address(client) in network for network in self.config.metrics_networks
            )
        except (Refused, ValueError):
            allowed = False
        if not allowed:
            raise web.HTTPNotFound()
        accept = request.headers.get("Accept", "")
        body, content_type = await self._in_store_thread(exposition, accept)  # may ask memcached
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def console(self, request: web.Request) -> web.StreamResponse:
        around = None if self._events is None else self._events.around
        with _NO_SPAN if around is None else around(UseCase.SESSION):
            return await self._console(request)

    async def _console(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        log = _SessionLog(client=request.remote or None, started=loop.time())
        try:
            return await self._session(request, log)
        except Refused as refused:
            log.outcome = f"refused:{refused.reason}"
            if self._events is not None:
                record_safely(
                    self._events,
                    log.event(
                        EventName.SESSION_REFUSED, refused.reason, loop.time() - log.started
                    ),
                )
            ws = self._websocket()
            if (
                self.config.rfb_refusals
                and refused.reason not in _HTTP_ONLY
                and ws.can_prepare(request).ok
            ):
                await ws.prepare(request)
                await rfb.refuse(ws, refused.message, refused.reason)
                return ws
            return web.Response(
                status=refused.status,
                text=f"{refused.reason}: {refused.message}\n",
                content_type="text/plain",
            )
        finally:
            log.emit(loop.time())

    def _websocket(self) -> web.WebSocketResponse:
        return web.WebSocketResponse(
            protocols=WEBSOCKET_PROTOCOLS,
            heartbeat=self.config.ping_interval,
            max_msg_size=self.config.max_message_bytes,
            compress=False,  # a zlib context per session; VNC data is compressed already
            timeout=CLOSE_TIMEOUT,
        )

    async def _session(self, request: web.Request, log: _SessionLog) -> web.StreamResponse:
        ws = self._websocket()
        if not ws.can_prepare(request).ok:
            raise Refused(HTTPStatus.BAD_REQUEST, "bad_upgrade", "not a valid WebSocket request")
        asked = read_request(_view(request), self.config.rules)
        log.client, log.instance = asked.client, _uuid_or_none(asked.instance_uuid)
        log.hash_prefix = _hash_prefix(asked.token)
        connection, lease = await self._admit(asked)
        log.instance = connection.instance_uuid
        log.kind = connection.console_type.value
        log.target = join_address(connection.host, target_port(connection))
        try:
            reader, writer = await self._dialer.dial(connection)
            try:
                if self._stopping:
                    raise Refused(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        "shutting_down",
                        "the console proxy is shutting down",
                    )
                await ws.prepare(request)
                relay = Relay(
                    ws=ws,
                    reader=reader,
                    writer=writer,
                    limits=self.config.limits,
                    client_transport=request.transport,
                )
                log.outcome = (await self._relay(relay, connection, lease, log)).value
                log.bytes_in, log.bytes_out = relay.bytes_in, relay.bytes_out
            finally:
                writer.close()
            return ws
        finally:
            if lease is not None:
                await self._release(lease)

    async def _relay(
        self,
        relay: Relay,
        connection: ConsoleConnection,
        lease: PortLease | None,
        log: _SessionLog,
    ) -> Outcome:
        watchers: list[Watcher] = []
        if lease is not None:
            watchers.append(functools.partial(self._keep_lease, lease))
        self._live[relay] = connection
        self._none_live.clear()
        events = self._events
        if events is not None:
            record_safely(events, log.event(EventName.SESSION_STARTED, "started"))
        outcome = Outcome.ERROR
        try:
            outcome = await relay.run(watchers)
            return outcome
        finally:
            del self._live[relay]
            if not self._live:
                self._none_live.set()
            if events is not None:
                ended = asyncio.get_running_loop().time()
                record_safely(
                    events, log.event(EventName.SESSION_ENDED, outcome.value, ended - log.started)
                )

    async def rechecking(self, app: web.Application) -> AsyncIterator[None]:
        """While the application runs, end live sessions whose instance was
        revoked, asking the store once per ``session_recheck`` for all of them."""
        task = asyncio.create_task(self._recheck_forever(), name="console-auth-recheck")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.session_recheck)
            live = dict(self._live)
            if not live:
                continue
            try:
                revoked = await self._in_store_thread(
                    self._service.revoked_among, list(live.values())
                )
            except ConsoleAuthError as exc:  # sessions run on through a store outage
                logger.warning("live sessions not rechecked for revocation: %s", exc)
                continue
            except Exception:  # a bug must not end every later recheck
                logger.exception("live sessions not rechecked for revocation")
                continue
            ended = {id(connection) for connection in revoked}
            for relay, connection in live.items():
                if id(connection) in ended:
                    relay.stop(Outcome.REVOKED)

    async def _admit(self, asked: ConsoleRequest) -> tuple[ConsoleConnection, PortLease | None]:
        try:
            return await self._in_store_thread(self._check, asked)
        except ConsoleAuthError as exc:
            raise refusal_for(exc) from exc

    def _check(self, asked: ConsoleRequest) -> tuple[ConsoleConnection, PortLease | None]:
        """In a store thread: validate, then take a serial console's port."""
        connection = self._service.validate(asked.token, asked.instance_uuid)
        kind = connection.console_type
        if kind not in self.config.console_types:
            raise wrong_console_kind(kind)
        if kind is not ConsoleType.SERIAL:
            return connection, None
        assert self._ports is not None  # __init__: serial consoles come with ports
        return connection, self._ports.connect(
            asked.token, asked.instance_uuid, self.config.proxy_id
        )

    async def _keep_lease(self, lease: PortLease) -> None:
        """Renew a serial lease while the session lives; a lost lease ends it."""
        while True:
            await asyncio.sleep(self.config.lease_heartbeat)
            assert self._ports is not None  # a lease came from them
            try:
                lease = await self._in_store_thread(self._ports.heartbeat, lease)
            except LeaseLost:
                raise SessionEnded(Outcome.LEASE_LOST) from None
            except BackendUnavailable as exc:  # the lease outlives a short outage
                logger.warning(
                    "serial port %s: lease not renewed: %s",
                    join_address(lease.host, lease.port),
                    exc,
                )

    async def _release(self, lease: PortLease) -> None:
        assert self._ports is not None  # a lease came from them
        try:
            await self._in_store_thread(self._ports.disconnect, lease)
        except ConsoleAuthError as exc:  # it expires by itself after serial_lease_ttl
            logger.warning(
                "serial port %s: lease not released: %s", join_address(lease.host, lease.port), exc
            )

    async def _in_store_thread(self, call: Callable[..., _T], *args: object) -> _T:
        """``call`` in a store thread, in this task's context (so its span
        nests under the session's)."""
        loop = asyncio.get_running_loop()
        run = functools.partial(contextvars.copy_context().run, call, *args)
        return await loop.run_in_executor(self._store_threads, run)

    async def drain(self, grace: float) -> None:
        """Refuse new sessions; give live ones ``grace`` seconds, then close them."""
        self._stopping = True
        if self._live:
            logger.info("draining %d console sessions", len(self._live))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._none_live.wait()
        for relay in list(self._live):
            relay.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await self._none_live.wait()

    async def close_all(self, app: web.Application) -> None:
        await self.drain(0)

    async def cleanup(self, app: web.Application) -> None:
        self._store_threads.shutdown(wait=False, cancel_futures=True)


_PROXY: Final = web.AppKey("console_proxy", _Proxy)


def _view(request: web.Request) -> RequestView:
    return RequestView(
        target=request.raw_path,
        headers=request.headers,
        peer=request.remote or None,
        secure=request.secure,
    )


def _hash_prefix(token: str) -> str:
    """What the service's own log lines show of a token: its hash's first 8 hex."""
    try:
        return hash_token(check_token(token))[:HASH_PREFIX]
    except InvalidToken:
        return "-"


def _uuid_or_none(text: str | None) -> UUID | None:
    """A presented uuid fit for the log line: anything else could forge lines."""
    try:
        return None if text is None else UUID(text)
    except ValueError:
        return None
