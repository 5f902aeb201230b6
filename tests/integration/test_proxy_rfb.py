"""In-band RFB refusal (``proxy.rfb_refusals``): a ``websockets`` client that
speaks the client side of RFB gets the upgrade, the server's version, and
then no security type and the refusal's sentence (RFC 6143 7.1.2), as noVNC
would; nothing reaches the console and no token is shown or logged."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from dataclasses import replace

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin

from console_auth.adapters.settings import load_settings
from console_auth.adapters.web import rfb
from console_auth.adapters.web.proxy import ProxyConfig
from console_auth.domain import ConsoleType, InvalidRequest
from tests.integration.rfb_target import RFB_VERSION, target, unanswered_port
from tests.integration.test_proxy import (
    CONFIG,
    INSTANCE,
    Consoles,
    client,
    closed,
    console_uri,
    proxy,
    refusal,
    refused_target,
    session_lines,
)

RFB_CONFIG = replace(CONFIG, console_types=frozenset({ConsoleType.NOVNC}), rfb_refusals=True)

IN_BAND = {
    "missing token": ("missing_token", "the request carries no console token"),
    "malformed token": ("malformed_token", "the console token is malformed"),
    "unknown token": ("unknown_token", "the console token is unknown or revoked"),
    "expired token": ("expired_token", "the console link has expired; ask for a new console link"),
    "wrong instance": (
        "wrong_instance",
        "the console token was not issued for this instance",
    ),
    "wrong console kind": ("wrong_console_kind", "this proxy does not serve serial consoles"),
    "console unreachable": ("console_unreachable", "the console cannot be reached"),
}


class Reader:
    """Exact reads over WebSocket messages, which cut RFB anywhere."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._buffer = b""

    async def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            message = await asyncio.wait_for(self._ws.recv(), 5)
            assert isinstance(message, bytes)
            self._buffer += message
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    @property
    def rest(self) -> bytes:
        return self._buffer


async def rfb_refusal(ws: ClientConnection, version: bytes = RFB_VERSION) -> str:
    """The client side up to the security step; the server's reason."""
    rfb_ = Reader(ws)
    assert await rfb_.read(12) == rfb.SERVER_VERSION
    await ws.send(version)
    no_type = b"\x00" if version >= b"RFB 003.007\n" else b"\x00\x00\x00\x00"
    assert await rfb_.read(len(no_type)) == no_type
    (length,) = struct.unpack("!I", await rfb_.read(4))
    reason = (await rfb_.read(length)).decode("ascii")
    assert rfb_.rest == b"", "the proxy sent more than the refusal"
    return reason


@pytest.mark.asyncio
@pytest.mark.parametrize("case", IN_BAND)
async def test_a_refused_novnc_client_reads_the_reason_in_rfb(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles, RFB_CONFIG) as port:
        issued = consoles.novnc(console.port)
        uri, token = refused_target(consoles, case, port, console.port, issued)
        with unanswered_port() as closed_port:
            pass  # nothing listens there now
        if case == "console unreachable":
            uri = console_uri(port, consoles.novnc(closed_port))
        async with client(uri, port) as ws:
            reason = await rfb_refusal(ws)
            ended = await closed(ws, within=5)
    code, words = IN_BAND[case]
    assert reason.startswith(words)
    assert token not in reason
    assert ended.rcvd is not None
    assert (ended.rcvd.code, ended.rcvd.reason) == (1008, code)
    assert console.accepted == 0
    (line,) = session_lines(caplog)
    assert f"outcome=refused:{code}" in line
    assert token not in caplog.text
    if case == "console unreachable":
        assert f"{closed_port}" not in reason


@pytest.mark.asyncio
async def test_an_rfb_3_3_client_gets_the_3_3_refusal() -> None:
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles, RFB_CONFIG) as port:
        consoles.service.revoke_instance(INSTANCE)
        async with client(console_uri(port, consoles.novnc(console.port)[::-1]), port) as ws:
            reason = await rfb_refusal(ws, b"RFB 003.003\n")
    assert reason.startswith("the console token is unknown or revoked")


@pytest.mark.asyncio
async def test_a_client_that_never_answers_is_closed_without_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rfb, "HANDSHAKE_TIMEOUT", 0.3)
    consoles = Consoles()
    async with proxy(consoles, RFB_CONFIG) as port:
        uri = console_uri(port, "A" * 43)
        async with client(uri, port) as ws:
            assert await Reader(ws).read(12) == rfb.SERVER_VERSION
            ended = await closed(ws, within=2)  # no security bytes before the close
    assert ended.rcvd is not None
    assert (ended.rcvd.code, ended.rcvd.reason) == (1008, "unknown_token")


@pytest.mark.asyncio
async def test_a_bad_origin_stays_an_http_refusal() -> None:
    """A page from a foreign origin never gets an upgraded socket."""
    consoles = Consoles()
    async with target("rfb") as console, proxy(consoles, RFB_CONFIG) as port:
        uri = console_uri(port, consoles.novnc(console.port))
        status, body = await refusal(uri, port, origin=Origin("http://evil.example"))
    assert (status, body.split(":")[0]) == (403, "bad_origin")


@pytest.mark.asyncio
async def test_a_good_token_still_relays_with_rfb_refusals() -> None:
    consoles = Consoles()
    async with (
        target("rfb") as console,
        proxy(consoles, RFB_CONFIG) as port,
        client(console_uri(port, consoles.novnc(console.port)), port) as ws,
    ):
        assert await ws.recv() == RFB_VERSION  # the console's, not the proxy's
        await ws.send(b"RFB 003.008\n")
        assert await ws.recv() == b"RFB 003.008\n"
    assert console.accepted == 1


def test_the_refusal_bytes() -> None:
    assert rfb.security_failure(b"RFB 003.008\n", "no") == b"\x00\x00\x00\x00\x02no"
    assert rfb.security_failure(b"RFB 003.003\n", "no") == b"\x00" * 4 + b"\x00\x00\x00\x02no"
    assert rfb.security_failure(b"RFB 003.008\n", "caf\u00e9") == b"\x00\x00\x00\x00\x04caf?"
    assert rfb.security_failure(b"GET / HTTP/1.1", "no") is None


def test_rfb_refusals_need_a_novnc_only_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CONSOLE_AUTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__RFB_REFUSALS", "true")
    settings = load_settings()
    with pytest.raises(InvalidRequest, match="console_types to be novnc only"):
        ProxyConfig.from_settings(settings.proxy, serial_lease_ttl=60)
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__CONSOLE_TYPES", "novnc")
    config = ProxyConfig.from_settings(load_settings().proxy, serial_lease_ttl=60)
    assert config.rfb_refusals
    assert (
        ProxyConfig.from_settings(
            settings.proxy.model_copy(update={"rfb_refusals": False}), serial_lease_ttl=60
        ).rfb_refusals
        is False
    )
