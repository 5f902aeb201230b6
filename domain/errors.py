"""The errors callers of console-auth can catch.

::

    ConsoleAuthError          root: callers may catch just this
    ├─ InvalidToken           unknown, malformed or expired; .reason says which
    ├─ InstanceMismatch       good token, wrong (or required but missing) instance uuid
    ├─ InvalidRequest         bad host, port, options, URL, uuid or primitive
    │  ├─ UnknownCell         no configured cell holds the instance
    │  ├─ UnknownTokenHash    no stored token has the given hash prefix
    │  └─ AmbiguousTokenHash  several stored tokens have the given hash prefix
    ├─ UnsupportedVersion     primitive from a version this library never wrote
    ├─ BackendUnavailable     the store cannot be reached; the driver error is chained
    ├─ PortUnavailable        a console port cannot be had (serial consoles)
    │  ├─ NoFreeConsolePort   every defined port is connected or held
    │  ├─ PortAlreadyConnected  the port has a live connection
    │  ├─ LeaseLost           a heartbeat or disconnect for a lease that is gone
    │  └─ PortRangeExhausted  no port of the range is left to reserve
    └─ ConsoleUnavailable     the driver answered: this console cannot be had
       ├─ InstanceNotFound    the driver knows no such instance
       ├─ ConsoleTypeUnavailable  the instance has no console of this kind
       ├─ ConsoleNotAllocated  the console's port is not allocated yet (autoport)
       └─ InstanceNotRunning  the instance is not running

Messages name the problem and never contain a token: a proxy may log them
verbatim, and a token in a log is a live credential. Each error's ``code``
is its stable reason code, the one vocabulary of refusals, metrics labels
and audit records.
"""

from __future__ import annotations

from enum import StrEnum


class ConsoleAuthError(Exception):
    """Root of every error this library raises on purpose."""

    code: str = "internal_error"
    """Stable reason code for logs, metrics and refusals; never a value."""


class InvalidTokenReason(StrEnum):
    """Why a presented token was refused; stable values for logs and metrics."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    TAMPERED = "tampered"
    """The stored connection does not match its MAC: someone changed it."""


class InvalidToken(ConsoleAuthError):
    """Raised by validation when a token must not open a console.

    Proxies usually answer all reasons alike; ``reason`` exists for
    operators' metrics, not for the end user.
    """

    def __init__(self, reason: InvalidTokenReason) -> None:
        self.reason = reason
        self.code = f"{reason.value}_token"
        super().__init__(f"console token is invalid ({reason.value})")


class InstanceMismatch(ConsoleAuthError):
    """Raised when a good token is presented for another instance.

    The uuid in the URL routes the proxy to a cell; a token for another
    instance there would otherwise open the wrong console.
    """

    code = "wrong_instance"


class InvalidRequest(ConsoleAuthError, ValueError):
    """Raised before anything is stored when input is unusable.

    Subclasses ``ValueError`` so generic input handling in a host service
    still catches it.
    """

    code = "bad_request"


class UnknownCell(InvalidRequest):
    """Raised when a deployment split into cells cannot tell which cell holds
    an instance (its ``CellLocator`` does not know the uuid), or, for serial
    ports, a compute host.

    Authorize, validate by uuid and revoke each need that one cell, and a
    guess would store a token where validation never looks, or revoke
    nothing while the tokens live on.
    """

    code = "unknown_instance"


class UnknownTokenHash(InvalidRequest):
    """Raised by ``revoke_token`` when no stored token (live or expired) has
    a hash starting with the given prefix."""


class AmbiguousTokenHash(InvalidRequest):
    """Raised by ``revoke_token`` when the prefix matches more than one
    stored token: it names none of them, the operator gives more digits."""


class UnsupportedVersion(ConsoleAuthError):
    """Raised when a primitive comes from a version this library cannot read.

    During a rolling upgrade an older reader must fail loudly rather than
    guess the meaning of fields it has never seen.
    """

    code = "unsupported_version"


class BackendUnavailable(ConsoleAuthError):
    """Raised when the token store cannot answer, as opposed to answering no.

    A proxy must not tell a user "invalid token" because a database was
    restarting; the original driver error is kept as ``__cause__``.
    """

    code = "backend_unavailable"


class PortUnavailable(ConsoleAuthError):
    """Root of the serial-port conditions: the request was fine, the port is
    taken. An API maps these to "409 Conflict", not to "400"."""

    code = "port_unavailable"


class NoFreeConsolePort(PortUnavailable):
    """Raised by ``authorize_serial`` when every defined port is taken, so the
    API can tell the user that no more consoles are available."""


class PortAlreadyConnected(PortUnavailable):
    """Raised by ``connect`` when another client is on the port: a serial
    port takes one client at a time."""

    code = "port_in_use"


class LeaseLost(PortUnavailable):
    """Raised by ``heartbeat`` when the lease expired or was replaced: the
    proxy must drop its client, someone else may own the port now."""


class PortRangeExhausted(PortUnavailable):
    """Raised by ``allocate_port`` when every port of the range is reserved."""


class ConsoleUnavailable(ConsoleAuthError):
    """Root of a console driver's answers that no console can be had: the
    driver was asked and said no. A driver that cannot be asked raises
    ``BackendUnavailable`` instead, so an outage never reads as "no such
    console". An API maps these to "404" or "409", not to "503"."""


class InstanceNotFound(ConsoleUnavailable):
    """Raised when the console driver knows no instance with this uuid."""


class ConsoleTypeUnavailable(ConsoleUnavailable):
    """Raised when the instance has no console of the asked kind (no such
    device, or one that does not listen on TCP), as Nova's exception of
    the same name."""


class ConsoleNotAllocated(ConsoleUnavailable):
    """Raised when the console's port is still to be chosen (libvirt's
    autoport ``-1``): a token for port -1 would open nothing."""


class InstanceNotRunning(ConsoleUnavailable):
    """Raised when the instance is defined but not running: its consoles
    listen nowhere."""
