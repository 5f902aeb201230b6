"""Just enough RFB (RFC 6143) to refuse a VNC client in words it shows.

A browser hides the HTTP status of a refused WebSocket upgrade: noVNC only
says "code 1006" (noVNC #1947). With ``proxy.rfb_refusals`` the proxy upgrades
such a request instead and plays the server side of the RFB handshake up to
the security step: its version, the client's version (a bounded wait), then
no security type and a reason string (RFC 6143 7.1.2), and it closes.
noVNC's ``vnc.html`` shows the reason ("New connection has been rejected
with reason: ...").
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

SERVER_VERSION: Final = b"RFB 003.008\n"
HANDSHAKE_TIMEOUT = 5.0
"""Seconds the client gets to send its version; a module value tests may lower."""
_VERSION: Final = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_VERSION_LENGTH: Final = 12
_MAX_REASON: Final = 1024


def security_failure(client_version: bytes, reason: str) -> bytes | None:
    """The server's refusal after ``client_version``; ``None`` if that is no RFB version.

    RFB 3.7 and later list the security types (none: one zero byte); 3.3 has
    the server name one (zero: a U32). The reason follows as a U32 length and
    ASCII, since noVNC reads it byte per character.
    """
    found = _VERSION.fullmatch(client_version)
    if found is None:
        return None
    major, minor = int(found[1]), int(found[2])
    text = reason.encode("ascii", "replace")[:_MAX_REASON]
    no_type = b"\x00" if (major, minor) >= (3, 7) else b"\x00\x00\x00\x00"
    return no_type + struct.pack("!I", len(text)) + text


async def refuse(ws: web.WebSocketResponse, reason: str, code: str) -> bool:
    """On a prepared ``ws``: refuse in RFB with ``reason``, then close with ``code``
    (the refusal's stable reason) in the close frame. ``False`` when the client
    did not answer as an RFB client in time, and so was closed without words."""
    try:
        await ws.send_bytes(SERVER_VERSION)
        answer = await _read_version(ws)
        refusal = None if answer is None else security_failure(answer, reason)
        if refusal is not None:
            await ws.send_bytes(refusal)
    except ConnectionError:
        return False
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=code.encode())
    return refusal is not None


async def _read_version(ws: web.WebSocketResponse) -> bytes | None:
    """The client's 12 bytes, however the messages cut them; ``None`` if it
    closed, sent something else, or took longer than ``HANDSHAKE_TIMEOUT``."""
    received = b""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            while len(received) < _VERSION_LENGTH:
                message = await ws.receive()
                if message.type is WSMsgType.BINARY:
                    received += message.data
                elif message.type is WSMsgType.TEXT:
                    received += message.data.encode()
                else:  # closing, closed or an error
                    return None
    except TimeoutError:
        return None
    return received[:_VERSION_LENGTH]
