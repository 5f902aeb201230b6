"""Use cases over ports: the service a compute API, a proxy and a periodic
job call, and the protocols its adapters satisfy."""

from console_auth.domain.types import MAX_TTL

from .cells import CellRoutedConsoleConnectionRepository
from .fallback import FallbackConsoleConnectionRepository
from .ports import (
    CellLocator,
    Clock,
    ConsoleConnectionRepository,
    LeaseIdSource,
    PortLeaseRepository,
    PortReservationRepository,
    TokenSource,
)
from .serial import ConsolePortService
from .service import (
    DEFAULT_PURGE_GRACE,
    MAX_PURGE_BATCH_SIZE,
    REVOCATION_RETENTION,
    ConsoleAuthService,
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
    "ConsolePortService",
    "FallbackConsoleConnectionRepository",
    "LeaseIdSource",
    "PortLeaseRepository",
    "PortReservationRepository",
    "ServicePolicy",
    "TokenSource",
]
