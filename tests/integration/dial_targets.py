"""Consoles the proxy dials through a CONNECT gateway or over TLS, on
loopback: a certificate authority made in the test (``cryptography``), a
TLS console that greets as RFB 3.8 then echoes, and an HTTP CONNECT gateway
that answers as told and, on 200, forwards to a console."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA whose certificate and issued pairs are PEM files in ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self._subject = subject
        self._cert = (
            _builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}-ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, *, hosts: tuple[str, ...] = (), client: bool = False) -> Issued:
        """A leaf for ``hosts`` (DNS names or IP addresses), or a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _builder(subject, self._subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(
            cert=self.directory / f"{self.name}-{label}.pem",
            key=self.directory / f"{self.name}-{label}.key",
        )
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def server_context(
    issued: Issued, *, client_ca: Path | None = None, max_tls12: bool = False
) -> ssl.SSLContext:
    """A console's side; with ``client_ca`` it requires a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    if max_tls12:  # the client certificate is then checked inside the handshake
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


GatewayMode = Literal["ok", "ok_with_extra", "forbidden", "garbage", "endless", "silent", "close"]

INJECTED = b"bytes no console sent"


@dataclass
class Gateway:
    """An HTTP CONNECT gateway in front of the console at ``console_port``:
    ``ok`` answers 200, then forwards both ways, the console's first bytes
    written together with the answer; ``ok_with_extra`` adds ``INJECTED``
    after the answer, before the console's bytes; ``forbidden`` answers 403,
    ``garbage`` no HTTP, ``endless`` a header without end, ``silent``
    nothing; ``close`` hangs up."""

    console_port: int
    mode: GatewayMode = "ok"
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    """Each request head received, up to and with its blank line."""
    forwarded: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> Gateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "forbidden":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        elif self.mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        elif self.mode == "endless":
            while True:
                writer.write(b"X-Padding: " + b"x" * 500 + b"\r\n")
                await writer.drain()
        elif self.mode == "silent":
            await reader.read()
        if self.mode not in ("ok", "ok_with_extra"):
            await writer.drain()
            return
        console_reader, console_writer = await asyncio.open_connection(
            "127.0.0.1", self.console_port
        )
        self.forwarded += 1
        try:
            answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
            if self.mode == "ok_with_extra":
                answer += INJECTED
            else:  # the console speaks first (RFB): its greeting rides with the answer
                with contextlib.suppress(TimeoutError):
                    answer += await asyncio.wait_for(console_reader.read(65536), 0.2)
            writer.write(answer)
            await writer.drain()
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(reader, console_writer))
                group.create_task(_pump(console_reader, writer))
        finally:
            console_writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def gateway(console_port: int, mode: GatewayMode = "ok") -> AsyncIterator[Gateway]:
    async with Gateway(console_port, mode) as started:
        yield started


@contextlib.asynccontextmanager
async def silent_console() -> AsyncIterator[int]:
    """A port that takes the connection and never says a word; yields it."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
