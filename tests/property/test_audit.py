"""Audit records: one per use case with its fields, and never a token, in
any form an operator's pipeline may read (message, args, ``extra``, JSON)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from console_auth.adapters.audit import (
    AUDIT_FIELDS,
    AUDIT_LOGGER,
    AuditJsonFormatter,
    LoggingConsoleEvents,
)
from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import ConsoleAuthService, ConsolePortService
from console_auth.domain import ConsoleAuthError, hash_token
from tests.fakes import FakeClock, FixedLeaseIdSource
from tests.property.strategies import hostnames, tokens

FORMATTER = AuditJsonFormatter()


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def audit_records() -> Iterator[list[logging.LogRecord]]:
    """The audit logger's records, captured in the test body (hypothesis
    runs many examples per function-scoped fixture)."""
    logger = logging.getLogger(AUDIT_LOGGER)
    kept = _Kept()
    level = logger.level
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        yield kept.records
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)


class _OneToken:
    """A token source that issues the drawn tokens, in order."""

    def __init__(self, *issued: str) -> None:
        self._issued = list(issued)

    def new_token(self) -> str:
        return self._issued.pop(0)


def renderings(record: logging.LogRecord) -> list[str]:
    """Every form of a record a handler or formatter may write."""
    return [
        record.getMessage(),
        str(record.msg),
        repr(record.args),
        repr(record.__dict__),
        FORMATTER.format(record),
        logging.Formatter().format(record),
    ]


def services(
    token_source: _OneToken, clock: FakeClock
) -> tuple[ConsoleAuthService, ConsolePortService]:
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        clock,
        token_source,
        events=LoggingConsoleEvents(),
    )
    ports = ConsolePortService(
        service,
        InMemoryPortLeaseRepository(),
        InMemoryPortReservationRepository(),
        FixedLeaseIdSource(),
    )
    return service, ports


@given(
    token=tokens,
    serial_token=tokens,
    presented=st.one_of(tokens, st.text(max_size=60)),
    instance=st.uuids(),
    other=st.uuids(),
    host=hostnames(),
)
def test_no_audit_record_holds_a_token(
    token: str, serial_token: str, presented: str, instance: uuid.UUID, other: uuid.UUID, host: str
) -> None:
    assume(token != serial_token)
    clock = FakeClock()
    service, ports = services(_OneToken(token, serial_token), clock)
    with audit_records() as records:
        service.authorize(instance, host, 5900, "novnc", ttl=timedelta(seconds=60))
        ports.authorize_serial(instance, host, [10000], ttl=timedelta(seconds=60))
        service.validate(token, instance)
        service.validate_url(f"https://c.example/?token={token}&instance_uuid={instance}")
        lease = ports.connect(serial_token, instance, "proxy-1")
        ports.disconnect(lease)
        for attempt in (
            lambda: service.validate(token, other),
            lambda: service.validate(presented, instance),
            lambda: service.validate_url(f"https://c.example/?token={presented}"),
            lambda: ports.connect(presented, other, "proxy-1"),
        ):
            with suppress(ConsoleAuthError):
                attempt()
        clock.advance(timedelta(minutes=1))
        with pytest.raises(ConsoleAuthError):
            service.validate(token, instance)  # expired now
        clock.advance(timedelta(hours=1))
        service.purge_expired()
        service.revoke_instance(instance)
    assert len(records) >= 10
    secrets = [token, serial_token, hash_token(token), hash_token(serial_token)]
    if len(presented) == 43:
        secrets += [presented, hash_token(presented)]
    for record in records:
        for text in renderings(record):
            for secret in secrets:
                assert secret not in text


def test_each_record_carries_its_documented_fields_and_json_form() -> None:
    instance = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")
    token = "T" * 43
    clock = FakeClock()
    service, _ = services(_OneToken(token), clock)
    with audit_records() as records:
        service.authorize(instance, "compute-1", 5900, "novnc")
        service.validate(token, instance)
        with pytest.raises(ConsoleAuthError):
            service.validate("U" * 43, instance)
        service.revoke_instance(instance)
    assert [r.__dict__["event"] for r in records] == [
        "console.issued",
        "console.validated",
        "console.refused",
        "console.revoked",
    ]
    assert all(r.name == AUDIT_LOGGER and r.levelno == logging.INFO for r in records)
    issued, validated, refused, revoked = (r.__dict__ for r in records)
    prefix = hash_token(token)[:8]
    assert {k: issued[k] for k in AUDIT_FIELDS if k in issued} == {
        "event": "console.issued",
        "use_case": "authorize",
        "instance_uuid": str(instance),
        "host": "compute-1",
        "port": 5900,
        "kind": "novnc",
        "token_hash_prefix": prefix,
        "duration": issued["duration"],
    }
    assert validated["token_hash_prefix"] == prefix
    assert (refused["reason"], refused["token_hash_prefix"]) == (
        "unknown_token",
        hash_token("U" * 43)[:8],
    )
    assert (revoked["total"], revoked["instance_uuid"]) == (1, str(instance))
    assert records[2].getMessage() == (
        f"console.refused reason=unknown_token instance_uuid={instance} "
        f"token_hash_prefix={hash_token('U' * 43)[:8]} duration={refused['duration']}"
    )
    line = json.loads(FORMATTER.format(records[2]))
    assert line["logger"] == AUDIT_LOGGER
    assert line["level"] == "INFO"
    assert line["event"] == "console.refused"
    assert line["reason"] == "unknown_token"
    assert line["instance_uuid"] == str(instance)
    assert line["time"].endswith("+00:00")


def test_nothing_is_built_when_the_audit_logger_is_off() -> None:
    logger = logging.getLogger(AUDIT_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        kept = _Kept()
        logger.addHandler(kept)
        service, _ = services(_OneToken("V" * 43), FakeClock())
        service.authorize(uuid.uuid4(), "h", 5900, "novnc")
        logger.removeHandler(kept)
    finally:
        logger.setLevel(level)
    assert kept.records == []
