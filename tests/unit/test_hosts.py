"""``split_address``: the one grammar of ``host[:port]`` server names."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console_auth.domain.hosts import join_address, split_address
from console_auth.domain.types import MAX_PORT, MIN_PORT

names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True)
ports = st.integers(MIN_PORT, MAX_PORT)


@given(host=names, port=ports)
def test_a_name_and_port_come_back(host: str, port: int) -> None:
    assert split_address(f" {host}:{port} ", 7) == (host, port)
    assert split_address(host, 7) == (host, 7)


@given(address=st.ip_addresses(v=6).map(str), port=ports)
def test_ipv6_literals_bracketed_or_bare(address: str, port: int) -> None:
    assert split_address(f"[{address}]:{port}", 7) == (address, port)
    assert split_address(address, 7) == (address, 7)
    assert ipaddress.ip_address(split_address(f"[{address}]", 7)[0])


@pytest.mark.parametrize(
    "text", ["", ":1", "h:0", "h:65536", "h:x", "h:-1", "[::1", "[::1]x", "a b:1", "hé:1"]
)
def test_bad_addresses_name_the_problem_not_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="server") as caught:
        split_address(text, 7)
    assert not text.strip() or text.strip() not in str(caught.value)


@pytest.mark.parametrize(
    ("host", "port", "joined"),
    [
        ("compute-1", 5900, "compute-1:5900"),
        ("::1", 11211, "[::1]:11211"),
        ("10.0.0.1", 1, "10.0.0.1:1"),
    ],
)
def test_join_address_is_split_address_inverse(host: str, port: int, joined: str) -> None:
    assert join_address(host, port) == joined
    assert split_address(joined, 1) == (host, port)
