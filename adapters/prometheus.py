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

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from console_auth.application.events import ConsoleEvent, EventName, UseCase
from console_auth.domain import ConsoleConnection, ConsoleType

logger = logging.getLogger(__name__)

VALIDATE_BUCKETS: Final = (
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5,
)  # fmt: skip
"""Seconds: a validate is tens of microseconds on SQLite and memcached, a
few hundred on a server database, so the defaults (from 5 ms) would put
every call in the first bucket."""


EVICTIONS: Final = "console_auth_memcached_evictions"

# The validate path's per-thread slots: a count per console kind, then the
# buckets (the last: +Inf) and the sum, for valid then refused validates.
_KIND_SLOT: Final = {kind.value: n for n, kind in enumerate(ConsoleType)}
_BUCKETS: Final = len(VALIDATE_BUCKETS) + 1
_VALID: Final = len(_KIND_SLOT)
_REFUSED: Final = _VALID + _BUCKETS + 1
_SLOTS: Final = _REFUSED + _BUCKETS + 1


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
        self._issued = {kind: issued.labels(backend, kind) for kind in kinds}
        self._validate = _ValidateMetrics(backend)
        self._local = self._validate.local
        registry.register(self._validate)
        self._refused = counter(
            "console_auth_tokens_refused", "Presented console tokens refused.", ("reason",)
        )
        self._refused_by: dict[str, Any] = {}
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

    around: Final = None  # no span: the use case runs unwrapped

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        # ``_ValidateMetrics.timed`` inline: the hot path (ARCHITECTURE.md, observability)
        try:
            slots: list[float] = self._local.slots
        except AttributeError:
            slots = self._validate.new_slots()
        slots[_KIND_SLOT[connection.console_type]] += 1
        slots[_VALID + bisect_left(VALIDATE_BUCKETS, duration)] += 1
        slots[_VALID + _BUCKETS] += duration

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

    def _on_validated(self, event: ConsoleEvent) -> None:  # recorded as an event, not the hot path
        self._validate.timed(_VALID, event.duration, event.kind)

    def _on_refused(self, event: ConsoleEvent) -> None:
        reason = event.reason or ""
        child = self._refused_by.get(reason)
        if child is None:  # once per reason: ``labels`` takes the metric's lock
            child = self._refused_by[reason] = self._refused.labels(self._backend, reason)
        child.inc()
        if event.use_case is UseCase.VALIDATE:
            self._validate.timed(_REFUSED, event.duration)

    def _on_failed(self, event: ConsoleEvent) -> None:
        self._failures.labels(self._backend, event.use_case.value, event.reason or "").inc()

    def _on_revoked(self, event: ConsoleEvent) -> None:
        one = event.connection is not None  # revoke_token: the one token it answers with
        self._revoked.inc(event.total or int(one))

    def _on_purged(self, event: ConsoleEvent) -> None:
        self._purged.inc(event.total or 0)

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


class _ValidateMetrics(Collector):
    """``console_auth_tokens_validated_total`` and
    ``console_auth_validate_seconds``, counted per thread and summed when
    scraped: a prometheus-client counter and histogram take a lock per
    call, three times the cost of this on the validate path.

    Each thread writes only its own slots (no lock); a scrape reads them
    all. A thread's slots are folded into the retired ones when it ends,
    so thread churn does not grow the list.
    """

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self.local = threading.local()
        """``slots``: this thread's (``new_slots`` makes them)."""
        self._lock = threading.Lock()
        self._live: list[list[float]] = []
        self._retired = [0.0] * _SLOTS

    def timed(self, outcome: int, duration: float | None, kind: str | None = None) -> None:
        """One validate, valid (counted by ``kind``) or refused: into this
        thread's own slots, with no lock."""
        try:
            slots: list[float] = self.local.slots
        except AttributeError:
            slots = self.new_slots()
        duration = duration or 0.0
        if kind is not None:
            slots[_KIND_SLOT[kind]] += 1
        slots[outcome + bisect_left(VALIDATE_BUCKETS, duration)] += 1
        slots[outcome + _BUCKETS] += duration

    def new_slots(self) -> list[float]:
        slots = [0.0] * _SLOTS
        with self._lock:
            self._live.append(slots)
        self.local.slots = slots
        self.local.retire = _Retire(self, slots)  # runs when the thread's locals go
        return slots

    def retire(self, slots: list[float]) -> None:
        with self._lock:
            self._live.remove(slots)
            self._retired = [a + b for a, b in zip(self._retired, slots, strict=True)]

    def describe(self) -> Iterator[Metric]:
        return self._families([0.0] * _SLOTS)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            totals = list(self._retired)
            for slots in self._live:
                totals = [a + b for a, b in zip(totals, slots, strict=True)]
        return self._families(totals)

    def _families(self, totals: list[float]) -> Iterator[Metric]:
        validated = CounterMetricFamily(
            "console_auth_tokens_validated",
            "Console tokens that opened a console.",
            labels=["backend", "kind"],
        )
        for kind, n in _KIND_SLOT.items():
            validated.add_metric([self._backend, kind], totals[n])
        yield validated
        latency = HistogramMetricFamily(
            "console_auth_validate_seconds",
            "Time a validate took, store included.",
            labels=["backend", "outcome"],
        )
        for outcome, base in (("valid", _VALID), ("refused", _REFUSED)):
            counts = totals[base : base + _BUCKETS]
            cumulative, buckets = 0.0, []
            for bound, count in zip((*VALIDATE_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            latency.add_metric(
                [self._backend, outcome],
                buckets,
                sum_value=totals[base + _BUCKETS],
            )
        yield latency


class _Retire:
    """Folds a thread's slots into the retired ones when the thread ends
    (its ``threading.local`` values are dropped then)."""

    def __init__(self, metrics: _ValidateMetrics, slots: list[float]) -> None:
        self._metrics = metrics
        self._slots = slots

    def __del__(self) -> None:
        self._metrics.retire(self._slots)
