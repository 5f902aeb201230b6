"""memcached: one server for the session, a fresh key prefix per repository.

The server is the one named by ``CONSOLE_AUTH_TEST_MEMCACHED``
(``host:port[,host:port...]``) when set; otherwise ``memcached`` from PATH
is started on a free loopback port for the session. With neither, the tests
fail when ``CONSOLE_AUTH_TEST_REQUIRE_SERVERS=1`` (CI sets it) and are
skipped otherwise, so a laptop without memcached still runs the rest.

A fresh repository is an empty one because its key prefix is new: cheaper
than ``flush_all`` and safe on a server that others share. Items of earlier
prefixes stay until their TTL, so a server we start gets ample memory: an
eviction mid-test would look like a bug.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, NoReturn

import port_for
import pytest
from mirakuru import TCPExecutor

from console_auth.adapters.memcached import (
    MemcachedClient,
    MemcachedConsoleConnectionRepository,
    parse_server,
)
from console_auth.application import ConsoleConnectionRepository

SERVERS_ENV: Final = "CONSOLE_AUTH_TEST_MEMCACHED"
REQUIRE_ENV: Final = "CONSOLE_AUTH_TEST_REQUIRE_SERVERS"
TEST_RETENTION: Final = 3600
"""Longer than any test: the contract keeps expired connections until purged."""


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def memcached_binary() -> str:
    binary = shutil.which("memcached")
    if binary is None:
        unavailable(
            "memcached is not on PATH: install it (apt-get install memcached) or set "
            f"{SERVERS_ENV}=host:port"
        )
    return binary


class MemcachedProcess:
    """A memcached we run on 127.0.0.1; ``stop`` and ``start`` keep its port,
    so a client sees the same server go away and come back."""

    def __init__(self, *, memory_mb: int = 256, port: int | None = None) -> None:
        self.port = port if port is not None else port_for.select_random()
        command = [memcached_binary(), "-l", "127.0.0.1", "-p", str(self.port)]
        command += ["-U", "0", "-m", str(memory_mb), "-t", "2"]
        if os.geteuid() == 0:  # memcached refuses to run as root without -u
            command += ["-u", "nobody"]
        self._executor = TCPExecutor(command, host="127.0.0.1", port=self.port, timeout=20)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._executor.running()

    def start(self) -> MemcachedProcess:
        self._executor.start()
        return self

    def stop(self) -> None:
        if self._executor.running():
            self._executor.stop()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self._executor.running():
            self._executor.kill()

    def pause(self) -> None:
        """SIGSTOP: a server that answers nothing (the kernel still accepts
        connections). Returns once every thread has stopped: the signal is
        asynchronous, and a worker thread on another core could otherwise
        still answer the next request."""
        pid = self._pid()
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not all(
            Path(f"/proc/{pid}/task/{task}/stat").read_text().rpartition(")")[2].split()[0]
            in ("T", "t")
            for task in os.listdir(f"/proc/{pid}/task")
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("memcached did not stop")
            time.sleep(0.001)

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    def _pid(self) -> int:
        process = self._executor.process
        assert process is not None, "memcached is not running"
        return process.pid


def client_for(servers: list[str], **options: float) -> MemcachedClient:
    """A client with test-sized timeouts; ``options`` override them."""
    settings: dict[str, float] = {"connect_timeout": 2.0, "timeout": 5.0, **options}
    return MemcachedClient(
        [parse_server(s) for s in servers],
        connect_timeout=settings.pop("connect_timeout"),
        timeout=settings.pop("timeout"),
        retry_attempts=int(settings.pop("retry_attempts", 1)),
        retry_timeout=settings.pop("retry_timeout", 0.05),
        dead_timeout=settings.pop("dead_timeout", 0.0),
    )


def fresh_prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


class MemcachedBackend:
    name = "memcached"

    def __init__(self, servers: list[str], process: MemcachedProcess | None) -> None:
        self.servers = servers
        self._process = process
        self.client = client_for(servers)

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        yield MemcachedConsoleConnectionRepository(
            self.client, key_prefix=fresh_prefix(), expired_retention=TEST_RETENTION
        )

    def close(self) -> None:
        self.client.close()
        if self._process is not None:
            self._process.stop()


def session_servers() -> tuple[list[str], MemcachedProcess | None]:
    """The servers named by the environment, or one we start."""
    named = os.environ.get(SERVERS_ENV, "").strip()
    if named:
        return [s.strip() for s in named.split(",") if s.strip()], None
    process = MemcachedProcess(memory_mb=512).start()
    return [process.address], process


def open_backend(name: str, workdir: str) -> MemcachedBackend:
    servers, process = session_servers()
    return MemcachedBackend(servers, process)
