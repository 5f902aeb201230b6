"""``ConsoleEvents`` as OpenTelemetry spans, on ``opentelemetry-api`` only
(the ``tracing`` extra).

One span per use case run, ``console_auth.<use case>``, current while it
runs, so the store's own spans (an instrumented driver) nest under it. Its
attributes are the event's fields under ``console_auth.*``: the token hash
prefix, never the token. A refusal or failure sets the status to ERROR
with the reason code; the exception itself is not recorded (its chain may
hold what a client presented). Without an SDK the API is a no-op.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from console_auth.application.events import ConsoleEvent, EventName, UseCase, validated_event
from console_auth.domain import ConsoleConnection

TRACER_NAME: Final = "console_auth"
_ERRORS: Final = frozenset({EventName.REFUSED, EventName.FAILED, EventName.SESSION_REFUSED})


class OpenTelemetryConsoleEvents:
    """Spans from ``tracer`` (default: the global provider's, so an SDK set
    up later by the application is used)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer(TRACER_NAME)

    def around(self, use_case: UseCase) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(
            f"{TRACER_NAME}.{use_case.value}",
            record_exception=False,
            set_status_on_exception=False,
        )

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        self.record(validated_event(connection, duration))

    def record(self, event: ConsoleEvent) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        fields = event.fields()
        fields["event"] = fields.pop("name")
        span.set_attributes({f"{TRACER_NAME}.{name}": value for name, value in fields.items()})
        if event.name in _ERRORS:
            span.set_status(Status(StatusCode.ERROR, event.reason))
