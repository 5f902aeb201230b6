"""Tamper evidence: the MAC binds every field a proxy acts on to the token."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console_auth.domain import (
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    SerialMode,
    versions,
)
from console_auth.domain.integrity import _canonical, connection_mac, mac_matches
from tests.builders import a_connection
from tests.fakes import T0
from tests.property.strategies import connections

TOKEN = "k" * 43
OTHER_TOKEN = "j" * 43
PINNED = a_connection(
    token=TOKEN,
    instance_uuid=uuid.UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"),
    options=ConsoleOptions(
        internal_access_path="/x", use_tls=True, tls_port=5901, extra={"b": 1.5, "a": "z"}
    ),
    access_url_base="https://console.example.org/vnc_lite.html",
    issued_at=T0,
)

CHANGES: dict[str, Any] = {
    "instance_uuid": uuid.UUID("0f1e2d3c-4b5a-4697-8877-665544332211"),
    "host": "evil.example",
    "port": 5901,
    "console_type": ConsoleType.SPICE_HTML5,
    "options": ConsoleOptions(internal_access_path="/y"),
    "access_url_base": "https://evil.example/vnc_lite.html",
    "expires_at": T0 + timedelta(days=30),
    "issued_at": None,
}
OPTION_CHANGES: dict[str, Any] = {
    "internal_access_path": None,
    "use_tls": False,
    "tls_port": 5902,
    "mode": SerialMode.BIND,
    "extra": {"b": 1.5},
}


CANONICAL = (
    b"console-auth/connection-mac/1\n6c8f9e4e2b1a4c579f1e0a1b2c3d4e5f\ncompute-1\n5900\nnovnc\n"
    b'/x\n1\n5901\n\x00\n{"a":"z","b":1.5}\nhttps://console.example.org/vnc_lite.html\n'
    b"1767269400000000\n1767268800000000"
)


def test_the_encoding_is_pinned_so_every_release_computes_the_same_mac() -> None:
    # Changing these bytes breaks every stored token on upgrade: make a new scheme instead.
    expected = hmac.new(TOKEN.encode(), CANONICAL, hashlib.sha256).hexdigest()
    assert connection_mac(TOKEN, PINNED) == expected


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_change_to_any_field_changes_the_mac(field: str) -> None:
    changed = PINNED.model_copy(update={field: CHANGES[field]})
    assert not mac_matches(TOKEN, changed, connection_mac(TOKEN, PINNED))


@pytest.mark.parametrize("option", sorted(OPTION_CHANGES))
def test_a_change_to_any_option_changes_the_mac(option: str) -> None:
    options = PINNED.options.model_copy(update={option: OPTION_CHANGES[option]})
    changed = PINNED.model_copy(update={"options": options})
    assert not mac_matches(TOKEN, changed, connection_mac(TOKEN, PINNED))


def test_the_mac_is_keyed_by_the_token() -> None:
    assert connection_mac(TOKEN, PINNED) != connection_mac(OTHER_TOKEN, PINNED)
    assert mac_matches(TOKEN, PINNED, connection_mac(TOKEN, PINNED))


def test_the_mac_does_not_depend_on_the_order_of_extra_options() -> None:
    reordered = PINNED.options.model_copy(update={"extra": {"a": "z", "b": 1.5}})
    assert connection_mac(TOKEN, PINNED.model_copy(update={"options": reordered})) == (
        connection_mac(TOKEN, PINNED)
    )


@given(port=st.integers(1, 65535), seconds=st.integers(1, 10**6), flip=st.integers(0, 255))
def test_one_flipped_bit_of_the_mac_is_refused(port: int, seconds: int, flip: int) -> None:
    connection = a_connection(token=TOKEN, port=port, expires_at=T0 + timedelta(seconds=seconds))
    mac = bytearray.fromhex(connection_mac(TOKEN, connection))
    mac[flip // 8] ^= 1 << (flip % 8)
    assert not mac_matches(TOKEN, connection, mac.hex())


def test_the_mac_travels_in_the_primitive_and_older_readers_lose_it() -> None:
    signed = PINNED.model_copy(update={"mac": connection_mac(TOKEN, PINNED)})
    assert ConsoleConnection.from_primitive(signed.to_primitive()) == signed
    older = signed.to_primitive("1.1")
    assert "mac" not in older[versions.DATA_KEY]
    assert ConsoleConnection.from_primitive(older).mac is None


@pytest.mark.parametrize("mac", ["", "A" * 64, "0" * 63, "g" * 64])
def test_a_mac_of_the_wrong_shape_is_invalid(mac: str) -> None:
    with pytest.raises(ValueError, match="mac"):
        a_connection(mac=mac)


def _meaning(connection: ConsoleConnection) -> str:
    """What the MAC covers, as JSON: 1 and 1.0 differ there, as they do in storage."""
    return json.dumps(
        connection.model_dump(mode="json", exclude={"token_hash", "mac"}), sort_keys=True
    )


@given(first=connections(), second=connections())
def test_two_connections_share_an_encoding_only_when_they_mean_the_same(
    first: ConsoleConnection, second: ConsoleConnection
) -> None:
    for other in (second, *(first.model_copy(update={f: getattr(second, f)}) for f in CHANGES)):
        assert (_canonical(first) == _canonical(other)) == (_meaning(first) == _meaning(other))
