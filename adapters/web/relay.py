"""One console session: bytes between a WebSocket and a console's TCP socket.

Two pumps in a ``TaskGroup``, one per direction, plus the session's bounds
(idle, ``session_max``, a stop request from shutdown, and any watcher the
caller adds, such as a serial lease's heartbeat). The first of them to end
ends the session: it raises ``SessionEnded`` with the outcome, the group
cancels the rest. Memory stays bounded whatever the peers do: a read takes at
most ``CHUNK`` bytes, ``await writer.drain()`` and aiohttp's ``send_bytes``
wait while the other side is not reading, and the stream reader and
aiohttp's WebSocket reader pause their sockets when their buffers fill.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

logger = logging.getLogger(__name__)

CHUNK: Final = 64 << 10
"""Bytes per read from the console; also its stream reader's buffer limit."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds a client gets to answer the close frame."""


class Outcome(StrEnum):
    """How a session ended; stable values for the log line and metrics."""

    CLIENT_CLOSED = "client_closed"
    TARGET_CLOSED = "target_closed"
    IDLE = "idle_timeout"
    SESSION_MAX = "session_max"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    REVOKED = "revoked"
    ERROR = "error"


_CLOSE: Final = {
    Outcome.CLIENT_CLOSED: (WSCloseCode.OK, "closed"),
    Outcome.TARGET_CLOSED: (WSCloseCode.OK, "the console closed the connection"),
    Outcome.IDLE: (WSCloseCode.OK, "idle too long"),
    Outcome.SESSION_MAX: (WSCloseCode.OK, "session time limit reached"),
    Outcome.SHUTDOWN: (WSCloseCode.GOING_AWAY, "the console proxy is shutting down"),
    Outcome.LEASE_LOST: (WSCloseCode.OK, "the serial port lease was lost"),
    Outcome.REVOKED: (WSCloseCode.POLICY_VIOLATION, "console access was revoked"),
    Outcome.ERROR: (WSCloseCode.INTERNAL_ERROR, "console proxy error"),
}
"""What the client is told, per outcome: code and a reason under 123 bytes."""


class SessionEnded(Exception):
    """Raised by whichever part of a session ends first, with why."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


Watcher = Callable[[], Coroutine[Any, Any, None]]
"""Runs beside the pumps for the whole session; raises ``SessionEnded`` to end it."""


@dataclass(frozen=True, kw_only=True)
class RelayLimits:
    idle_timeout: float | None = None
    session_max: float | None = None


@dataclass(kw_only=True, eq=False)  # a live session is itself, not its fields
class Relay:
    """A session's state: byte counts, last activity, and its stop switch."""

    ws: web.WebSocketResponse
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    limits: RelayLimits
    client_transport: asyncio.WriteTransport | None = None
    """Aborted if the client will not take the close frame."""
    bytes_in: int = 0
    """From the client to the console."""
    bytes_out: int = 0
    """From the console to the client."""
    _last: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_outcome: Outcome = Outcome.SHUTDOWN

    def stop(self, outcome: Outcome = Outcome.SHUTDOWN) -> None:
        """Ask the session to end, closing with ``outcome``; the first ask wins."""
        if not self._stop.is_set():
            self._stop_outcome = outcome
            self._stop.set()

    async def run(self, watchers: Sequence[Watcher] = ()) -> Outcome:
        """Relay until one side ends or a bound is hit; close both sides."""
        self._last = asyncio.get_running_loop().time()
        outcome = Outcome.ERROR
        try:
            async with asyncio.TaskGroup() as group:
                for part in (self._to_console, self._to_client, self._bounds, *watchers):
                    group.create_task(part())
        except* SessionEnded as ended:
            outcome = _first(ended).outcome
        except* Exception:
            logger.exception("console session failed")
        finally:
            self.writer.close()
            await self._close_client(outcome)
        return outcome

    async def _to_console(self) -> None:
        async for message in self.ws:
            if message.type is WSMsgType.BINARY:
                data: bytes = message.data
            elif message.type is WSMsgType.TEXT:  # as websockify: the text's bytes
                data = message.data.encode()
            else:  # ERROR: aiohttp has closed the socket (e.g. a message too big)
                break
            try:
                self.writer.write(data)
                await self.writer.drain()
            except ConnectionError:
                raise SessionEnded(Outcome.TARGET_CLOSED) from None
            self.bytes_in += len(data)
            self._touch()
        raise SessionEnded(Outcome.CLIENT_CLOSED)

    async def _to_client(self) -> None:
        while True:
            try:
                data = await self.reader.read(CHUNK)
            except ConnectionError:
                data = b""
            if not data:
                raise SessionEnded(Outcome.TARGET_CLOSED)
            try:
                await self.ws.send_bytes(data)  # waits while the client's buffer is full
            except ConnectionError:
                raise SessionEnded(Outcome.CLIENT_CLOSED) from None
            self.bytes_out += len(data)
            self._touch()

    async def _close_client(self, outcome: Outcome) -> None:
        """Say why, in the close frame; a client that takes no close frame
        (it stopped reading) is cut off rather than waited for."""
        code, message = _CLOSE[outcome]
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=message.encode())
        except TimeoutError:
            pass
        transport = self.client_transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    async def _bounds(self) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        deadline = math.inf if limits.session_max is None else loop.time() + limits.session_max
        idle = math.inf if limits.idle_timeout is None else limits.idle_timeout
        while True:
            wait = min(deadline, self._last + idle) - loop.time()
            try:
                async with asyncio.timeout(None if wait == math.inf else max(0.0, wait)):
                    await self._stop.wait()
            except TimeoutError:
                now = loop.time()
                if now >= deadline:
                    raise SessionEnded(Outcome.SESSION_MAX) from None
                if now >= self._last + idle:
                    raise SessionEnded(Outcome.IDLE) from None
            else:
                raise SessionEnded(self._stop_outcome)

    def _touch(self) -> None:
        self._last = asyncio.get_running_loop().time()


def _first(group: BaseExceptionGroup[SessionEnded]) -> SessionEnded:
    """The first part to end raised first; the rest, if any, were cancelled."""
    found = group.exceptions[0]
    return found if isinstance(found, SessionEnded) else _first(found)
