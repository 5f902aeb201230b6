"""The memcached adapter: the legacy consoleauth path, for one deprecation cycle; tokens only
(ARCHITECTURE.md, "No serial ports on memcached"). Needs the ``memcached`` extra (pymemcache)."""

from .client import MemcachedClient, Server, parse_server
from .repository import MemcachedConsoleConnectionRepository, MemcachedStats

__all__ = [
    "MemcachedClient",
    "MemcachedConsoleConnectionRepository",
    "MemcachedStats",
    "Server",
    "parse_server",
]
