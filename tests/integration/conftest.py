"""Fixtures shared by the memcached integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from console_auth.adapters.memcached import MemcachedClient
from tests.backends.memcached import MemcachedProcess, client_for, session_servers


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    found, process = session_servers()
    try:
        yield found
    finally:
        if process is not None:
            process.stop()


@pytest.fixture
def client(servers: list[str]) -> Iterator[MemcachedClient]:
    opened = client_for(servers)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def processes() -> Iterator[list[MemcachedProcess]]:
    """Servers a test may kill: each test gets its own."""
    started: list[MemcachedProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()
