"""Use cases report through ``ConsoleEvents``: one event per run, the
outcome's fields, never the token; nothing at all when none is wired."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta

import pytest

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.web.refusals import refusal_for
from console_auth.application import ConsoleAuthService, ConsolePortService
from console_auth.application.events import (
    ConsoleEvent,
    EventName,
    FanOutConsoleEvents,
    UseCase,
    combined,
    observed,
)
from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleConnection,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    NoFreeConsolePort,
    PortAlreadyConnected,
    PortLease,
    UnknownCell,
    UnsupportedVersion,
    hash_token,
)
from tests.fakes import (
    FakeClock,
    FixedLeaseIdSource,
    FixedTokenSource,
    RecordingEvents,
    UnavailableRepository,
)

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
OTHER = uuid.UUID("0f1e2d3c-4b5a-4697-8877-665544332211")


def make(
    events: RecordingEvents | None = None,
) -> tuple[ConsoleAuthService, ConsolePortService, FakeClock]:
    clock = FakeClock()
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), clock, FixedTokenSource(), events=events
    )
    ports = ConsolePortService(
        service,
        InMemoryPortLeaseRepository(),
        InMemoryPortReservationRepository(),
        FixedLeaseIdSource(),
    )
    return service, ports, clock


Recorded = tuple[ConsoleAuthService, ConsolePortService, FakeClock, RecordingEvents]


@pytest.fixture
def recorded() -> Recorded:
    events = RecordingEvents()
    return (*make(events), events)


def only(events: RecordingEvents) -> ConsoleEvent:
    assert len(events.events) == 1, events.events
    event = events.events.pop()
    events.recorded_inside.clear()
    return event


def test_each_use_case_reports_its_success_inside_its_own_around(
    recorded: Recorded,
) -> None:
    service, _, clock, events = recorded
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()
    prefix = hash_token(token)[:8]
    assert events.recorded_inside == [UseCase.AUTHORIZE]
    event = only(events)
    assert (event.name, event.use_case) == (EventName.ISSUED, UseCase.AUTHORIZE)
    assert (event.instance_uuid, event.host, event.port, event.kind) == (
        INSTANCE,
        "compute-1",
        5900,
        "novnc",
    )
    assert event.token_hash_prefix == prefix
    assert event.duration is not None
    assert event.duration >= 0

    service.validate(token, INSTANCE)
    assert events.recorded_inside == [UseCase.VALIDATE]
    event = only(events)
    assert (event.name, event.kind, event.token_hash_prefix) == (
        EventName.VALIDATED,
        "novnc",
        prefix,
    )
    service.validate_url(f"https://c.example/?token={token}&instance_uuid={INSTANCE}")
    assert only(events).name is EventName.VALIDATED  # once, though it validates inside

    assert service.revoke_instance(INSTANCE) == 1
    event = only(events)
    assert (event.name, event.instance_uuid, event.total) == (EventName.REVOKED, INSTANCE, 1)

    service.authorize(OTHER, "compute-2", 5900, "novnc", ttl=timedelta(seconds=1))
    events.events.clear()
    clock.advance(timedelta(hours=1))
    assert service.purge_expired("compute-2") == 1
    event = only(events)
    assert (event.name, event.host, event.total) == (EventName.PURGED, "compute-2", 1)


def test_the_operators_use_cases_report_and_explain_counts_no_validate(
    recorded: Recorded,
) -> None:
    service, _, clock, events = recorded
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    token = issued.token.get_secret_value()
    events.events.clear()

    assert service.explain(token, INSTANCE).verdict == "valid"
    assert service.explain("A" * 43, INSTANCE).verdict == "unknown"
    assert events.events == []  # an operator's question is no console opened or refused

    service.revoke_token(issued.connection.token_hash[:12])
    event = only(events)
    assert (event.name, event.use_case, event.instance_uuid) == (
        EventName.REVOKED,
        UseCase.REVOKE,
        INSTANCE,
    )

    service.authorize(OTHER, "compute-2", 5900, "novnc", ttl=timedelta(seconds=1))
    events.events.clear()
    clock.advance(timedelta(hours=1))
    assert service.purge_instances([OTHER]) == 1
    event = only(events)
    assert (event.name, event.use_case, event.total) == (EventName.PURGED, UseCase.PURGE, 1)


@pytest.mark.parametrize(
    ("presented", "instance", "reason"),
    [
        ("%%not-a-token%%", None, "malformed_token"),
        ("A" * 43, INSTANCE, "unknown_token"),
        (None, OTHER, "wrong_instance"),  # None: the issued token
        (None, "not-a-uuid", "bad_request"),
    ],
)
def test_a_refusal_reports_its_reason_and_what_was_presented_but_no_token(
    recorded: Recorded,
    presented: str | None,
    instance: object,
    reason: str,
) -> None:
    service, _, _, events = recorded
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    events.events.clear()
    token = presented or issued.token.get_secret_value()
    with pytest.raises(ConsoleAuthError):
        service.validate(token, instance)  # type: ignore[arg-type]
    event = only(events)
    assert (event.name, event.use_case, event.reason) == (
        EventName.REFUSED,
        UseCase.VALIDATE,
        reason,
    )
    assert event.refused
    if len(token) == 43:
        assert event.token_hash_prefix == hash_token(token)[:8]
    else:
        assert event.token_hash_prefix is None
    assert event.instance_uuid == (instance if isinstance(instance, uuid.UUID) else None)
    assert token not in repr(event)
    assert hash_token(token) not in repr(event)


def test_an_expired_token_is_refused_as_expired(
    recorded: Recorded,
) -> None:
    service, _, clock, events = recorded
    token = service.authorize(INSTANCE, "h", 5900, "novnc").token.get_secret_value()
    clock.advance(timedelta(hours=1))
    events.events.clear()
    with pytest.raises(InvalidToken):
        service.validate(token)
    assert only(events).reason == "expired_token"


def test_a_store_outage_is_a_failure_with_its_code() -> None:
    events = RecordingEvents()
    service = ConsoleAuthService(
        UnavailableRepository(), FakeClock(), FixedTokenSource(), events=events
    )
    with pytest.raises(BackendUnavailable):
        service.revoke_instance(INSTANCE)
    event = only(events)
    assert (event.name, event.use_case, event.reason, event.instance_uuid) == (
        EventName.FAILED,
        UseCase.REVOKE,
        "backend_unavailable",
        INSTANCE,
    )
    with pytest.raises(BackendUnavailable):
        service.validate("A" * 43)
    assert (only(events).name, "backend_unavailable") == (EventName.REFUSED, "backend_unavailable")


def test_serial_ports_report_claims_and_releases(
    recorded: Recorded,
) -> None:
    _, ports, _, events = recorded
    token = ports.authorize_serial(INSTANCE, "compute-1", [10000]).token.get_secret_value()
    assert [e.name for e in events.events] == [EventName.ISSUED]
    events.events.clear()
    lease = ports.connect(token, INSTANCE, "proxy-1")
    names = [e.name for e in events.events]
    assert names == [EventName.VALIDATED, EventName.PORT_CLAIMED]
    claimed = events.events[-1]
    assert (claimed.host, claimed.port, claimed.kind, claimed.reason) == (
        "compute-1",
        10000,
        "serial",
        "connected",
    )
    events.events.clear()
    with pytest.raises(PortAlreadyConnected):
        ports.connect(token, INSTANCE, "proxy-2")
    assert [(e.name, e.reason) for e in events.events] == [
        (EventName.VALIDATED, None),
        (EventName.REFUSED, "port_in_use"),
    ]
    events.events.clear()
    ports.disconnect(lease)
    event = only(events)
    assert (event.name, event.total, event.port) == (EventName.PORT_RELEASED, 1, 10000)


def test_without_events_nothing_is_built() -> None:
    service, _, _ = make()
    assert service.events is None
    token = service.authorize(INSTANCE, "h", 5900, "novnc").token.get_secret_value()
    assert service.validate(token).instance_uuid == INSTANCE


class Broken:
    def around(self, use_case: UseCase) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # a span that works, a record that fails

    def record(self, event: ConsoleEvent) -> None:
        raise RuntimeError("recorder bug")

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        raise RuntimeError("recorder bug")


def test_a_failing_recorder_never_fails_the_use_case_nor_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = RecordingEvents()
    fan_out = combined(Broken(), None, kept)
    assert isinstance(fan_out, FanOutConsoleEvents)
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), FakeClock(), FixedTokenSource(), events=fan_out
    )
    token = service.authorize(INSTANCE, "h", 5900, "novnc").token.get_secret_value()
    service.validate(token)
    assert [e.name for e in kept.events] == [EventName.ISSUED, EventName.VALIDATED]
    assert "console event console.validated not recorded" in caplog.text


def test_combined_is_none_or_the_lone_recorder() -> None:
    lone = RecordingEvents()
    assert combined(None, None) is None
    assert combined(None, lone) is lone


def test_a_recorder_sees_no_exception_chain_and_the_caller_the_original() -> None:
    events = RecordingEvents()
    service, _, _ = make(events)
    with pytest.raises(NoFreeConsolePort):
        ConsolePortService(
            service,
            _FullLeases(),
            InMemoryPortReservationRepository(),
            FixedLeaseIdSource(),
        ).authorize_serial(INSTANCE, "h", [10000])
    assert (only(events).name, "port_unavailable") == (EventName.FAILED, "port_unavailable")


class _FullLeases(InMemoryPortLeaseRepository):
    def claim(self, lease: PortLease, now: datetime) -> PortLease | None:
        return lease  # every port blocked by itself


@pytest.mark.parametrize(
    "error",
    [InvalidToken(reason) for reason in InvalidTokenReason]
    + [
        InstanceMismatch("x"),
        InvalidRequest("x"),
        UnknownCell("x"),
        UnsupportedVersion("x"),
        BackendUnavailable("x"),
        PortAlreadyConnected("x"),
        NoFreeConsolePort("x"),
        ConsoleAuthError("x"),
    ],
)
def test_an_errors_code_is_the_proxys_refusal_reason(error: ConsoleAuthError) -> None:
    """One vocabulary: an event's reason and the proxy's refusal agree."""
    assert refusal_for(error).reason == error.code


def test_a_recorder_without_validated_is_refused_when_the_service_is_built() -> None:
    class RecordOnly:  # written against a port that had only record and around
        around = None

        def record(self, event: ConsoleEvent) -> None:
            pass

    with pytest.raises(TypeError, match=r"validated\(connection, duration\)"):
        ConsoleAuthService(
            InMemoryConsoleConnectionRepository(),
            FakeClock(),
            FixedTokenSource(),
            events=RecordOnly(),  # type: ignore[arg-type]
        )


class Spanless(RecordingEvents):
    """A recorder that keeps no span (as the metrics one): validate's hot frame."""

    around = None  # type: ignore[assignment]


def test_without_spans_validate_reports_from_its_own_frame_keywords_and_all() -> None:
    events = Spanless()
    service, _, _ = make(events)
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    prefix = hash_token(token)[:8]
    events.events.clear()

    assert service.validate.__doc__ == ConsoleAuthService.validate.__doc__  # help() still reads
    assert service.validate(token=token, instance_uuid=INSTANCE).instance_uuid == INSTANCE
    event = only(events)
    assert (event.name, event.kind, event.token_hash_prefix) == (
        EventName.VALIDATED,
        "novnc",
        prefix,
    )
    assert event.duration is not None
    assert event.duration >= 0
    with pytest.raises(InstanceMismatch):
        service.validate(token, OTHER)
    event = only(events)
    assert (event.name, event.reason, event.token_hash_prefix, event.instance_uuid) == (
        EventName.REFUSED,
        "wrong_instance",
        prefix,
        OTHER,
    )
    with pytest.raises(InvalidToken):
        service.validate("A" * len(token))
    event = only(events)
    assert (event.name, event.reason, event.token_hash_prefix) == (
        EventName.REFUSED,
        "unknown_token",
        hash_token("A" * len(token))[:8],
    )


class BrokenSpanless(Broken):
    around = None  # type: ignore[assignment]


def test_without_spans_a_failing_recorder_never_fails_validate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        FakeClock(),
        FixedTokenSource(),
        events=BrokenSpanless(),
    )
    token = service.authorize(INSTANCE, "h", 5900, "novnc").token.get_secret_value()
    assert service.validate(token).instance_uuid == INSTANCE
    assert "console event console.validated not recorded" in caplog.text
    with pytest.raises(InvalidToken):
        service.validate("A" * len(token))
    assert "console event console.refused not recorded" in caplog.text


def test_only_validate_may_take_the_hot_path() -> None:
    with pytest.raises(ValueError, match="only a validate"):
        observed(UseCase.REVOKE, hot=True)
