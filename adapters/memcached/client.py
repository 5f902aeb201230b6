"""pymemcache behind the repository: placement, pooling, and what a failure means.

``HashClient``'s placement without its silent fallbacks (ARCHITECTURE.md, "Memcached is the
legacy path"); its option names keep their spirit (README, ``memcached.*`` settings).
Every failure is a ``BackendUnavailable`` naming the server and the error's type, never a key.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Final, NamedTuple, TypeVar, cast

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


_NOT_DELIVERED: Final = (
    ConnectionRefusedError,
    ConnectionResetError,
    BrokenPipeError,
    MemcacheUnexpectedCloseError,
)
"""Errors after which no live server applied the command: the connection was
refused, or it belonged to a server process that is gone (with its data).
Only these are retried for writes; a timeout may hide an applied write."""


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


def _answered_badly(server: Server, failed: Exception) -> BackendUnavailable:
    """A server that answered, with an error or a reply nobody expects."""
    if isinstance(failed, MemcacheServerError | MemcacheClientError):
        return BackendUnavailable(
            f"memcached server {server.name} refused a command: {_server_text(failed)}"
        )
    return BackendUnavailable(f"memcached server {server.name} sent an unexpected reply")


class _Node:
    """One server: its idle connections and whether it is failing fast; a ``SimpleQueue``
    is a C-level take and return, cheaper than pymemcache's ``ObjectPool``."""

    def __init__(self, server: Server, make: Callable[[Server], Client], max_idle: int) -> None:
        self.server = server
        self._make = make
        self._idle: SimpleQueue[Client] = SimpleQueue()
        self._max_idle = max_idle
        self._open: weakref.WeakSet[Client] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.down_until = 0.0

    def take(self) -> Client:
        try:
            return self._idle.get_nowait()
        except Empty:
            client = self._make(self.server)
            with self._lock:
                self._open.add(client)
            return client

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

    def close(self) -> None:
        with self._lock:
            clients = list(self._open)
        for client in clients:
            client.close()
        self.discard_idle()


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

        def make(server: Server) -> Client:
            return Client(
                (server.host, server.port),
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
        """The hot path (every validation), inlined: one pooled connection,
        one ``get``; a failure goes on through ``_run`` and its rules."""
        node = self._only or self._node(key)
        value: bytes | None
        if node.down_until:
            value = self._run(key, True, lambda c: c.get(key))
            return value
        client = node.take()
        try:
            value = client.get(key)
        except _FAILURES as exc:
            self._drop(node, client, exc)
            value = self._run(key, True, lambda c: c.get(key), failed=exc)
            return value
        node.give_back(client)
        return value

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those ``keys`` that exist: one round trip per server."""
        by_node: dict[str, list[str]] = {}
        for key in keys:
            by_node.setdefault(self._node(key).server.name, []).append(key)
        found: dict[str, bytes] = {}
        for batch in by_node.values():
            values = self._run(batch[0], True, lambda c: c.get_many(batch))  # noqa: B023
            found.update(cast(dict[str, bytes], values))  # pymemcache gives the keys back as given
        return found

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The value and its CAS unique, or ``(None, None)``."""
        value, unique = self._run(key, True, lambda c: c.gets(key))
        return value, unique

    def add(self, key: str, value: bytes, expire: int) -> bool:
        """Store only if absent; ``False`` if the key exists."""
        return bool(self._run(key, False, lambda c: c.add(key, value, expire, noreply=False)))

    def set(self, key: str, value: bytes, expire: int) -> None:
        """Store, replacing whatever is there."""
        self._run(key, False, lambda c: c.set(key, value, expire, noreply=False))

    def cas(self, key: str, value: bytes, unique: bytes, expire: int) -> bool | None:
        """``True`` stored, ``False`` changed since ``gets``, ``None`` gone."""
        stored: bool | None = self._run(
            key, False, lambda c: c.cas(key, value, unique, expire, noreply=False)
        )
        return stored

    def delete(self, key: str) -> bool:
        """``True`` if the key existed."""
        return bool(self._run(key, False, lambda c: c.delete(key, noreply=False)))

    def evictions(self) -> dict[str, int]:
        """memcached's ``evictions`` stat of each server that answers (items
        dropped before they expired, server-wide), by server name: read for
        metrics at scrape time, so a server that fails is left out."""
        counts: dict[str, int] = {}
        for name, node in self._nodes.items():
            if node.down_until and time.monotonic() < node.down_until:
                continue
            client = node.take()
            try:
                stats = client.stats()  # type: ignore[no-untyped-call]
            except _FAILURES as exc:
                self._drop(node, client, exc)
                continue
            node.give_back(client)
            count = stats.get(b"evictions", stats.get("evictions"))
            if isinstance(count, int):
                counts[name] = count
        return counts

    def close(self) -> None:
        """Close every connection; a later command opens new ones."""
        for node in self._nodes.values():
            node.close()

    def _node(self, key: str) -> _Node:
        if self._only is not None:
            return self._only
        name: str = self._ring.get_node(key)  # type: ignore[no-untyped-call]
        return self._nodes[name]

    def _run(
        self,
        key: str,
        idempotent: bool,
        command: Callable[[Client], _T],
        failed: Exception | None = None,
    ) -> _T:
        """Run ``command`` on the key's server, retried and failing fast as the README's
        ``memcached.*`` settings say; ``failed``: the first attempt already failed."""
        node = self._node(key)
        if failed is None:
            self._fail_fast(node)
        attempt = 0
        while True:
            if failed is None:
                client = node.take()
                try:
                    result = command(client)
                except _FAILURES as exc:
                    self._drop(node, client, exc)
                    failed = exc
                else:
                    node.down_until = 0.0
                    node.give_back(client)
                    return result
            if not _lost_connection(failed):
                raise _answered_badly(node.server, failed) from failed
            retry = idempotent or isinstance(failed, _NOT_DELIVERED)
            if not retry or attempt >= self._retry_attempts:
                raise self._down(node, failed) from failed
            attempt += 1
            failed = None
            time.sleep(self._retry_timeout)

    def _fail_fast(self, node: _Node) -> None:
        if node.down_until and time.monotonic() < node.down_until:
            raise BackendUnavailable(
                f"memcached server {node.server.name} is unavailable "
                f"(failing fast for up to {self._dead_timeout:g} s after an error)"
            )

    def _down(self, node: _Node, failed: Exception) -> BackendUnavailable:
        """A server that lost the connection: failing fast for a while."""
        if self._dead_timeout:
            node.down_until = time.monotonic() + self._dead_timeout
        logger.warning("memcached server %s failed: %s", node.server.name, type(failed).__name__)
        return BackendUnavailable(
            f"memcached server {node.server.name} is unavailable ({type(failed).__name__})"
        )

    @staticmethod
    def _drop(node: _Node, client: Client, exc: Exception) -> None:
        """After an error: a connection whose server answered (with an error)
        is still good; any other is closed and forgotten."""
        if _lost_connection(exc):
            client.close()
            node.discard_idle()
        elif isinstance(exc, MemcacheServerError | MemcacheClientError):
            node.give_back(client)
        else:
            client.close()


_FAILURES: Final = (OSError, MemcacheError, ValueError)
"""What a pymemcache command raises; ValueError: a reply line it could not
parse (a desync)."""


def _lost_connection(exc: Exception) -> bool:
    """A connection-level failure: the server may be gone."""
    return isinstance(exc, OSError | MemcacheUnexpectedCloseError | ValueError)


def _server_text(exc: MemcacheError) -> str:
    """The server's own words (``object too large for cache``), which name
    no key; pymemcache's client-side messages may quote one, so those are
    reduced to their type."""
    if isinstance(exc, MemcacheServerError) and exc.args:
        said = exc.args[0]
        text = said.decode("ascii", "replace") if isinstance(said, bytes) else str(said)
        return text.strip()[:100] or type(exc).__name__
    return type(exc).__name__
