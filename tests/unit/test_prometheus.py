"""The Prometheus recorder on its own: counts per thread that survive the
thread, bounded labels, and a recorder that never sees a token."""

from __future__ import annotations

import contextlib
import gc
import threading
import uuid

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.prometheus import VALIDATE_BUCKETS, PrometheusConsoleEvents
from console_auth.application import ConsoleAuthService
from console_auth.application.events import ConsoleEvent, EventName, UseCase
from console_auth.domain import ConsoleAuthError, ConsoleType
from tests.fakes import FakeClock, FixedTokenSource

BOUNDED = {
    "backend": {"memory"},
    "kind": {kind.value for kind in ConsoleType},
    "outcome": {"valid", "refused"},
    "use_case": {"authorize", "validate", "revoke_instance", "purge_expired"},
}


def samples(
    recorder: PrometheusConsoleEvents,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = recorder.exposition()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def service_with(recorder: PrometheusConsoleEvents) -> ConsoleAuthService:
    return ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), FakeClock(), FixedTokenSource(), events=recorder
    )


def test_validates_in_threads_are_counted_after_the_threads_end() -> None:
    recorder = PrometheusConsoleEvents(CollectorRegistry(), backend="memory")
    service = service_with(recorder)
    token = service.authorize(uuid.uuid4(), "h", 5900, "novnc").token.get_secret_value()

    def validate_many() -> None:
        for _ in range(100):
            service.validate(token)

    threads = [threading.Thread(target=validate_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    del threads
    gc.collect()
    validate_many()  # and this thread's, still live
    found = samples(recorder)
    assert (
        found["console_auth_tokens_validated_total", (("backend", "memory"), ("kind", "novnc"))]
        == 900
    )
    valid = (("backend", "memory"), ("le", "+Inf"), ("outcome", "valid"))
    assert found["console_auth_validate_seconds_bucket", valid] == 900
    assert found["console_auth_validate_seconds_count", valid[:1] + valid[2:]] == 900
    assert len(recorder._validate._live) == 1  # the ended threads' counts were folded


def test_buckets_are_cumulative_and_fine_enough_for_microseconds() -> None:
    assert VALIDATE_BUCKETS[0] <= 10e-6
    recorder = PrometheusConsoleEvents(CollectorRegistry(), backend="memory")
    for duration in (5e-6, 20e-6, 20e-6, 3.0):
        event = ConsoleEvent(
            EventName.VALIDATED, UseCase.VALIDATE, duration, None, {"kind": "novnc"}
        )
        recorder.record(event)
    found = samples(recorder)

    def bucket(le: str) -> float:
        return found[
            "console_auth_validate_seconds_bucket",
            (("backend", "memory"), ("le", le), ("outcome", "valid")),
        ]

    assert (bucket("1e-05"), bucket("2.5e-05"), bucket("2.5"), bucket("+Inf")) == (1, 3, 3, 4)
    total = found[
        "console_auth_validate_seconds_sum", (("backend", "memory"), ("outcome", "valid"))
    ]
    assert abs(total - 3.000045) < 1e-9


def test_every_label_is_bounded_and_no_token_or_uuid_is_exposed() -> None:
    recorder = PrometheusConsoleEvents(CollectorRegistry(), backend="memory")
    service = service_with(recorder)
    instance = uuid.uuid4()
    tokens = [
        service.authorize(instance, "compute-1", 5900, kind).token.get_secret_value()
        for kind in ConsoleType
    ]
    for token in tokens:
        service.validate(token)
    for bad in ("Z" * 43, "short", tokens[0]):
        with contextlib.suppress(ConsoleAuthError):
            service.validate(bad, uuid.uuid4())
    service.revoke_instance(instance)
    service.purge_expired()
    text = recorder.exposition()[0].decode()
    for token in [*tokens, "Z" * 43]:
        assert token not in text
    assert str(instance) not in text
    assert "compute-1" not in text
    for (_, labels), _value in samples(recorder).items():
        for name, value in labels:
            if name in BOUNDED:
                assert value in BOUNDED[name], (name, value)
            elif name == "reason":
                assert value.replace("_", "").isalpha(), value
            else:
                assert name == "le", name
