"""pymemcache behind the repository: placement, pooling, and what a failure means.

``HashClient``'s placement without its silent fallbacks (ARCHITECTURE.md, "Memcached is the
legacy path"); its option names keep their spirit (README, ``memcached.*`` settings).
Every failure is a ``BackendUnavailable`` naming the server and the error's type, never a key.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Any, Final, NamedTuple, TypeVar, cast

from pymemcache.client.base import Client
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
)

from console_auth.domain import BackendUnavailable, InvalidRequest
from console_auth.domain.hosts import DEFAULT_MEMCACHED_PORT, split_address

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_FAILURES: Final = (OSError, MemcacheError, ValueError)
"""What a pymemcache command raises; ValueError: a reply line it could not parse (a desync)."""
_LOST: Final = (OSError, MemcacheUnexpectedCloseError, ValueError)
"""A connection-level failure: the server may be gone."""
_NOT_DELIVERED: Final = (
    ConnectionRefusedError,
    ConnectionResetError,
    BrokenPipeError,
    MemcacheUnexpectedCloseError,
)
"""No live server applied the command (refused, or its process is gone with its data): only
these are retried for writes, since a timeout may hide an applied write."""


class Server(NamedTuple):
    """One memcached server; ``name`` is ``HashClient``'s node name for it."""

    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_server(text: str) -> Server:
    """``host:port``, ``[v6]:port``, or a bare host or IPv6 literal (port 11211)."""
    try:
        return Server(*split_address(text, DEFAULT_MEMCACHED_PORT))
    except ValueError as exc:
        raise InvalidRequest(f"memcached server: {exc}") from None


def _servers(servers: Sequence[Server | str]) -> list[Server]:
    parsed = [s if isinstance(s, Server) else parse_server(s) for s in servers]
    if not parsed:
        raise InvalidRequest("memcached needs at least one server")
    if len({s.name for s in parsed}) != len(parsed):
        raise InvalidRequest("memcached servers must not repeat")
    return parsed


class _Node:
    """One server: its idle connections and until when it fails fast; a ``SimpleQueue``
    is a C-level take and return, cheaper than pymemcache's ``ObjectPool``."""

    def __init__(self, server: Server, make: Callable[[Server], Client], max_idle: int) -> None:
        self.server = server
        self._make = make
        self._idle: SimpleQueue[Client] = SimpleQueue()
        self._max_idle = max_idle
        self.down_until = 0.0

    def take(self) -> Client:
        try:
            return self._idle.get_nowait()
        except Empty:
            return self._make(self.server)

    def give_back(self, client: Client) -> None:
        if self._idle.qsize() < self._max_idle:
            self._idle.put(client)
        else:
            client.close()

    def discard_idle(self) -> None:
        """After one was found dead, so are the others likely: a retry must not take one."""
        with contextlib.suppress(Empty):
            while True:
                self._idle.get_nowait().close()


class MemcachedClient:
    """The commands the repository needs, on one or several servers; safe for threads.
    Connections open on a server's first command, so building one connects to nothing."""

    def __init__(
        self,
        servers: Sequence[Server | str],
        *,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        max_idle: int = 16,
        retry_attempts: int = 1,
        retry_timeout: float = 0.05,
        dead_timeout: float = 2.0,
    ) -> None:
        parsed = _servers(servers)
        if connect_timeout <= 0 or timeout <= 0:
            raise InvalidRequest("memcached timeouts must be above zero")
        if min(retry_attempts, retry_timeout, dead_timeout, max_idle) < 0:
            raise InvalidRequest("memcached retry and pool settings must not be negative")
        self._retry_attempts = retry_attempts
        self._retry_timeout = retry_timeout
        self._dead_timeout = dead_timeout
        make = functools.partial(
            Client,  # a Server is the (host, port) tuple pymemcache takes
            connect_timeout=connect_timeout,
            timeout=timeout,
            no_delay=True,
            default_noreply=False,
        )
        self._nodes = {s.name: _Node(s, make, max_idle) for s in parsed}
        self._only = self._nodes[parsed[0].name] if len(parsed) == 1 else None
        # HashClient's default hasher, over its node names: the same placement.
        self._ring = RendezvousHash(nodes=[s.name for s in parsed])  # type: ignore[no-untyped-call]

    @property
    def servers(self) -> list[Server]:
        return [node.server for node in self._nodes.values()]

    def server_for(self, key: str) -> Server:
        """The server that holds ``key`` (for tests and operators)."""
        return self._node(key).server

    def get(self, key: str) -> bytes | None:
        """The value, or ``None``: every validation's round trip, so its first try is inlined."""
        node = self._only or self._node(key)
        if not node.down_until:
            client = node.take()
            try:
                value: bytes | None = client.get(key)
            except _FAILURES as exc:
                self._failed(node, client, exc, retry=self._retry_attempts > 0)
                return self._run(node, True, Client.get, key, tried=1)  # type: ignore[no-any-return]
            node.give_back(client)
            return value
        return self._run(node, True, Client.get, key)  # type: ignore[no-any-return]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those ``keys`` that exist: one round trip per server."""
        by_node: dict[_Node, list[str]] = {}
        for key in keys:
            by_node.setdefault(self._node(key), []).append(key)
        found: dict[str, bytes] = {}
        for node, batch in by_node.items():
            values = self._run(node, True, Client.get_many, batch)
            found.update(cast(dict[str, bytes], values))  # pymemcache gives the keys back as given
        return found

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The value and its CAS unique, or ``(None, None)``."""
        return self._run(self._node(key), True, Client.gets, key)

    def add(self, key: str, value: bytes, expire: int) -> bool:
        """Store only if absent; ``False`` if the key exists."""
        return self._run(self._node(key), False, Client.add, key, value, expire)

    def cas(self, key: str, value: bytes, unique: bytes, expire: int) -> bool | None:
        """``True`` stored, ``False`` changed since ``gets``, ``None`` gone."""
        return self._run(self._node(key), False, Client.cas, key, value, unique, expire)

    def delete(self, key: str) -> bool:
        """``True`` if the key existed."""
        return self._run(self._node(key), False, Client.delete, key)

    def evictions(self) -> dict[str, int]:
        """memcached's ``evictions`` stat of each server that answers (items dropped before
        they expired, server-wide), by server name: read for metrics at scrape time."""
        counts: dict[str, int] = {}
        for name, node in self._nodes.items():
            if node.down_until and time.monotonic() < node.down_until:
                continue
            client = node.take()
            try:  # not through _run: a failed scrape must not make the server fail fast
                count = client.stats().get(b"evictions")  # type: ignore[no-untyped-call]
            except _FAILURES:
                client.close()  # a server that fails is left out
                continue
            node.give_back(client)
            if isinstance(count, int):
                counts[name] = count
        return counts

    def close(self) -> None:
        """Close every idle connection; a later command opens new ones."""
        for node in self._nodes.values():
            node.discard_idle()

    def _node(self, key: str) -> _Node:
        if self._only is not None:
            return self._only
        name: str = self._ring.get_node(key)  # type: ignore[no-untyped-call]
        return self._nodes[name]

    def _run(
        self, node: _Node, idempotent: bool, command: Callable[..., _T], *args: Any, tried: int = 0
    ) -> _T:
        """Run ``command(client, *args)`` on ``node``, retried and failing fast as the README's
        ``memcached.*`` settings say; ``tried``: tries already made."""
        if node.down_until and time.monotonic() < node.down_until:
            raise BackendUnavailable(
                f"memcached server {node.server.name} is unavailable "
                f"(failing fast for up to {self._dead_timeout:g} s after an error)"
            )
        while True:
            client = node.take()
            try:
                result = command(client, *args)
            except _FAILURES as exc:
                retry = idempotent or isinstance(exc, _NOT_DELIVERED)
                self._failed(node, client, exc, retry=retry and tried < self._retry_attempts)
                tried += 1
            else:
                node.down_until = 0.0
                node.give_back(client)
                return result

    def _failed(self, node: _Node, client: Client, exc: Exception, *, retry: bool) -> None:
        """After a failed try: wait to try again, or raise its ``BackendUnavailable``; a lost
        connection not retried makes the server fail fast for a while."""
        if not isinstance(exc, _LOST):
            raise _answered_badly(node, client, exc) from exc
        client.close()
        node.discard_idle()
        if retry:
            time.sleep(self._retry_timeout)
            return
        if self._dead_timeout:
            node.down_until = time.monotonic() + self._dead_timeout
        name, error = node.server.name, type(exc).__name__
        logger.warning("memcached server %s failed: %s", name, error)
        raise BackendUnavailable(f"memcached server {name} is unavailable ({error})") from exc


def _answered_badly(node: _Node, client: Client, failed: Exception) -> BackendUnavailable:
    """A server that answered with an error (the connection stays good) or a reply nobody
    expects. Its own words (``object too large for cache``) name no key; pymemcache's
    client-side messages may quote one, so those are reduced to their type."""
    if not isinstance(failed, MemcacheServerError | MemcacheClientError):
        client.close()
        return BackendUnavailable(f"memcached server {node.server.name} sent an unexpected reply")
    node.give_back(client)
    said = failed.args[0] if isinstance(failed, MemcacheServerError) and failed.args else ""
    text = said.decode("ascii", "replace") if isinstance(said, bytes) else str(said)
    return BackendUnavailable(
        f"memcached server {node.server.name} refused a command: "
        f"{text.strip()[:100] or type(failed).__name__}"
    )
