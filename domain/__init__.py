"""The pure core: what a console connection is and the rules for its token.

Imports only the standard library and pydantic, so every process that handles
connections (API, proxy, periodic job) can load it without a driver.
"""

import logging

from .endpoints import ConsoleEndpoint
from .errors import (
    AmbiguousTokenHash,
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleNotAllocated,
    ConsoleTypeUnavailable,
    ConsoleUnavailable,
    InstanceMismatch,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    LeaseLost,
    NoFreeConsolePort,
    PortAlreadyConnected,
    PortRangeExhausted,
    PortUnavailable,
    UnknownCell,
    UnknownTokenHash,
    UnsupportedVersion,
)
from .leases import LeaseKind, PortLease
from .model import ConsoleConnection, ConsoleOptions, ConsoleType, IssuedConsole, SerialMode
from .tokens import TOKEN_BYTES, TOKEN_LENGTH, check_token, hash_token
from .urls import build_access_url, parse_access_url

__all__ = [
    "TOKEN_BYTES",
    "TOKEN_LENGTH",
    "AmbiguousTokenHash",
    "BackendUnavailable",
    "ConsoleAuthError",
    "ConsoleConnection",
    "ConsoleEndpoint",
    "ConsoleNotAllocated",
    "ConsoleOptions",
    "ConsoleType",
    "ConsoleTypeUnavailable",
    "ConsoleUnavailable",
    "InstanceMismatch",
    "InstanceNotFound",
    "InstanceNotRunning",
    "InvalidRequest",
    "InvalidToken",
    "InvalidTokenReason",
    "IssuedConsole",
    "LeaseKind",
    "LeaseLost",
    "NoFreeConsolePort",
    "PortAlreadyConnected",
    "PortLease",
    "PortRangeExhausted",
    "PortUnavailable",
    "SerialMode",
    "UnknownCell",
    "UnknownTokenHash",
    "UnsupportedVersion",
    "build_access_url",
    "check_token",
    "hash_token",
    "parse_access_url",
]

# A library's warnings must not reach stderr through logging's last-resort
# handler in a host that configured no logging; the host decides.
logging.getLogger("console_auth").addHandler(logging.NullHandler())
