"""The reference repository: a dict under a lock.

Every other backend must behave exactly like this one (the contract suite
checks it); it also serves single-process deployments and tests.
"""

from __future__ import annotations

import threading
from datetime import datetime
from uuid import UUID

from console_auth.domain import ConsoleConnection, InvalidRequest


class InMemoryConsoleConnectionRepository:
    """Thread-safe; lost when the process ends."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ConsoleConnection] = {}
        self._lock = threading.Lock()

    def add(self, connection: ConsoleConnection) -> None:
        with self._lock:
            if connection.token_hash in self._by_hash:
                raise InvalidRequest("a connection with this token hash is already stored")
            self._by_hash[connection.token_hash] = connection

    def get_by_hash(self, token_hash: str) -> ConsoleConnection | None:
        return self._by_hash.get(token_hash)

    def delete_by_instance(self, instance_uuid: UUID) -> int:
        with self._lock:
            doomed = [h for h, c in self._by_hash.items() if c.instance_uuid == instance_uuid]
            for token_hash in doomed:
                del self._by_hash[token_hash]
        return len(doomed)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        with self._lock:
            doomed = [
                h
                for h, c in self._by_hash.items()
                if c.expires_at <= now and (host is None or c.host == host)
            ][:limit]
            for token_hash in doomed:
                del self._by_hash[token_hash]
        return len(doomed)
