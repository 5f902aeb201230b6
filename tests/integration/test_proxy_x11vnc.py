"""The proxy in front of a real VNC server: Debian's x11vnc on Xvfb.

A ``websockets`` client goes through the proxy and speaks RFB 3.8 with
x11vnc up to its ServerInit, which carries the X screen's size. x11vnc and
Xvfb missing is a failure, never a skip: CI installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.rfb_target import RFB_VERSION
from tests.integration.test_proxy import Consoles, client, console_uri, proxy

WIDTH, HEIGHT = 320, 240


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (apt-get install x11vnc xvfb)"
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def x11vnc(*xvfb_args: str) -> Iterator[int]:
    """Xvfb on a display it picks itself, x11vnc on it; yields the RFB port."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        [_tool("Xvfb"), "-displayfd", str(write_fd), "-screen", "0", f"{WIDTH}x{HEIGHT}x24",
         "-nolisten", "tcp", *xvfb_args],
        pass_fds=[write_fd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as displayfd:
            display = displayfd.readline().decode().strip()
        assert display.isdigit(), "Xvfb did not start"
        port = _free_port()
        # -noshm: no MIT-SHM segments (root in a container may not have them)
        vnc = subprocess.Popen(
            [_tool("x11vnc"), "-display", f":{display}", "-rfbport", str(port), "-localhost",
             "-nopw", "-forever", "-shared", "-noshm", "-quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_listening(port, vnc)
            yield port
        finally:
            _stop(vnc)
    finally:
        _stop(xvfb)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "x11vnc exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise AssertionError("x11vnc did not listen within 30 s")


class _Frames:
    """Exact reads over WebSocket messages, which cut RFB anywhere."""

    def __init__(self, ws: object) -> None:
        self._ws = ws
        self._buffer = b""

    async def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            message = await asyncio.wait_for(self._ws.recv(), 10)  # type: ignore[attr-defined]
            self._buffer += message
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


@pytest.mark.asyncio
async def test_a_client_reaches_x11vnc_through_the_proxy() -> None:
    consoles = Consoles()
    with x11vnc() as vnc_port:
        async with (
            proxy(consoles) as port,
            client(console_uri(port, consoles.novnc(vnc_port)), port) as ws,
        ):
            rfb = _Frames(ws)
            assert await rfb.read(12) == RFB_VERSION
            await ws.send(RFB_VERSION)
            (count,) = await rfb.read(1)
            assert 1 in await rfb.read(count)  # security type None (-nopw)
            await ws.send(b"\x01")
            assert await rfb.read(4) == b"\x00\x00\x00\x00"  # SecurityResult: OK
            await ws.send(b"\x01")  # ClientInit: shared
            width, height = struct.unpack("!HH", await rfb.read(4))
    assert (width, height) == (WIDTH, HEIGHT)
