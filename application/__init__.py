"""Use cases over ports: the service a compute API, a proxy and a periodic
job call, and the protocols its adapters satisfy."""

from .fallback import FallbackConsoleConnectionRepository
from .ports import Clock, ConsoleConnectionRepository, TokenSource
from .service import MAX_TTL, ConsoleAuthService, ServicePolicy

__all__ = [
    "MAX_TTL",
    "Clock",
    "ConsoleAuthService",
    "ConsoleConnectionRepository",
    "FallbackConsoleConnectionRepository",
    "ServicePolicy",
    "TokenSource",
]
