"""``ConsoleEvents`` as Prometheus metrics, on prometheus-client (the
``metrics`` extra).

Labels are bounded by construction: a backend name, a console kind, a
reason code or outcome from this library's enums, a use case, a memcached
server from the settings. Never a token, a hash, an instance uuid, a
compute host or a client address: those are in the audit records.

=============================================  =======================================
metric                                         labels
=============================================  =======================================
``console_auth_tokens_issued_total``           backend, kind
``console_auth_tokens_validated_total``        backend, kind
``console_auth_tokens_refused_total``          backend, reason (``unknown_token``, ...)
``console_auth_tokens_revoked_total``          backend (tokens, not calls)
``console_auth_tokens_purged_total``           backend (tokens, not calls)
``console_auth_failures_total``                backend, use_case, reason
``console_auth_serial_ports_claimed_total``    backend
``console_auth_validate_seconds``              backend, outcome (``valid``, ``refused``)
``console_auth_proxy_live_sessions``           (a gauge)
``console_auth_proxy_sessions_total``          kind, outcome (ended sessions)
``console_auth_proxy_refused_total``           reason
``console_auth_memcached_evictions_total``     server (memcached's own ``evictions``
                                               stat, read at scrape time)
=============================================  =======================================
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from console_auth.application.events import ConsoleEvent, EventName, UseCase
from console_auth.domain import ConsoleType

logger = logging.getLogger(__name__)

VALIDATE_BUCKETS: Final = (
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5,
)  # fmt: skip
"""Seconds: a validate is tens of microseconds on SQLite and memcached, a
few hundred on a server database, so the defaults (from 5 ms) would put
every call in the first bucket."""

_NO_SPAN: Final = contextlib.nullcontext()

EVICTIONS: Final = "console_auth_memcached_evictions"


class PrometheusConsoleEvents:
    """Counts what the use cases did into ``registry``.

    ``backend`` labels every token metric (``console_tokens_backend``).
    ``evictions``, when given, is read at each scrape: memcached's
    ``evictions`` stat per server (server-wide: a shared memcached counts
    other tenants' items too); a scrape that cannot read it shows none.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        backend: str,
        evictions: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = registry
        kinds = [kind.value for kind in ConsoleType]

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, ("backend", *labels), registry=registry)

        issued = counter("console_auth_tokens_issued", "Console tokens issued.", ("kind",))
        validated = counter(
            "console_auth_tokens_validated", "Console tokens that opened a console.", ("kind",)
        )
        self._issued = {kind: issued.labels(backend, kind) for kind in kinds}
        self._validated = {kind: validated.labels(backend, kind) for kind in kinds}
        self._refused = counter(
            "console_auth_tokens_refused", "Presented console tokens refused.", ("reason",)
        )
        self._revoked = counter(
            "console_auth_tokens_revoked", "Console tokens deleted by revoke_instance."
        ).labels(backend)
        self._purged = counter(
            "console_auth_tokens_purged", "Expired console tokens deleted by purge."
        ).labels(backend)
        self._failures = counter(
            "console_auth_failures", "Use cases that failed.", ("use_case", "reason")
        )
        self._claimed = counter(
            "console_auth_serial_ports_claimed", "Serial ports a proxy's client connected to."
        ).labels(backend)
        latency = Histogram(
            "console_auth_validate_seconds",
            "Time a validate took, store included.",
            ("backend", "outcome"),
            buckets=VALIDATE_BUCKETS,
            registry=registry,
        )
        self._valid_latency = latency.labels(backend, "valid")
        self._refused_latency = latency.labels(backend, "refused")
        self._backend = backend
        self._live = Gauge(
            "console_auth_proxy_live_sessions", "Live console proxy sessions.", registry=registry
        )
        self._ended = Counter(
            "console_auth_proxy_sessions",
            "Console proxy sessions that ended, by outcome.",
            ("kind", "outcome"),
            registry=registry,
        )
        self._proxy_refused = Counter(
            "console_auth_proxy_refused",
            "Console proxy requests refused before a session.",
            ("reason",),
            registry=registry,
        )
        if evictions is not None:
            registry.register(_Evictions(evictions))
        self._on: dict[EventName, Callable[[ConsoleEvent], None]] = {
            EventName.ISSUED: self._on_issued,
            EventName.VALIDATED: self._on_validated,
            EventName.REFUSED: self._on_refused,
            EventName.FAILED: self._on_failed,
            EventName.REVOKED: self._on_revoked,
            EventName.PURGED: self._on_purged,
            EventName.PORT_CLAIMED: self._on_claimed,
            EventName.SESSION_STARTED: self._on_session_started,
            EventName.SESSION_ENDED: self._on_session_ended,
            EventName.SESSION_REFUSED: self._on_session_refused,
        }

    def around(self, use_case: UseCase) -> contextlib.nullcontext[None]:
        return _NO_SPAN

    def record(self, event: ConsoleEvent) -> None:
        on = self._on.get(event.name)
        if on is not None:
            on(event)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper's ``Accept`` header asks
        for (the text format, or OpenMetrics), and its content type. It may
        read memcached's stats: call it off an event loop."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def _on_issued(self, event: ConsoleEvent) -> None:
        self._issued[event.kind or ""].inc()

    def _on_validated(self, event: ConsoleEvent) -> None:
        self._validated[event.kind or ""].inc()
        if event.use_case is UseCase.VALIDATE and event.duration is not None:
            self._valid_latency.observe(event.duration)

    def _on_refused(self, event: ConsoleEvent) -> None:
        self._refused.labels(self._backend, event.reason or "").inc()
        if event.use_case is UseCase.VALIDATE and event.duration is not None:
            self._refused_latency.observe(event.duration)

    def _on_failed(self, event: ConsoleEvent) -> None:
        self._failures.labels(self._backend, event.use_case.value, event.reason or "").inc()

    def _on_revoked(self, event: ConsoleEvent) -> None:
        self._revoked.inc(event.count or 0)

    def _on_purged(self, event: ConsoleEvent) -> None:
        self._purged.inc(event.count or 0)

    def _on_claimed(self, event: ConsoleEvent) -> None:
        self._claimed.inc()

    def _on_session_started(self, event: ConsoleEvent) -> None:
        self._live.inc()

    def _on_session_ended(self, event: ConsoleEvent) -> None:
        self._live.dec()
        self._ended.labels(event.kind or "", event.reason or "").inc()

    def _on_session_refused(self, event: ConsoleEvent) -> None:
        self._proxy_refused.labels(event.reason or "").inc()


class _Evictions(Collector):
    """memcached's ``evictions`` per server, read when scraped."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:  # so registering reads nothing
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            counts = self._read()
        except Exception as exc:  # a scrape must answer whatever memcached does
            logger.warning("memcached evictions not read: %s", exc)
            counts = {}
        for server, count in sorted(counts.items()):
            family.add_metric([server], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            EVICTIONS,
            "Items memcached evicted before they expired, server-wide (its evictions stat).",
            labels=["server"],
        )
