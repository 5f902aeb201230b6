"""Compute hosts and proxy hosts: one rule for every name this library dials
or sends a user to."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final

from .types import MAX_PORT, MIN_PORT

MAX_HOST_LENGTH: Final = 253
DEFAULT_MEMCACHED_PORT: Final = 11211
"""For a memcached server named without a port: here so that settings can
check a server list without the memcached extra installed."""
_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=4096)
def check_host(host: str) -> str:
    """A hostname (RFC 1123) or an IP literal; anything else cannot be dialled.

    Cached: a cloud has few compute hosts and every stored row is checked on
    read, so this would otherwise dominate a token lookup. Only results are
    cached, never errors."""
    if (
        not 0 < len(host) <= MAX_HOST_LENGTH
        or not host.isascii()
        or not host.isprintable()
        or " " in host
    ):
        raise ValueError(f"must be an ASCII hostname or IP of 1-{MAX_HOST_LENGTH} characters")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # one spelling per address, so purge by host finds every row
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            zone = f"%{address.scope_id}" if address.scope_id else ""
            return f"::ffff:{address.ipv4_mapped}{zone}"  # alike on every Python release
        return str(address)
    labels = host.removesuffix(".").split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError("must be a hostname or an IP address")
    return host


def join_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal in brackets: ``split_address``'s inverse."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or a bare host or IPv6 literal (then
    ``default_port``): the host as written and the port; ``ValueError``
    naming what is wrong (never the text). The host is not resolved or
    checked further: a server list may name hosts ``check_host`` refuses."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("an IPv6 server must look like [address]:port")
        port = rest[1:] or str(default_port)
    elif text.count(":") > 1:  # a bare IPv6 literal
        host, port = text, str(default_port)
    else:
        host, _, port = text.partition(":")
        port = port or str(default_port)
    if not host or not host.isascii() or not host.isprintable() or " " in host:
        raise ValueError("each server must be host:port")
    if not (port.isascii() and port.isdigit() and MIN_PORT <= int(port) <= MAX_PORT):
        raise ValueError(f"each server port must be a number from {MIN_PORT} to {MAX_PORT}")
    return host, int(port)
