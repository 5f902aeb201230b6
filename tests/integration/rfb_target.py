"""Consoles for the proxy tests, on loopback: TCP servers that count who
reached them, and a listener that never answers a connect."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Final, Literal

RFB_VERSION: Final = b"RFB 003.008\n"

Mode = Literal["echo", "rfb", "flood", "greet_and_close"]


class Target:
    """A console: ``echo`` sends back what it gets; ``rfb`` greets as an RFB
    3.8 server, then echoes; ``flood`` writes as fast as it is let;
    ``greet_and_close`` greets, then hangs up. With ``tls`` it speaks TLS,
    and ``accepted`` counts only clients whose handshake succeeded."""

    def __init__(self, mode: Mode = "echo", *, tls: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.tls = tls
        self.accepted = 0
        self.flooded = 0
        """Bytes ``flood`` got into its socket so far."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Target:
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            0,
            ssl=self.tls,
            ssl_handshake_timeout=5 if self.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            if self.mode in ("rfb", "greet_and_close"):
                writer.write(RFB_VERSION)
                await writer.drain()
            if self.mode == "greet_and_close":
                return
            if self.mode == "flood":
                # small kernel buffer: the stall shows sooner, the proxy's part is clearer
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10
                )
                chunk = b"x" * (64 << 10)
                while True:
                    writer.write(chunk)
                    await writer.drain()
                    self.flooded += len(chunk)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):  # OSError: SSLError too
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def target(mode: Mode = "echo") -> AsyncIterator[Target]:
    async with Target(mode) as started:
        yield started


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose connects hang: a listener that accepts nothing,
    its backlog full, so the kernel drops further SYNs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
