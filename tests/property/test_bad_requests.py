"""Unusable input to the service is refused with InvalidRequest and leaves
the store exactly as it was, on every backend."""

from __future__ import annotations

import math
import re
import uuid
from datetime import timedelta
from typing import Any, Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application import MAX_TTL, ConsoleAuthService
from console_auth.domain import ConsoleType, InvalidRequest
from tests.backends import Backend
from tests.fakes import FakeClock, FixedTokenSource
from tests.property.strategies import (
    ONE_US,
    extra_values,
    hostnames,
    malformed_uuid_texts,
    non_text_uuids,
    option_keys,
    printable_text,
)
from tests.property.support import harness

GOOD: Final[dict[str, Any]] = {
    "instance_uuid": uuid.UUID("3c2b1a09-8f7e-4d6c-b5a4-938271605f4e"),
    "host": "compute-1",
    "port": 5900,
    "console_type": ConsoleType.NOVNC,
}
_HOSTISH: Final = re.compile(r"[A-Za-z0-9.:%-]*")
"""Every character a hostname or IP literal may hold; text with any other
character is no host, whatever else it looks like."""
_OPTION_KEY: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

bad_hosts: Final = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "-compute",
            "compute-",
            "a..b",
            "a.-b.c",
            "a_b",
            "a/b",
            "a b",
            "1.2.3",  # all-digit top label, not an IPv4
            "256.1.1.1",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.4%eth0",
            "::1%\n",  # an IPv6 scope id is free text to ipaddress
            "fe80::1%\x00",
            "fe80::1%eth0 evil",
            "::1%\x1b[31m",
            "::1::1",
            "[::1]",
            "a" * 64,
            ".".join(["a" * 63] * 4),  # 255 characters
            "comp\u00fcte",
            "xn--comp\u00fcte",
        ]
    ),
    st.builds(
        lambda host, i, c: host[: i % (len(host) + 1)] + c + host[i % (len(host) + 1) :],
        hostnames(max_length=60),
        st.integers(0, 100),
        st.characters(exclude_characters="%").filter(lambda c: _HOSTISH.fullmatch(c) is None),
    ),
    st.text(min_size=1).filter(lambda s: "%" not in s and _HOSTISH.fullmatch(s) is None),
)
bad_ports: Final[st.SearchStrategy[object]] = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=65536),
    st.sampled_from([True, False, None, 1.5, 22.000001, "22", b"22", "x", "0x16", [22], {}]),
    st.floats().filter(lambda f: not math.isfinite(f) or not f.is_integer()),
)
bad_console_types: Final = st.one_of(
    st.sampled_from(["NOVNC", "vnc", "spice_html5", " novnc", "novnc ", "rdp", ""]),
    st.text().filter(lambda s: s not in {t.value for t in ConsoleType}),
    st.integers(),
    st.none(),
)
bad_extras: Final = st.one_of(
    st.dictionaries(option_keys, extra_values, min_size=17, max_size=20),
    st.builds(
        lambda key, value: {key: value},
        st.text(max_size=70).filter(lambda k: _OPTION_KEY.fullmatch(k) is None),
        extra_values,
    ),
    st.builds(
        lambda key, value: {key: value},
        option_keys,
        st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, None, 2**63, -(2**63) - 1]),
            st.integers(min_value=2**63),
            st.integers(max_value=-(2**63) - 1),
            st.lists(extra_values, max_size=2),
            st.dictionaries(option_keys, extra_values, max_size=2),
            st.text(min_size=256, max_size=300, alphabet="x"),
            printable_text.map(lambda t: t + "\n"),
        ),
    ),
)
bad_options: Final = st.one_of(
    bad_extras.map(lambda extra: {"extra": extra}),
    st.sampled_from(
        [
            {"internal_access_path": "\x00"},
            {"internal_access_path": "x" * 256},
            {"tls_port": 0},
            {"tls_port": 65536},
            {"mode": "listen"},
            {"use_tls": "maybe"},
            {"unknown_option": 1},
            {"extra": "not a mapping"},
            {"extra": [("a", 1)]},
            "not a mapping",
            42,
            ["extra"],
        ]
    ),
)
bad_ttls: Final = st.one_of(
    st.timedeltas(max_value=timedelta(0)),
    st.timedeltas(min_value=MAX_TTL + ONE_US),
    st.sampled_from([timedelta(0), -ONE_US, MAX_TTL + ONE_US, 60, 60.0, "60"]),
)
bad_arguments: Final = st.one_of(
    (malformed_uuid_texts | non_text_uuids).map(lambda v: {"instance_uuid": v}),
    bad_hosts.map(lambda v: {"host": v}),
    bad_ports.map(lambda v: {"port": v}),
    bad_console_types.map(lambda v: {"console_type": v}),
    bad_options.map(lambda v: {"options": v}),
    bad_ttls.map(lambda v: {"ttl": v}),
)


@given(bad=bad_arguments, issued_before=st.integers(0, 3))
@example(bad={"port": 0}, issued_before=1)
@example(bad={"port": 65536}, issued_before=1)
@example(bad={"ttl": timedelta(0)}, issued_before=1)
@example(bad={"ttl": MAX_TTL + ONE_US}, issued_before=1)
@example(bad={"options": {"extra": {"a": math.nan}}}, issued_before=1)
def test_bad_authorize_is_refused_and_stores_nothing(
    backend: Backend, bad: dict[str, Any], issued_before: int
) -> None:
    with harness(backend) as h:
        for n in range(issued_before):
            h.authorize(uuid.UUID(int=n), f"compute-{n}", 5900 + n, ConsoleType.SERIAL)
        with pytest.raises(InvalidRequest):
            h.service.authorize(**{**GOOD, **bad})
        h.assert_store_is_exactly_issued()


@given(host=bad_hosts, issued=st.integers(1, 3))
def test_purge_with_a_bad_host_deletes_nothing(backend: Backend, host: str, issued: int) -> None:
    with harness(backend) as h:
        for n in range(issued):
            h.authorize(uuid.UUID(int=n), "compute-1", 5900, ConsoleType.SERIAL, ttl=ONE_US)
        h.clock.advance(ONE_US)  # every one is expired: a purge would take them all
        with pytest.raises(InvalidRequest):
            h.service.purge_expired(host)
        h.assert_store_is_exactly_issued()


def test_the_edges_of_the_valid_ranges_are_accepted() -> None:
    """The refusals above are not a blanket no: each bound itself is allowed."""
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), FakeClock(), FixedTokenSource()
    )
    for port in (1, 65535):
        assert service.authorize(**{**GOOD, "port": port}).connection.port == port
    for ttl in (ONE_US, MAX_TTL):
        issued = service.authorize(**{**GOOD, "ttl": ttl}).connection
        assert issued.issued_at is not None
        assert issued.expires_at - issued.issued_at == ttl
    for host in ("a", "a" * 63, ".".join(["a" * 63] * 3 + ["a" * 61]), "1.2.3.4", "::1"):
        assert service.authorize(**{**GOOD, "host": host}).connection.host == host
    extra = {f"k{n}": n for n in range(16)}
    assert (
        service.authorize(**{**GOOD, "options": {"extra": extra}}).connection.options.extra
        == extra
    )
