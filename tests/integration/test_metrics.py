"""Metrics scraped over HTTP from a running proxy: in this event loop on a
real socket, and ``console-auth proxy`` as a process; memcached's evictions
read from a real server at scrape time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from aiohttp import ClientSession
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from console_auth.adapters.container import build_container
from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.prometheus import PrometheusConsoleEvents
from console_auth.adapters.settings import Settings, load_settings
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource
from console_auth.adapters.web.proxy import ProxyConfig, create_app, start, stop
from console_auth.application import ConsoleAuthService, ConsolePortService
from console_auth.application.events import FanOutConsoleEvents
from console_auth.domain import InvalidRequest, hash_token
from tests.backends.memcached import MemcachedProcess, client_for, fresh_prefix
from tests.fakes import FakeClock
from tests.integration.rfb_target import RFB_VERSION, target
from tests.integration.test_memcached import raw_client
from tests.integration.test_proxy import (
    CONFIG,
    INSTANCE,
    cli_token,
    client,
    console_uri,
    proxy_env,
    proxy_process,
    refusal,
)

UUID_SHAPED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the text format; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for each in family.samples:
            if each.name == name and all(each.labels.get(k) == v for k, v in labels.items()):
                return float(each.value)
    return 0.0


def assert_no_secret(text: str, *tokens: str) -> None:
    assert not UUID_SHAPED.search(text)
    for token in tokens:
        assert token not in text
        assert hash_token(token)[:8] not in text


class Metered:
    """The real services on the in-memory store, reporting to a Prometheus
    recorder of their own, with a clock the test moves."""

    def __init__(self) -> None:
        self.prometheus = PrometheusConsoleEvents(CollectorRegistry(), backend="memory")
        self.clock = FakeClock(datetime.now(UTC))
        self.service = ConsoleAuthService(
            InMemoryConsoleConnectionRepository(),
            self.clock,
            SecretsTokenSource(),
            events=self.prometheus,
        )
        self.ports = ConsolePortService(
            self.service,
            InMemoryPortLeaseRepository(),
            InMemoryPortReservationRepository(),
            SecretsLeaseIdSource(),
        )

    def novnc(self, port: int) -> str:
        issued = self.service.authorize(INSTANCE, "127.0.0.1", port, "novnc")
        return issued.token.get_secret_value()


@asynccontextmanager
async def metered_proxy(consoles: Metered, config: ProxyConfig = CONFIG) -> AsyncIterator[int]:
    app = create_app(
        consoles.service, consoles.ports, config, exposition=consoles.prometheus.exposition
    )
    runner = await start(app, "127.0.0.1", 0)
    try:
        yield runner.addresses[0][1]
    finally:
        await stop(runner)


async def scrape(port: int, path: str = "/metrics") -> str:
    async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain;")
        return await answer.text()


@pytest.mark.asyncio
async def test_the_proxys_metrics_move_with_issue_validate_refusals_and_sessions() -> None:
    consoles = Metered()
    async with target("rfb") as console, metered_proxy(consoles) as port:
        before = await scrape(port)
        assert sample(before, "console_auth_tokens_issued_total", kind="novnc") == 0
        assert sample(before, "console_auth_proxy_live_sessions") == 0

        token = consoles.novnc(console.port)
        expired = consoles.novnc(console.port)
        consoles.clock.advance(timedelta(minutes=11))
        token = consoles.novnc(console.port)  # issued now: the first one expired too
        text = await scrape(port)
        assert sample(text, "console_auth_tokens_issued_total", kind="novnc") == 3

        async with client(console_uri(port, token), port) as ws:
            assert await ws.recv() == RFB_VERSION
            live = await scrape(port)
            assert sample(live, "console_auth_proxy_live_sessions") == 1
            assert sample(live, "console_auth_tokens_validated_total", kind="novnc") == 1
            assert sample(live, "console_auth_validate_seconds_count", outcome="valid") == 1
            assert sample(live, "console_auth_validate_seconds_bucket", le="0.01") == 1
        await asyncio.sleep(0.2)  # the proxy sees the close
        after = await scrape(port)
        assert sample(after, "console_auth_proxy_live_sessions") == 0
        assert (
            sample(
                after, "console_auth_proxy_sessions_total", kind="novnc", outcome="client_closed"
            )
            == 1
        )

        unknown = "A" * 43
        assert (await refusal(console_uri(port, unknown), port))[0] == 403
        assert (await refusal(console_uri(port, expired), port))[0] == 403
        assert (await refusal(console_uri(port, "short"), port))[0] == 401
        refused = await scrape(port)
    for reason in ("unknown_token", "expired_token", "malformed_token"):
        assert sample(refused, "console_auth_tokens_refused_total", reason=reason) == 1
        assert sample(refused, "console_auth_proxy_refused_total", reason=reason) == 1
    assert sample(refused, "console_auth_validate_seconds_count", outcome="refused") == 3
    assert_no_secret(refused, token, expired, unknown)
    assert "compute" not in refused
    assert "127.0.0.1" not in refused


@pytest.mark.asyncio
async def test_metrics_are_a_404_to_clients_outside_the_allowed_networks() -> None:
    consoles = Metered()
    async with (
        metered_proxy(
            consoles, replace(CONFIG, metrics_networks=(IPv4Network("10.0.0.0/8"),))
        ) as port,
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as answer,
    ):
        assert answer.status == 404
    async with (
        metered_proxy(consoles, replace(CONFIG, metrics_path="/internal/metrics")) as port,
        ClientSession() as http,
    ):
        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            assert answer.status == 404
        assert "console_auth_tokens_issued_total" in await scrape(port, "/internal/metrics")


@pytest.mark.asyncio
async def test_behind_a_trusted_proxy_metrics_go_by_the_forwarded_client() -> None:
    """A reverse proxy on loopback, listed in trusted_proxies: a browser it
    forwards is 404 even when it forges a loopback hop; a local scraper it
    forwards is served."""
    rules = replace(CONFIG.rules, trusted_proxies=(IPv4Network("127.0.0.0/8"),))
    async with (
        metered_proxy(Metered(), replace(CONFIG, rules=rules)) as port,
        ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{port}/metrics"
        for forwarded in ("203.0.113.7", "127.0.0.1, 203.0.113.7", "not-an-address"):
            async with http.get(url, headers={"X-Forwarded-For": forwarded}) as answer:
                assert answer.status == 404, forwarded
        async with http.get(url, headers={"X-Forwarded-For": "127.0.0.1"}) as answer:
            assert answer.status == 200
            assert "console_auth_tokens_issued_total" in await answer.text()


@pytest.mark.asyncio
async def test_the_console_auth_proxy_command_serves_metrics(tmp_path: Path) -> None:
    """``console-auth proxy`` with the extra installed: metrics on by default,
    moving with a session and a refusal, with no token or uuid in them."""
    env = proxy_env(tmp_path)
    async with target("rfb") as console:
        token = await cli_token(env, console.port)
        async with proxy_process(env) as (server, port):
            assert sample(await scrape(port), "console_auth_proxy_live_sessions") == 0
            async with client(console_uri(port, token), port) as ws:
                assert await ws.recv() == RFB_VERSION
                live = await scrape(port)
            assert sample(live, "console_auth_proxy_live_sessions") == 1
            assert (
                sample(
                    live, "console_auth_tokens_validated_total", backend="database", kind="novnc"
                )
                == 1
            )
            assert (await refusal(console_uri(port, "B" * 43), port))[0] == 403
            await asyncio.sleep(0.2)
            text = await scrape(port)
            server.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(server.wait(), 10) == 0
    assert sample(text, "console_auth_proxy_live_sessions") == 0
    assert sample(text, "console_auth_tokens_refused_total", reason="unknown_token") == 1
    assert_no_secret(text, token, "B" * 43)


def test_memcached_evictions_are_read_at_scrape_time(processes: list[MemcachedProcess]) -> None:
    process = MemcachedProcess(memory_mb=2).start()
    processes.append(process)
    settings = Settings(
        console_tokens_backend="memcached",
        memcached={"servers": [process.address], "key_prefix": fresh_prefix()},
        metrics={"enabled": True},
    )
    container = build_container(settings)
    try:
        prometheus = container.metrics()
        assert isinstance(prometheus, PrometheusConsoleEvents)
        series = f'console_auth_memcached_evictions_total{{server="{process.address}"}}'
        assert f"{series} 0.0" in prometheus.exposition()[0].decode()
        flood = raw_client(client_for([process.address]).servers[0])
        for number in range(20_000):
            flood.set(f"junk-{number}", b"x" * 600, noreply=True)
        flood.get("junk-0")  # waits for the noreply sets to land
        text = prometheus.exposition()[0].decode()
        assert sample(text, "console_auth_memcached_evictions_total") > 0
        process.stop()  # a scrape still answers, without the series
        text = prometheus.exposition()[0].decode()
        assert "console_auth_memcached_evictions_total{" not in text
        assert "console_auth_tokens_issued_total" in text
    finally:
        container.shutdown_resources()


def test_a_memcached_store_has_an_evictions_reader_the_others_none(tmp_path: Path) -> None:
    container = build_container(
        Settings(
            database={"url": f"sqlite:///{tmp_path / 'm.sqlite3'}"},
            metrics={"enabled": True},
        )
    )
    try:
        assert "console_auth_memcached_evictions" not in (
            container.metrics().exposition()[0].decode()
        )
        assert container.service().events is container.metrics()
    finally:
        container.shutdown_resources()


def test_metrics_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CONSOLE_AUTH_")]:
        monkeypatch.delenv(name)
    assert load_settings().metrics.enabled is None
    assert load_settings().audit.enabled is False
    monkeypatch.setenv("CONSOLE_AUTH_METRICS__ENABLED", "false")
    monkeypatch.setenv("CONSOLE_AUTH_METRICS__PATH", "/internal/metrics")
    monkeypatch.setenv("CONSOLE_AUTH_METRICS__ALLOWED_NETWORKS", "10.0.0.0/8, ::1")
    monkeypatch.setenv("CONSOLE_AUTH_AUDIT__ENABLED", "true")
    monkeypatch.setenv("CONSOLE_AUTH_TRACING__ENABLED", "true")
    settings = load_settings()
    config = ProxyConfig.from_settings(
        settings.proxy, serial_lease_ttl=60, metrics=settings.metrics
    )
    assert config.metrics_path == "/internal/metrics"
    assert [str(n) for n in config.metrics_networks] == ["10.0.0.0/8", "::1/128"]
    container = build_container(settings)
    try:
        assert container.metrics() is None
        events = container.service().events
        assert isinstance(events, FanOutConsoleEvents)  # audit and tracing
    finally:
        container.shutdown_resources()
    monkeypatch.setenv("CONSOLE_AUTH_METRICS__PATH", "metrics")
    with pytest.raises(InvalidRequest, match=r"metrics\.path"):
        load_settings()
