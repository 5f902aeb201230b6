"""What a single store gives ``purge_in_batches``: ``delete_expired`` keeps
its limit, so each call is one short transaction. Composites purge through
their parts' ``purge_expired``, so this runs over the single stores only."""

from __future__ import annotations

from datetime import timedelta

from console_auth.domain import ConsoleConnection
from tests.backends import SingleStore
from tests.builders import a_connection
from tests.fakes import T0


def test_delete_expired_keeps_its_limit(single_store: SingleStore) -> None:
    expired = [a_connection(expires_at=T0 - timedelta(seconds=i)) for i in range(1, 6)]
    _add(single_store, expired)
    assert single_store.delete_expired(T0, None, 2) == 2
    assert single_store.delete_expired(T0, None, 2) == 2
    assert single_store.delete_expired(T0, None, 2) == 1
    assert single_store.delete_expired(T0, None, 2) == 0


def test_delete_expired_of_one_host_keeps_its_limit(single_store: SingleStore) -> None:
    mine = [a_connection(host="compute-1", expires_at=T0 - timedelta(seconds=i)) for i in (1, 2)]
    _add(single_store, [*mine, a_connection(host="compute-2", expires_at=T0)])
    assert single_store.delete_expired(T0, "compute-1", 1) == 1
    assert single_store.delete_expired(T0, "compute-1", 5) == 1
    assert single_store.delete_expired(T0, "compute-1", 5) == 0


def _add(store: SingleStore, connections: list[ConsoleConnection]) -> None:
    for connection in connections:
        store.add(connection)
