"""This library's errors as HTTP answers, framework-free.

Every refusal has a stable ``reason`` for logs and metrics and a message
fit for the browser: it never holds a token, nor a compute host, which the
domain's messages may name (``PortAlreadyConnected``). The domain error
stays reachable as ``__cause__`` when the caller raises ``from`` it, so a log
keeps the detail.

=====  ====================================================================
400    malformed request: bad target, uuid, URL, forwarding headers
401    missing or malformed token
403    unknown, expired, tampered, wrong instance, wrong console kind, origin
409    serial port already connected (or otherwise unavailable)
502    the console, its CONNECT gateway or its TLS certificate refuses: the proxy's
503    the store cannot answer, or holds a newer release's data; shutting down
504    the console does not answer in time: the proxy's
=====  ====================================================================
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import Final

from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleType,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    PortAlreadyConnected,
    PortUnavailable,
    UnknownCell,
    UnsupportedVersion,
)


class Reason(StrEnum):
    """Why a console request was refused; stable values for logs and metrics."""

    BAD_TARGET = "bad_target"
    BAD_FORWARDED = "bad_forwarded"
    BAD_REQUEST = "bad_request"
    MISSING_TOKEN = "missing_token"  # noqa: S105 - a reason code
    MALFORMED_TOKEN = "malformed_token"  # noqa: S105 - a reason code
    AMBIGUOUS_TOKEN = "ambiguous_token"  # noqa: S105 - a reason code
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - a reason code
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 - a reason code
    TAMPERED_TOKEN = "tampered_token"  # noqa: S105 - a reason code
    WRONG_INSTANCE = "wrong_instance"
    UNKNOWN_INSTANCE = "unknown_instance"
    WRONG_CONSOLE_KIND = "wrong_console_kind"
    BAD_ORIGIN = "bad_origin"
    ORIGIN_SCHEME_MISMATCH = "origin_scheme_mismatch"
    PORT_IN_USE = "port_in_use"
    PORT_UNAVAILABLE = "port_unavailable"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    UNSUPPORTED_VERSION = "unsupported_version"
    INTERNAL_ERROR = "internal_error"
    # the proxy's own, around the upgrade and the dial
    BAD_UPGRADE = "bad_upgrade"
    CONSOLE_TIMEOUT = "console_timeout"
    CONSOLE_UNREACHABLE = "console_unreachable"
    BAD_ACCESS_PATH = "bad_access_path"
    CONSOLE_GATEWAY_REFUSED = "console_gateway_refused"
    CONSOLE_GATEWAY_ERROR = "console_gateway_error"
    CONSOLE_BAD_CERTIFICATE = "console_bad_certificate"
    CONSOLE_TLS_FAILED = "console_tls_failed"
    SHUTTING_DOWN = "shutting_down"


class Refused(Exception):
    """A request refused before or after validation; a real HTTP answer.

    Re-exported by ``requests``, where the interface named it first.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        """Stable code for logs and metrics: a ``Reason`` value."""

    @property
    def message(self) -> str:
        """What the client may read; never a token."""
        return str(self.args[0])


_RELINK: Final = "; ask for a new console link"
_INVALID: Final = {  # tampered reads as unknown to the client: the detail is for operators
    InvalidTokenReason.MALFORMED: (
        HTTPStatus.UNAUTHORIZED,
        Reason.MALFORMED_TOKEN,
        "the console token is malformed" + _RELINK,
    ),
    InvalidTokenReason.UNKNOWN: (
        HTTPStatus.FORBIDDEN,
        Reason.UNKNOWN_TOKEN,
        "the console token is unknown or revoked" + _RELINK,
    ),
    InvalidTokenReason.EXPIRED: (
        HTTPStatus.FORBIDDEN,
        Reason.EXPIRED_TOKEN,
        "the console link has expired" + _RELINK,
    ),
    InvalidTokenReason.TAMPERED: (
        HTTPStatus.FORBIDDEN,
        Reason.TAMPERED_TOKEN,
        "the console token is unknown or revoked" + _RELINK,
    ),
}


def refusal_for(error: ConsoleAuthError) -> Refused:
    """The answer to ``error``; raise it ``from error`` to keep the detail.

    Most specific first: ``UnknownCell`` is an ``InvalidRequest`` and
    ``PortAlreadyConnected`` a ``PortUnavailable``.
    """
    if isinstance(error, InvalidToken):
        return Refused(*_INVALID[error.reason])
    if isinstance(error, InstanceMismatch):
        return Refused(HTTPStatus.FORBIDDEN, Reason.WRONG_INSTANCE, str(error))
    if isinstance(error, UnknownCell):  # its message names the uuid: the client's, but keep it
        return Refused(
            HTTPStatus.FORBIDDEN, Reason.UNKNOWN_INSTANCE, "no console is known for this instance"
        )
    if isinstance(error, InvalidRequest):  # about the client's own input, and token-free
        return Refused(HTTPStatus.BAD_REQUEST, Reason.BAD_REQUEST, str(error))
    if isinstance(error, PortAlreadyConnected):
        return Refused(
            HTTPStatus.CONFLICT, Reason.PORT_IN_USE, "this serial console already has a client"
        )
    if isinstance(error, PortUnavailable):
        return Refused(
            HTTPStatus.CONFLICT, Reason.PORT_UNAVAILABLE, "this serial console is not available"
        )
    if isinstance(error, BackendUnavailable):
        return Refused(
            HTTPStatus.SERVICE_UNAVAILABLE,
            Reason.BACKEND_UNAVAILABLE,
            "the console token store is unavailable; try again shortly",
        )
    if isinstance(error, UnsupportedVersion):  # a rolling upgrade: retry once it is done
        return Refused(
            HTTPStatus.SERVICE_UNAVAILABLE,
            Reason.UNSUPPORTED_VERSION,
            "the console token store holds a newer release's data; try again shortly",
        )
    return Refused(HTTPStatus.INTERNAL_SERVER_ERROR, Reason.INTERNAL_ERROR, "console error")


def wrong_console_kind(kind: ConsoleType) -> Refused:
    """A good token for a console kind this proxy is not configured to serve."""
    return Refused(
        HTTPStatus.FORBIDDEN,
        Reason.WRONG_CONSOLE_KIND,
        f"this proxy does not serve {kind.value} consoles",
    )
