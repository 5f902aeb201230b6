"""What the use cases report, and the one decorator that reports it.

A use case is instrumented by one line, ``@observed(UseCase.X, asked)``
(a new one also gets its ``UseCase`` member and success ``EventName``; its
service calls ``bind_observed(self)`` once built): with no ``ConsoleEvents``
wired the undecorated method runs, so nothing is built or timed; with one,
the run is timed,
wrapped in the recorder's ``around`` when it has one (a tracer's span), and
ends in one ``ConsoleEvent``: the use case's success event, or its failure
with the error's reason code; a validate that succeeds, the hot path, is
given to the recorder's ``validated`` without building one. An event's
fields hold no token and no full token hash: a hash prefix of 8 hex, as
the logs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from enum import StrEnum
from time import perf_counter
from types import MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Final,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
)
from uuid import UUID

from console_auth.domain import (
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleType,
    IssuedConsole,
    check_token,
    hash_token,
    parse_access_url,
)
from console_auth.domain.leases import PortLease
from console_auth.domain.model import parse_host
from console_auth.domain.types import is_port

if TYPE_CHECKING:  # the port takes these events: imported at run time the other way
    from .ports import ConsoleEvents

logger = logging.getLogger(__name__)

HASH_PREFIX: Final = 8
"""Hex digits of a token hash an event carries: enough to find the row."""


class UseCase(StrEnum):
    """The use cases that report; also the span names (``console_auth.<value>``)."""

    AUTHORIZE = "authorize"
    VALIDATE = "validate"
    REVOKE = "revoke_instance"
    PURGE = "purge_expired"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    SESSION = "session"
    """A proxy's console session, from the request to its end."""


class EventName(StrEnum):
    """Stable event names: audit records, metrics and spans key on them."""

    ISSUED = "console.issued"
    VALIDATED = "console.validated"
    REFUSED = "console.refused"
    """A presented token did not open a console (``validate``, ``connect``)."""
    FAILED = "console.failed"
    """Any other use case raised; ``reason`` is the error's code."""
    REVOKED = "console.revoked"
    PURGED = "console.purged"
    PORT_CLAIMED = "port.claimed"
    PORT_RELEASED = "port.released"
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    SESSION_REFUSED = "session.refused"


_SUCCESS: Final = {
    UseCase.AUTHORIZE: EventName.ISSUED,
    UseCase.VALIDATE: EventName.VALIDATED,
    UseCase.REVOKE: EventName.REVOKED,
    UseCase.PURGE: EventName.PURGED,
    UseCase.CONNECT: EventName.PORT_CLAIMED,
    UseCase.DISCONNECT: EventName.PORT_RELEASED,
}
_REFUSING: Final = frozenset({UseCase.VALIDATE, UseCase.CONNECT})
"""Use cases whose failure is a refusal of what a client presented."""


class EventFields(TypedDict, total=False):
    """What an event may say besides its name and use case."""

    reason: str
    instance_uuid: UUID
    host: str
    port: int
    kind: str
    token_hash_prefix: str
    cell: str
    client: str
    total: int


class ConsoleEvent(NamedTuple):
    """One thing a use case (or the proxy) did, with what is known of it.

    The fields are read as properties: from ``connection`` when the use case
    answered with one (validate, authorize), else from ``details``; a named
    tuple of five, so the validate path builds almost nothing. ``reason`` is
    a stable code: an error's ``code`` for a refusal or a failure, a
    session's outcome at its end. ``duration`` is seconds.
    """

    name: EventName
    use_case: UseCase
    duration: float | None = None
    connection: ConsoleConnection | None = None
    details: EventFields | None = None

    @property
    def refused(self) -> bool:
        return self.name in (EventName.REFUSED, EventName.SESSION_REFUSED)

    @property
    def reason(self) -> str | None:
        return self.details.get("reason") if self.details else None

    @property
    def instance_uuid(self) -> UUID | None:
        if self.connection is not None:
            return self.connection.instance_uuid
        return self.details.get("instance_uuid") if self.details else None

    @property
    def host(self) -> str | None:
        if self.connection is not None:
            return self.connection.host
        return self.details.get("host") if self.details else None

    @property
    def port(self) -> int | None:
        if self.connection is not None:
            return self.connection.port
        return self.details.get("port") if self.details else None

    @property
    def kind(self) -> str | None:
        if self.connection is not None:
            return self.connection.console_type  # a StrEnum: its value
        return self.details.get("kind") if self.details else None

    @property
    def token_hash_prefix(self) -> str | None:
        if self.connection is not None:
            return self.connection.token_hash[:HASH_PREFIX]
        return self.details.get("token_hash_prefix") if self.details else None

    @property
    def cell(self) -> str | None:
        return self.details.get("cell") if self.details else None

    @property
    def client(self) -> str | None:
        return self.details.get("client") if self.details else None

    @property
    def total(self) -> int | None:
        return self.details.get("total") if self.details else None

    def fields(self) -> dict[str, str | int | float]:
        """Every known field, by name, as text or numbers, in ``FIELDS`` order."""
        out: dict[str, str | int | float] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value if isinstance(value, int | float) else str(value)
        return out


FIELDS: Final = (
    "name",
    "use_case",
    "reason",
    "instance_uuid",
    "host",
    "port",
    "kind",
    "token_hash_prefix",
    "cell",
    "client",
    "total",
    "duration",
)
"""An event's fields, in the order records and spans show them."""


def presented(token: object, instance_uuid: object = None, *_: object) -> EventFields:
    """What a client presented, fit for an event: the token's hash prefix
    when it is token-shaped, the uuid when it is one; never raises."""
    fields: EventFields = {}
    with contextlib.suppress(ConsoleAuthError):
        fields["token_hash_prefix"] = hash_token(check_token(token))[:HASH_PREFIX]
    uuid = as_uuid(instance_uuid)
    if uuid is not None:
        fields["instance_uuid"] = uuid
    return fields


def presented_url(url: object) -> EventFields:
    """``presented`` for an access URL: nothing if it does not parse."""
    if not isinstance(url, str):
        return {}
    try:
        return presented(*parse_access_url(url))
    except ConsoleAuthError:
        return {}


def asked_console(
    instance_uuid: object, host: object, port: object, console_type: object, **_: object
) -> EventFields:
    """What ``authorize`` was asked for, as far as it is valid; never raises."""
    fields = asked_instance(instance_uuid)
    with contextlib.suppress(ConsoleAuthError):
        fields["host"] = parse_host(host)
    if is_port(port):
        fields["port"] = port
    with contextlib.suppress(ValueError):
        fields["kind"] = ConsoleType(str(console_type)).value
    return fields


def asked_instance(instance_uuid: object, *_: object) -> EventFields:
    uuid = as_uuid(instance_uuid)
    return {} if uuid is None else {"instance_uuid": uuid}


def asked_host(host: object = None) -> EventFields:
    with contextlib.suppress(ConsoleAuthError):
        return {} if host is None else {"host": parse_host(host)}
    return {}


def asked_lease(lease: object) -> EventFields:
    return _result_fields(lease) if isinstance(lease, PortLease) else {}


def as_uuid(value: object) -> UUID | None:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _result_fields(result: object) -> EventFields:
    if isinstance(result, PortLease):
        return {
            "instance_uuid": result.instance_uuid,
            "host": result.host,
            "port": result.port,
            "kind": "serial",
            "token_hash_prefix": result.token_hash[:HASH_PREFIX],
            "reason": result.kind.value,
        }
    if isinstance(result, bool):
        return {"total": int(result)}
    if isinstance(result, int):
        return {"total": result}
    return {}


def validated_event(connection: ConsoleConnection, duration: float) -> ConsoleEvent:
    """The event of a validate that opened ``connection``, for a recorder
    that wants one (``ConsoleEvents.validated`` is given it without)."""
    return ConsoleEvent(EventName.VALIDATED, UseCase.VALIDATE, duration, connection)


def record_safely(events: ConsoleEvents, event: ConsoleEvent) -> None:
    """Record; a recorder's fault is logged, never the use case's failure."""
    try:
        events.record(event)
    except Exception:
        logger.exception("console event %s not recorded", event.name)


def validated_safely(
    events: ConsoleEvents, connection: ConsoleConnection, duration: float
) -> None:
    """``record_safely`` for a validate that opened ``connection``."""
    try:
        events.validated(connection, duration)
    except Exception:
        logger.exception("console event %s not recorded", EventName.VALIDATED)


class Observable(Protocol):
    """A service whose use cases report: ``events`` is ``None`` when none listens."""

    @property
    def events(self) -> ConsoleEvents | None: ...


_S = TypeVar("_S", bound=Observable)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _nothing_asked(*args: object, **kwargs: object) -> EventFields:
    return {}


def observed(
    use_case: UseCase, asked: Callable[..., EventFields] = _nothing_asked, *, hot: bool = False
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Report each run of the decorated use case to the service's ``events``.

    ``asked(*args, **kwargs)`` says what the caller asked for (an instance,
    a host, a presented token's hash prefix), for a failure or a count; it
    must never raise nor keep a token. The success event's fields come from
    the result (a connection, a lease, a count). ``hot``: the validate hot
    path, ``(token, instance_uuid=None)``, which ``bind_observed`` times in
    a frame of that signature when the recorder keeps no span.
    """

    success = _SUCCESS[use_case]
    validating = use_case is UseCase.VALIDATE  # answers with a ConsoleConnection
    if hot and not validating:
        raise ValueError("only a validate use case has the hot path")

    def decorate(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            events = self.events
            if events is None:  # a service that did not bind_observed: nothing built
                return method(self, *args, **kwargs)
            around = events.around
            if around is None:  # a recorder without spans (metrics): nothing to enter
                return reported(events, self, args, kwargs)
            with around(use_case):
                return reported(events, self, args, kwargs)

        def reported(events: ConsoleEvents, service: _S, args: Any, kwargs: Any) -> _R:
            started = perf_counter()
            try:
                result = method(service, *args, **kwargs)
            except Exception as exc:
                _failed(events, use_case, asked, exc, perf_counter() - started, args, kwargs)
                raise
            duration = perf_counter() - started
            if validating:  # no event built: the recorder's own choice
                validated_safely(events, result, duration)  # type: ignore[arg-type]
                return result
            if isinstance(result, ConsoleConnection):
                event = ConsoleEvent(success, use_case, duration, result)
            elif isinstance(result, IssuedConsole):
                event = ConsoleEvent(success, use_case, duration, result.connection)
            else:
                fields = _result_fields(result)
                if "instance_uuid" not in fields:
                    fields = asked(*args, **kwargs) | fields
                event = ConsoleEvent(success, use_case, duration, None, fields)
            record_safely(events, event)
            return result

        run.__observed__ = method  # type: ignore[attr-defined]  # for bind_observed()
        run.__hot__ = asked if hot else None  # type: ignore[attr-defined]
        return run

    return decorate


def _failed(
    events: ConsoleEvents,
    use_case: UseCase,
    asked: Callable[..., EventFields],
    exc: Exception,
    duration: float,
    args: Any,
    kwargs: Any,
) -> None:
    """Record a use case's failure, with what the caller asked for."""
    fields = asked(*args, **kwargs)
    fields["reason"] = exc.code if isinstance(exc, ConsoleAuthError) else "internal_error"
    name = EventName.REFUSED if use_case in _REFUSING else EventName.FAILED
    record_safely(events, ConsoleEvent(name, use_case, duration, None, fields))


def bind_observed(service: Observable) -> None:
    """Bind ``service``'s use cases for its ``events``, once, when it is built:
    with nobody listening, to the undecorated methods (not even the
    decorator's frame is paid); with a recorder that keeps no span, the hot
    validate to a frame of its own signature (no ``*args`` to pack)."""
    events, cls = service.events, type(service)
    if events is not None and not callable(getattr(events, "validated", None)):
        raise TypeError("events: a ConsoleEvents recorder needs validated(connection, duration)")
    for name in dir(cls):
        wrapper = getattr(cls, name, None)
        method = getattr(wrapper, "__observed__", None)
        if method is None:
            continue
        hot_asked = getattr(wrapper, "__hot__", None)
        if events is None:
            setattr(service, name, MethodType(method, service))
        elif events.around is None and hot_asked is not None:
            bound = MethodType(method, service)
            setattr(service, name, _timed_validate(bound, events, hot_asked))


def _timed_validate(
    validate: Callable[[Any, Any], ConsoleConnection],
    events: ConsoleEvents,
    asked: Callable[..., EventFields],
) -> Callable[..., ConsoleConnection]:
    validated = events.validated

    def run(token: Any, instance_uuid: Any = None) -> ConsoleConnection:
        started = perf_counter()
        try:
            result = validate(token, instance_uuid)
        except Exception as exc:
            duration = perf_counter() - started
            _failed(events, UseCase.VALIDATE, asked, exc, duration, (token, instance_uuid), {})
            raise
        try:  # validated_safely, inline
            validated(result, perf_counter() - started)
        except Exception:
            logger.exception("console event %s not recorded", EventName.VALIDATED)
        return result

    return functools.update_wrapper(run, validate)  # its name, doc and signature


class FanOutConsoleEvents:
    """Several recorders as one (metrics and audit and traces): spans nest
    in the given order; a recorder that fails does not stop the others."""

    def __init__(self, recorders: Sequence[ConsoleEvents]) -> None:
        self._recorders = tuple(recorders)
        spans = [r.around for r in self._recorders if r.around is not None]
        self.around: Callable[[UseCase], AbstractContextManager[object]] | None = (
            None
            if not spans
            else spans[0]
            if len(spans) == 1
            else functools.partial(_nested, spans)
        )

    def record(self, event: ConsoleEvent) -> None:
        for recorder in self._recorders:
            record_safely(recorder, event)

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        for recorder in self._recorders:
            validated_safely(recorder, connection, duration)


@contextlib.contextmanager
def _nested(
    spans: Sequence[Callable[[UseCase], AbstractContextManager[object]]], use_case: UseCase
) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for span in spans:
            stack.enter_context(span(use_case))
        yield


def combined(*recorders: ConsoleEvents | None) -> ConsoleEvents | None:
    """The wired recorders as one: ``None`` when there is none, the
    recorder itself when there is one, so a lone recorder costs no fan-out."""
    wired = [recorder for recorder in recorders if recorder is not None]
    if not wired:
        return None
    return wired[0] if len(wired) == 1 else FanOutConsoleEvents(wired)
