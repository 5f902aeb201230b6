"""The public names of each layer are pinned: removing one is a breaking change."""

from __future__ import annotations

import subprocess
import sys

import console_auth.application
import console_auth.domain


def test_domain_exports() -> None:
    assert console_auth.domain.__all__ == [
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


def test_application_exports() -> None:
    assert console_auth.application.__all__ == [
        "DEFAULT_PURGE_GRACE",
        "MAX_PURGE_BATCH_SIZE",
        "MAX_TTL",
        "REVOCATION_RETENTION",
        "CellLocator",
        "CellRoutedConsoleConnectionRepository",
        "Clock",
        "ConsoleAuthService",
        "ConsoleConnectionRepository",
        "ConsoleEndpoints",
        "ConsolePortService",
        "Explanation",
        "FallbackConsoleConnectionRepository",
        "InstanceConsoleService",
        "LeaseIdSource",
        "PeriodicPurge",
        "PortLeaseRepository",
        "PortReservationRepository",
        "ServicePolicy",
        "StoredConnection",
        "TokenSource",
    ]


def test_the_core_loads_no_driver() -> None:
    """A proxy importing the domain must not pay for SQLAlchemy."""
    code = (
        "import sys, console_auth.domain, console_auth.application; "
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'pymemcache', 'dependency_injector') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_core_and_a_service_without_metrics_load_no_metrics_or_tracing() -> None:
    """The ``metrics`` and ``tracing`` extras are optional: nothing imports
    them until a setting turns them on."""
    code = (
        "import sys, console_auth.domain, console_auth.application; "
        "from console_auth.adapters.container import build_container; "
        "from console_auth.adapters.settings import Settings; "
        "build_container(Settings(console_tokens_backend='memory')).service(); "
        "print(sorted(m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
