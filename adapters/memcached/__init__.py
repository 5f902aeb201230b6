"""The memcached adapter: the legacy consoleauth path, for one deprecation cycle.

Tokens only: serial-port leases need the database backend, since memcached
may evict a lease and so hand a port to two clients (Nova bug 1425640).

Needs the ``memcached`` extra (pymemcache). Importing it connects to
nothing; a ``MemcachedClient`` opens connections on its first command.
"""

from .client import MemcachedClient, Server, parse_server
from .repository import MemcachedConsoleConnectionRepository, MemcachedStats

__all__ = [
    "MemcachedClient",
    "MemcachedConsoleConnectionRepository",
    "MemcachedStats",
    "Server",
    "parse_server",
]
