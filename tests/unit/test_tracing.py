"""One span per use case run, on the OpenTelemetry SDK's in-memory
exporter; attributes from the event, never the token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.tracing import OpenTelemetryConsoleEvents
from console_auth.application import ConsoleAuthService
from console_auth.domain import InvalidToken, hash_token
from tests.fakes import FakeClock, FixedTokenSource

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")


@pytest.fixture
def exported() -> Iterator[tuple[ConsoleAuthService, InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        FakeClock(),
        FixedTokenSource(),
        events=OpenTelemetryConsoleEvents(provider.get_tracer("test")),
    )
    yield service, exporter, provider
    provider.shutdown()


def test_each_use_case_is_one_span_with_the_events_fields_and_no_token(
    exported: tuple[ConsoleAuthService, InMemorySpanExporter, TracerProvider],
) -> None:
    service, exporter, provider = exported
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    service.validate(token, INSTANCE)
    with pytest.raises(InvalidToken):
        service.validate("W" * 43)
    with provider.get_tracer("caller").start_as_current_span("request"):
        service.revoke_instance(INSTANCE)
    service.purge_expired()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "console_auth.authorize",
        "console_auth.validate",
        "console_auth.validate",
        "console_auth.revoke_instance",
        "request",
        "console_auth.purge_expired",
    ]
    issued, valid, refused, revoked, request, purged = spans
    assert issued.attributes is not None
    assert dict(issued.attributes) == {
        "console_auth.event": "console.issued",
        "console_auth.use_case": "authorize",
        "console_auth.instance_uuid": str(INSTANCE),
        "console_auth.host": "compute-1",
        "console_auth.port": 5900,
        "console_auth.kind": "novnc",
        "console_auth.token_hash_prefix": hash_token(token)[:8],
        "console_auth.duration": issued.attributes["console_auth.duration"],
    }
    assert valid.status.status_code is StatusCode.UNSET
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.status.description == "unknown_token"
    assert refused.events == ()  # the exception is not recorded: its chain may hold input
    assert revoked.parent is not None
    assert revoked.parent.span_id == request.context.span_id  # nested in the caller's span
    assert purged.attributes is not None
    assert purged.attributes["console_auth.total"] == 0
    for span in spans:
        text = repr(dict(span.attributes or {})) + repr(span.events) + span.name
        assert token not in text
        assert "W" * 43 not in text
        assert hash_token(token) not in text


def test_without_an_sdk_the_api_is_a_no_op() -> None:
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        FakeClock(),
        FixedTokenSource(),
        events=OpenTelemetryConsoleEvents(),  # the global provider: the API's proxy, no SDK set
    )
    token = service.authorize(INSTANCE, "h", 5900, "novnc").token.get_secret_value()
    assert service.validate(token).instance_uuid == INSTANCE
