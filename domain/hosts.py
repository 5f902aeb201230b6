"""Compute hosts and proxy hosts: one rule for every name this library dials
or sends a user to."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final

MAX_HOST_LENGTH: Final = 253
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
