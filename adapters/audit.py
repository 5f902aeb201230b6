"""``ConsoleEvents`` as audit records: one log record per event on the
logger ``console_auth.audit``, through the standard ``logging`` module.

The library installs no handler: an operator routes the logger where audit
records go, and may format them with ``AuditJsonFormatter`` (one JSON
object a line). Each record's message is the event in words
(``console.refused reason=unknown_token token_hash_prefix=3f2a9c01 ...``)
and its fields are attributes of the record (``logging``'s ``extra``),
present only when known:

=====================  ======================================================
``event``              stable name: ``console.issued``, ``console.validated``,
                       ``console.refused``, ``console.failed``,
                       ``console.revoked``, ``console.purged``, ``port.claimed``,
                       ``port.released``, ``session.started``,
                       ``session.ended``, ``session.refused``
``use_case``           ``authorize``, ``validate``, ``revoke_instance``,
                       ``purge_expired``, ``connect``, ``disconnect``, ``session``
``reason``             reason code of a refusal or failure (``expired_token``,
                       ``backend_unavailable``, ...), a session's outcome, a
                       port lease's kind
``instance_uuid``      the instance
``host``, ``port``     the compute host and console port
``kind``               console kind (``novnc``, ``serial``, ...)
``token_hash_prefix``  the first 8 hex of the token's SHA-256, as every log line
``cell``               the cell, where known
``client``             the client's address (the proxy's events)
``total``              tokens revoked or purged, leases released
``duration``           seconds the use case (or session) took
=====================  ======================================================

Never a token: a record is built from an event, and events hold none.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

from console_auth.application.events import FIELDS, ConsoleEvent, validated_event
from console_auth.domain import ConsoleConnection

AUDIT_LOGGER: Final = "console_auth.audit"
AUDIT_FIELDS: Final = ("event", *FIELDS[1:])
"""The ``extra`` attributes an audit record may carry, in this order."""


class LoggingConsoleEvents:
    """Writes each event as one INFO record on ``console_auth.audit``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(AUDIT_LOGGER)

    around: Final = None  # no span: the use case runs unwrapped

    def validated(self, connection: ConsoleConnection, duration: float) -> None:
        self.record(validated_event(connection, duration))

    def record(self, event: ConsoleEvent) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        fields = event.fields()
        fields["event"] = fields.pop("name")
        if "duration" in fields:
            fields["duration"] = round(float(fields["duration"]), 6)
        words = " ".join(f"{name}={fields[name]}" for name in AUDIT_FIELDS[2:] if name in fields)
        self._logger.info("%s %s", fields["event"], words, extra=fields)


class AuditJsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger,
    message, and every audit field the record carries.

    For ``logging.config.dictConfig``:
    ``{"formatters": {"audit": {"()": "console_auth.adapters.audit.AuditJsonFormatter"}}}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in AUDIT_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        return json.dumps(out, default=str)
