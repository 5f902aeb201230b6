"""The proxy reaching consoles behind an HTTP CONNECT gateway
(``internal_access_path``) and over TLS (``use_tls``, ``tls_port``), on
loopback: a ``websockets`` client, the proxy in-process, and real gateways
and TLS consoles with certificates made in the test."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import ConnectionClosed

from console_auth.adapters import cli
from console_auth.adapters.settings import load_settings
from console_auth.adapters.web.dial import MAX_CONNECT_ANSWER, TargetTLS
from console_auth.adapters.web.proxy import ProxyConfig, create_app
from console_auth.domain import ConsoleType, InvalidRequest
from tests.integration.dial_targets import (
    INJECTED,
    Authority,
    GatewayMode,
    Issued,
    gateway,
    server_context,
    silent_console,
)
from tests.integration.rfb_target import RFB_VERSION, Target, target
from tests.integration.test_proxy import (
    CONFIG,
    INSTANCE,
    Consoles,
    client,
    console_uri,
    proxy,
    refusal,
    session_lines,
)

ACCESS_PATH = "/console?ref=OpaqueRef:4f2a&session_id=OpaqueRef:secret-session"
"""As XenServer's: the session id in it is a secret, never shown."""


@dataclass(frozen=True)
class PKI:
    consoles: Authority
    stranger: Authority
    server: Issued
    """Names 127.0.0.1, where the consoles listen."""
    elsewhere: Issued
    """Names another host only."""
    named: Issued
    """Names ``localhost``, by name."""
    proxy_client: Issued
    """The proxy's client certificate, from the consoles' CA."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    consoles = Authority(directory, "consoles")
    return PKI(
        consoles=consoles,
        stranger=Authority(directory, "stranger"),
        server=consoles.issue("server", hosts=("127.0.0.1",)),
        elsewhere=consoles.issue("elsewhere", hosts=("compute-1.example",)),
        named=consoles.issue("named", hosts=("localhost",)),
        proxy_client=consoles.issue("proxy", client=True),
    )


def trusting(pki: PKI, **tls: Any) -> ProxyConfig:
    """The proxy with the consoles' CA (and whatever else ``tls`` says)."""
    return replace(CONFIG, target_tls=TargetTLS(ca_file=pki.consoles.ca_file, **tls))


async def relays(port: int, token: str) -> None:
    """The console's RFB greeting arrives, and bytes echo back through it."""
    async with client(console_uri(port, token), port) as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == RFB_VERSION
        await ws.send(b"RFB 003.008\n")
        assert await asyncio.wait_for(ws.recv(), 5) == b"RFB 003.008\n"


def assert_secret_free(caplog: pytest.LogCaptureFixture, body: str, token: str) -> None:
    for secret in (token, "secret-session"):
        assert secret not in body
        assert secret not in caplog.text


# --- the CONNECT handshake (internal_access_path) -------------------------------


@pytest.mark.asyncio
async def test_a_console_behind_a_connect_gateway_relays_after_the_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    async with (
        target("rfb") as console,
        gateway(console.port) as gate,
        proxy(consoles) as port,
    ):
        token = consoles.novnc(gate.port, internal_access_path=ACCESS_PATH)
        await relays(port, token)  # the greeting came in one write with the 200: not lost
    assert gate.requests == [f"CONNECT {ACCESS_PATH} HTTP/1.1\r\n\r\n".encode()]
    assert console.accepted == 1
    (line,) = session_lines(caplog)
    assert f"target=127.0.0.1:{gate.port}" in line
    assert "bytes_in=12 bytes_out=24" in line
    assert_secret_free(caplog, "", token)


GATEWAY_REFUSALS: dict[GatewayMode, tuple[int, str]] = {
    "forbidden": (502, "console_gateway_refused: the console's gateway refused the connection"),
    "garbage": (502, "console_gateway_error: the console's gateway failed: its answer to CONNECT"),
    "endless": (
        502,
        "console_gateway_error: the console's gateway failed: "
        f"its answer to CONNECT is over {MAX_CONNECT_ANSWER} bytes",
    ),
    "close": (
        502,
        "console_gateway_error: the console's gateway failed: it closed the connection",
    ),
    "silent": (504, "console_timeout: the console did not answer within 0.5 s"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", GATEWAY_REFUSALS)
async def test_a_gateway_that_does_not_answer_200_is_refused_and_relays_nothing(
    mode: GatewayMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    config = replace(CONFIG, connect_timeout=0.5)
    async with (
        target("rfb") as console,
        gateway(console.port, mode) as gate,
        proxy(consoles, config) as port,
    ):
        token = consoles.novnc(gate.port, internal_access_path=ACCESS_PATH)
        started = time.monotonic()
        status, body = await refusal(console_uri(port, token), port)
        took = time.monotonic() - started
    expected_status, expected_start = GATEWAY_REFUSALS[mode]
    assert (status, body[: len(expected_start)]) == (expected_status, expected_start)
    assert took < 2
    assert len(gate.requests) == 1
    assert console.accepted == 0
    (line,) = session_lines(caplog)
    assert f"outcome=refused:{body.split(':')[0]}" in line
    assert_secret_free(caplog, body, token)


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/console ref=1", "/cönsole"])
async def test_an_access_path_that_cannot_be_a_request_target_dials_nothing(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    async with (
        target("rfb") as console,
        gateway(console.port) as gate,
        proxy(consoles) as port,
    ):
        token = consoles.novnc(gate.port, internal_access_path=path)  # printable: stored
        status, body = await refusal(console_uri(port, token), port)
    assert status == 502
    assert body.startswith("bad_access_path: the console's internal access path cannot be sent")
    assert path not in body
    assert gate.connections == 0
    assert_secret_free(caplog, body, token)


# --- TLS to the console (use_tls, tls_port) ---------------------------------------


@pytest.mark.asyncio
async def test_a_tls_console_relays_on_its_tls_port(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    async with (
        target("rfb") as plain,
        Target("rfb", tls=server_context(pki.server)) as tls,
        proxy(consoles, trusting(pki)) as port,
    ):
        token = consoles.novnc(plain.port, use_tls=True, tls_port=tls.port)
        await relays(port, token)
    assert (tls.accepted, plain.accepted) == (1, 0)
    (line,) = session_lines(caplog)
    assert f"target=127.0.0.1:{tls.port}" in line
    assert "bytes_in=12 bytes_out=24" in line


@pytest.mark.asyncio
async def test_a_console_host_name_is_resolved_and_named_by_its_certificate(pki: PKI) -> None:
    consoles = Consoles()
    async with (
        Target("rfb", tls=server_context(pki.named)) as tls,
        proxy(consoles, trusting(pki)) as port,
    ):
        issued = consoles.service.authorize(
            INSTANCE, "localhost", tls.port, ConsoleType.NOVNC, options={"use_tls": True}
        )
        await relays(port, issued.token.get_secret_value())
    assert tls.accepted == 1


@pytest.mark.asyncio
async def test_use_tls_without_a_tls_port_speaks_tls_on_the_port(pki: PKI) -> None:
    consoles = Consoles()
    async with (
        Target("rfb", tls=server_context(pki.server)) as tls,
        proxy(consoles, trusting(pki)) as port,
    ):
        await relays(port, consoles.novnc(tls.port, use_tls=True))
    assert tls.accepted == 1


@pytest.mark.asyncio
async def test_a_tls_port_without_use_tls_leaves_the_port_in_the_clear(pki: PKI) -> None:
    """As Nova's SPICE proxy: ``tls_port`` alone is recorded, not dialled."""
    consoles = Consoles()
    async with (
        target("rfb") as plain,
        Target("rfb", tls=server_context(pki.server)) as tls,
        proxy(consoles, trusting(pki)) as port,
    ):
        await relays(port, consoles.novnc(plain.port, tls_port=tls.port))
    assert (tls.accepted, plain.accepted) == (0, 1)


@pytest.mark.asyncio
async def test_a_client_certificate_reaches_a_console_that_requires_one(pki: PKI) -> None:
    consoles = Consoles()
    config = trusting(pki, cert_file=pki.proxy_client.cert, key_file=pki.proxy_client.key)
    async with (
        Target("rfb", tls=server_context(pki.server, client_ca=pki.consoles.ca_file)) as tls,
        proxy(consoles, config) as port,
    ):
        await relays(port, consoles.novnc(tls.port, use_tls=True))
    assert tls.accepted == 1


@pytest.mark.asyncio
async def test_hostname_verification_can_be_turned_off(pki: PKI) -> None:
    """Weaker, and documented so: any certificate of the CA passes."""
    consoles = Consoles()
    async with (
        Target("rfb", tls=server_context(pki.elsewhere)) as tls,
        proxy(consoles, trusting(pki, verify_hostname=False)) as port,
    ):
        await relays(port, consoles.novnc(tls.port, use_tls=True))
    assert tls.accepted == 1


TLS_REFUSALS = {
    "certificate from another CA": (502, "console_bad_certificate"),
    "certificate for another host": (502, "console_bad_certificate"),
    "client certificate missing": (502, "console_tls_failed"),
    "console not speaking TLS": (502, "console_tls_failed"),
    "console silent in the handshake": (504, "console_timeout"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", TLS_REFUSALS)
async def test_a_tls_console_that_cannot_be_trusted_is_refused_and_relays_nothing(
    case: str, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    config = replace(trusting(pki), connect_timeout=0.5)
    issued, client_ca = pki.server, None
    if case == "certificate from another CA":
        config = replace(config, target_tls=TargetTLS(ca_file=pki.stranger.ca_file))
    elif case == "certificate for another host":
        issued = pki.elsewhere
    elif case == "client certificate missing":
        client_ca = pki.consoles.ca_file
    # TLS 1.2: a missing client certificate is refused inside the handshake
    context = server_context(issued, client_ca=client_ca, max_tls12=client_ca is not None)
    async with (
        Target("rfb", tls=context) as tls,
        target("rfb") as plain,
        silent_console() as silent,
        proxy(consoles, config) as port,
    ):
        dialled = tls.port
        if case == "console not speaking TLS":
            dialled = plain.port
        elif case == "console silent in the handshake":
            dialled = silent
        token = consoles.novnc(dialled, use_tls=True)
        started = time.monotonic()
        status, body = await refusal(console_uri(port, token), port)
        took = time.monotonic() - started
    assert (status, body.split(":")[0]) == TLS_REFUSALS[case]
    assert took < 2
    assert tls.accepted == 0
    assert "127.0.0.1" not in body
    (line,) = session_lines(caplog)
    assert f"outcome=refused:{TLS_REFUSALS[case][1]}" in line
    assert "bytes_in=0 bytes_out=0" in line
    assert_secret_free(caplog, body, token)


# --- both: CONNECT, then TLS through the tunnel -------------------------------------


@pytest.mark.asyncio
async def test_tls_runs_through_the_connect_tunnel_to_the_console(pki: PKI) -> None:
    consoles = Consoles()
    async with (
        Target("rfb", tls=server_context(pki.server)) as tls,
        gateway(tls.port) as gate,
        proxy(consoles, trusting(pki)) as port,
    ):
        token = consoles.novnc(gate.port, use_tls=True, internal_access_path=ACCESS_PATH)
        await relays(port, token)
    assert gate.requests == [f"CONNECT {ACCESS_PATH} HTTP/1.1\r\n\r\n".encode()]
    assert tls.accepted == 1


@pytest.mark.asyncio
async def test_bytes_a_gateway_adds_before_tls_are_never_relayed(pki: PKI) -> None:
    """Only what the console's certificate vouches for reaches the client."""
    consoles = Consoles()
    async with (
        Target("rfb", tls=server_context(pki.server)) as tls,
        gateway(tls.port, "ok_with_extra") as gate,
        proxy(consoles, trusting(pki)) as port,
    ):
        token = consoles.novnc(gate.port, use_tls=True, internal_access_path=ACCESS_PATH)
        status, body = await refusal(console_uri(port, token), port)
    assert (status, body.split(":")[0]) == (502, "console_tls_failed")
    assert INJECTED.decode() not in body
    assert tls.accepted == 0


# --- settings ----------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [name for name in os.environ if name.startswith("CONSOLE_AUTH_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_tls_settings_reach_the_proxy(pki: PKI, clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("CONSOLE_AUTH_PROXY__TLS_CA_FILE", str(pki.consoles.ca_file))
    clean_environment.setenv("CONSOLE_AUTH_PROXY__TLS_CERT_FILE", str(pki.proxy_client.cert))
    clean_environment.setenv("CONSOLE_AUTH_PROXY__TLS_KEY_FILE", str(pki.proxy_client.key))
    clean_environment.setenv("CONSOLE_AUTH_PROXY__TLS_VERIFY_HOSTNAME", "false")
    settings = load_settings()
    config = ProxyConfig.from_settings(settings.proxy, serial_lease_ttl=60)
    assert config.target_tls == TargetTLS(
        ca_file=pki.consoles.ca_file,
        cert_file=pki.proxy_client.cert,
        key_file=pki.proxy_client.key,
        verify_hostname=False,
    )
    assert TargetTLS().verify_hostname  # the default checks the host


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("TLS_CA_FILE", "/nonexistent/ca.pem", "proxy.tls_ca_file"),
        ("TLS_KEY_FILE", "{key}", "proxy.tls_key_file"),  # a key without its certificate
    ],
)
def test_bad_tls_settings_are_refused_by_name(
    variable: str, value: str, words: str, pki: PKI, clean_environment: pytest.MonkeyPatch
) -> None:
    clean_environment.setenv(
        f"CONSOLE_AUTH_PROXY__{variable}", value.format(key=pki.proxy_client.key)
    )
    with pytest.raises(InvalidRequest, match=words):
        load_settings()


def encrypted_key(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    return path


def test_tls_files_that_cannot_be_loaded_stop_the_proxy_at_start(pki: PKI, tmp_path: Path) -> None:
    consoles = Consoles()
    cases = {
        "proxy.tls_ca_file cannot be loaded": TargetTLS(ca_file=pki.server.key),
        "proxy.tls_cert_file or tls_key_file cannot be loaded": TargetTLS(
            cert_file=pki.server.key
        ),
        "the key is encrypted": TargetTLS(
            cert_file=pki.proxy_client.cert, key_file=encrypted_key(tmp_path)
        ),
    }
    for words, tls in cases.items():
        with pytest.raises(InvalidRequest, match=words):
            create_app(consoles.service, consoles.ports, replace(CONFIG, target_tls=tls))


def test_the_proxy_command_refuses_an_unloadable_ca_in_one_line(
    pki: PKI,
    clean_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    clean_environment.setenv(
        "CONSOLE_AUTH_DATABASE__URL", f"sqlite:///{tmp_path / 'unused.sqlite3'}"
    )
    clean_environment.setenv("CONSOLE_AUTH_PROXY__TLS_CA_FILE", str(pki.server.key))
    assert cli.main(["proxy", "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("console-auth: error: proxy.tls_ca_file cannot be loaded")
    assert len(err.splitlines()) == 1


@pytest.mark.asyncio
async def test_a_tls13_console_that_refuses_the_client_after_the_handshake_ends_the_session(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS 1.3 checks a client certificate after the client's handshake is
    done: the console's alert arrives on the relay, as the console closing."""
    caplog.set_level(logging.INFO)
    consoles = Consoles()
    context = server_context(pki.server, client_ca=pki.consoles.ca_file, max_tls12=False)
    async with Target("rfb", tls=context) as tls, proxy(consoles, trusting(pki)) as port:
        token = consoles.novnc(tls.port, use_tls=True)
        async with client(console_uri(port, token), port) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1000
    (line,) = session_lines(caplog)
    assert "outcome=target_closed" in line
