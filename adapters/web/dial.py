"""Reaching a console: TCP, then the HTTP CONNECT handshake when the
connection names an ``internal_access_path``, then TLS when it asks for it.

The order is Nova's: the CONNECT gateway (XenServer's, say) is spoken to in
the clear, and the console's own security comes after, through the tunnel,
so the certificate checked is the console's and the gateway relays only
ciphertext. One deadline, ``connect_timeout``, bounds all three steps.

CONNECT is sent as Nova sends it, ``CONNECT <path> HTTP/1.1`` and a blank
line; the answer must be ``HTTP/1.x 200`` and end with a blank line within
``MAX_CONNECT_ANSWER`` bytes. It is read byte by byte, so nothing past the
blank line leaves the socket: what follows belongs to the console, and goes
to the client (or, with TLS, into the handshake, which fails on bytes no
console sent). The path is never shown: XenServer's carries a session id.

TLS is spoken when the connection has ``use_tls``, on ``tls_port`` if it
has one (SPICE's ``tlsPort``), else on ``port``; a ``tls_port`` without
``use_tls`` is only recorded, and ``port`` is dialled in the clear, as
Nova's SPICE proxy does. The certificate must chain to the configured CAs
(the system's by default) and, unless turned off, name the connection's
``host``; TLS 1.2 at least.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, NoReturn

from console_auth.domain import ConsoleConnection, InvalidRequest

from .refusals import Reason, Refused
from .relay import CHUNK

logger = logging.getLogger(__name__)

MAX_CONNECT_ANSWER: Final = 8 << 10
"""Bytes of the gateway's answer to CONNECT, up to its blank line."""
_END_OF_HEAD: Final = b"\r\n\r\n"
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
_REQUEST_TARGET: Final = re.compile(r"[\x21-\x7e]+")
"""What may stand between ``CONNECT`` and ``HTTP/1.1``: visible ASCII, no space."""


@dataclass(frozen=True, kw_only=True)
class TargetTLS:
    """How the proxy speaks TLS to a console that asks for it (``use_tls``)."""

    ca_file: Path | None = None
    """CA certificates (PEM) the consoles' certificates chain to; none: the system's."""
    cert_file: Path | None = None
    """A client certificate (PEM) for consoles that ask for one."""
    key_file: Path | None = None
    """Its key, unencrypted (PEM); none: it is in ``cert_file``."""
    verify_hostname: bool = True
    """Off: any certificate the CAs signed passes, whatever host it names."""

    def context(self) -> ssl.SSLContext:
        """The context every TLS console is dialled with; ``InvalidRequest``
        naming the setting when a file cannot be loaded."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"proxy.tls_ca_file cannot be loaded: {_why(exc)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.verify_hostname
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
            except (OSError, ValueError) as exc:
                raise InvalidRequest(
                    f"proxy.tls_cert_file or tls_key_file cannot be loaded: {_why(exc)}"
                ) from None
        return context

    @property
    def has_files(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None


def target_port(connection: ConsoleConnection) -> int:
    """The port the proxy dials: ``tls_port`` for a TLS console that has one."""
    options = connection.options
    if options.use_tls and options.tls_port is not None:
        return options.tls_port
    return connection.port


class Dialer:
    """Opens the byte stream to a validated console, or raises ``Refused``:
    502 when the console, its gateway or its certificate says no, 504 past
    ``connect_timeout``."""

    def __init__(self, connect_timeout: float, tls: TargetTLS) -> None:
        self._timeout = connect_timeout
        self._tls = tls
        if tls.has_files:  # a bad file stops the proxy at start, not each TLS session
            _ = self.tls_context

    @functools.cached_property
    def tls_context(self) -> ssl.SSLContext:
        """Built once; the system's CAs only load when a TLS console first comes."""
        return self._tls.context()

    async def dial(
        self, connection: ConsoleConnection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        options = connection.options
        host, port = connection.host, target_port(connection)
        path = options.internal_access_path
        request = None if path is None else connect_request(path)
        context = self.tls_context if options.use_tls else None
        try:
            async with asyncio.timeout(self._timeout):
                sock = await _tcp(host, port)
                try:
                    if request is not None:
                        await _tunnel(sock, request)
                    return await self._streams(sock, host, port, context)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise Refused(
                HTTPStatus.GATEWAY_TIMEOUT,
                Reason.CONSOLE_TIMEOUT,
                f"the console did not answer within {self._timeout:g} s",
            ) from None

    async def _streams(
        self, sock: socket.socket, host: str, port: int, context: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if context is None:
            return await asyncio.open_connection(sock=sock, limit=CHUNK)
        try:
            return await asyncio.open_connection(
                sock=sock,
                limit=CHUNK,
                ssl=context,
                server_hostname=host,
                ssl_handshake_timeout=self._timeout,
            )
        except ssl.SSLCertVerificationError as exc:  # the detail names the host: log only
            logger.warning(
                "console %s port %d: TLS certificate refused: %s", host, port, exc.verify_message
            )
            raise Refused(
                HTTPStatus.BAD_GATEWAY,
                Reason.CONSOLE_BAD_CERTIFICATE,
                "the console's TLS certificate is not trusted",
            ) from None
        except OSError as exc:  # ssl.SSLError, or a reset mid-handshake
            logger.warning("console %s port %d: TLS handshake failed: %s", host, port, exc)
            raise Refused(
                HTTPStatus.BAD_GATEWAY,
                Reason.CONSOLE_TLS_FAILED,
                "the TLS handshake with the console failed",
            ) from None


def connect_request(path: str) -> bytes:
    """The CONNECT request for ``path``; a path that cannot be one is refused
    before anything is dialled."""
    if _REQUEST_TARGET.fullmatch(path) is None:
        raise Refused(
            HTTPStatus.BAD_GATEWAY,
            Reason.BAD_ACCESS_PATH,
            "the console's internal access path cannot be sent: "
            "it must be visible ASCII without spaces",
        )
    return f"CONNECT {path} HTTP/1.1\r\n\r\n".encode("ascii")


async def _tcp(host: str, port: int) -> socket.socket:
    """A connected socket, each address in turn; the socket, not a stream,
    so that the CONNECT answer can be read without reading past it."""
    loop = asyncio.get_running_loop()
    addresses: list[tuple[socket.AddressFamily, tuple[Any, ...]]]
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        try:
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise _unreachable("its host name does not resolve") from None
        addresses = [(family, address) for family, _, _, _, address in found]
    else:  # no resolver thread for an address, as asyncio's own connect
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        addresses = [(family, (host, port))]
    failure: OSError | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    # the host and port go to the log line, not to the client
    raise _unreachable(_strerror(failure, "no address answered"))


async def _tunnel(sock: socket.socket, request: bytes) -> None:
    """CONNECT, then the gateway's answer up to its blank line and not a byte more."""
    loop = asyncio.get_running_loop()
    answer = bytearray()
    try:
        await loop.sock_sendall(sock, request)
        while not answer.endswith(_END_OF_HEAD):
            if len(answer) >= MAX_CONNECT_ANSWER:
                raise _bad_gateway(f"its answer to CONNECT is over {MAX_CONNECT_ANSWER} bytes")
            byte = await loop.sock_recv(sock, 1)
            if not byte:
                raise _bad_gateway("it closed the connection during CONNECT")
            answer += byte
    except OSError as exc:
        raise _bad_gateway(
            f"the connection failed during CONNECT ({_strerror(exc, 'lost')})"
        ) from None
    status = _STATUS_LINE.fullmatch(answer[: answer.find(b"\r\n")])
    if status is None:
        raise _bad_gateway("its answer to CONNECT is not HTTP")
    if status[1] != b"200":
        raise Refused(
            HTTPStatus.BAD_GATEWAY,
            Reason.CONSOLE_GATEWAY_REFUSED,
            f"the console's gateway refused the connection (HTTP {status[1].decode()})",
        )


def _unreachable(why: str) -> Refused:
    return Refused(
        HTTPStatus.BAD_GATEWAY,
        Reason.CONSOLE_UNREACHABLE,
        f"the console cannot be reached ({why})",
    )


def _bad_gateway(why: str) -> Refused:
    return Refused(
        HTTPStatus.BAD_GATEWAY,
        Reason.CONSOLE_GATEWAY_ERROR,
        f"the console's gateway failed: {why}",
    )


def _no_password() -> NoReturn:
    """Called by OpenSSL for an encrypted key, which would otherwise ask on the terminal."""
    raise ValueError("the key is encrypted; give it unencrypted")


def _why(exc: OSError | ValueError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _strerror(exc: OSError | None, default: str) -> str:
    return os.strerror(exc.errno) if exc is not None and exc.errno else default
