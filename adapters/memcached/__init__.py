"""The memcached adapter: the legacy consoleauth path, for one deprecation cycle.

Needs the ``memcached`` extra (pymemcache). Importing it connects to
nothing; a ``MemcachedClient`` opens connections on its first command.
"""

from .client import MemcachedClient, Server, parse_server
from .ports import MemcachedPortLeaseRepository, MemcachedPortReservationRepository
from .repository import MemcachedConsoleConnectionRepository, MemcachedStats

__all__ = [
    "MemcachedClient",
    "MemcachedConsoleConnectionRepository",
    "MemcachedPortLeaseRepository",
    "MemcachedPortReservationRepository",
    "MemcachedStats",
    "Server",
    "parse_server",
]
