"""Use cases over ports: the service a compute API, a proxy and a periodic
job call, and the protocols its adapters satisfy."""

from console_auth.domain.types import MAX_TTL

from .cells import CellRoutedConsoleConnectionRepository
from .consoles import InstanceConsoleService
from .fallback import FallbackConsoleConnectionRepository
from .ports import (
    CellLocator,
    Clock,
    ConsoleConnectionRepository,
    ConsoleEndpoints,
    LeaseIdSource,
    PortLeaseRepository,
    PortReservationRepository,
    StoredConnection,
    TokenSource,
)
from .purge import PeriodicPurge
from .serial import ConsolePortService
from .service import (
    DEFAULT_PURGE_GRACE,
    MAX_PURGE_BATCH_SIZE,
    REVOCATION_RETENTION,
    ConsoleAuthService,
    Explanation,
    ServicePolicy,
)

__all__ = [
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
