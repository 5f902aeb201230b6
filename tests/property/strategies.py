"""Hypothesis strategies shared by the property tests.

Valid values are built from the spec (RFC 1123 hosts, URL-safe base64
tokens, the ``ConsoleOptions`` bounds), not from the code under test, so a
strategy and the library can disagree and a test can fail.
"""

from __future__ import annotations

import base64
import re
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from hypothesis import strategies as st

from console_auth.application import MAX_TTL
from console_auth.domain import (
    TOKEN_BYTES,
    TOKEN_LENGTH,
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    SerialMode,
)

TOKEN_ALPHABET: Final = string.ascii_letters + string.digits + "-_"
RESERVED_KEYS: Final = frozenset({"token", "instance_uuid"})
ONE_US: Final = timedelta(microseconds=1)
MAX_BASE_URL_LENGTH: Final = 1024
MAX_HOST_LENGTH: Final = 253


def is_token_shaped(value: str) -> bool:
    """The issue's definition: 43 characters of the URL-safe base64 alphabet."""
    return len(value) == TOKEN_LENGTH and all(c in TOKEN_ALPHABET for c in value)


# --- tokens -----------------------------------------------------------------

alphabet_tokens: Final = st.text(
    alphabet=TOKEN_ALPHABET, min_size=TOKEN_LENGTH, max_size=TOKEN_LENGTH
)
"""Any string of the right shape, whatever its last character's spare bits."""

secrets_like_tokens: Final = st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES).map(
    lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
)
"""What ``secrets.token_urlsafe(TOKEN_BYTES)`` returns, from drawn bytes (replayable)."""

tokens: Final = st.one_of(alphabet_tokens, secrets_like_tokens)

# --- instance uuids ---------------------------------------------------------

_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ARABIC_THREE: Final = "\u0663"  # a digit to int(), but not ASCII


def mixed_case(value: uuid.UUID, mask: int) -> str:
    return "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(str(value)))


def _misspellings(value: uuid.UUID) -> list[str]:
    text = str(value)
    return [
        value.hex,  # UUID() reads it, the service wants the 36-character form
        f"{{{text}}}",
        f"urn:uuid:{text}",
        text[:-1],
        f"{text}0",
        f" {text[1:]}",
        f"{text[:-1]} ",
        f"{text[:8]}{text[9]}-{text[10:]}",  # a hyphen moved
        f"{text[:-1]}g",
        f"{text[:-1]}{_ARABIC_THREE}",
        text.replace("-", "_"),
        "",
    ]


malformed_uuid_texts: Final = st.one_of(
    st.builds(_misspellings, st.uuids()).flatmap(st.sampled_from),
    st.text().filter(lambda s: _CANONICAL_UUID.fullmatch(s) is None),
)
non_text_uuids: Final[st.SearchStrategy[object]] = st.one_of(
    st.uuids().map(lambda u: u.int),
    st.uuids().map(lambda u: u.bytes),
    st.just([]),
    st.floats(),
)


# --- times ------------------------------------------------------------------

fixed_offsets: Final = st.one_of(
    st.just(UTC),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
)
"""UTC and fixed non-UTC offsets, which the model must normalize to UTC."""


def aware_datetimes(
    min_value: datetime = datetime(2, 1, 1),
    max_value: datetime = datetime(9999, 10, 1),
) -> st.SearchStrategy[datetime]:
    """Aware datetimes whose UTC value and ``+ 2 * MAX_TTL`` stay in range."""
    return st.datetimes(min_value=min_value, max_value=max_value, timezones=fixed_offsets)


ttls: Final = st.one_of(
    st.sampled_from([ONE_US, timedelta(seconds=1), timedelta(minutes=10), MAX_TTL]),
    st.timedeltas(min_value=ONE_US, max_value=MAX_TTL),
)
"""Every TTL the service must accept: 1 µs .. ``MAX_TTL``."""

# --- hosts ------------------------------------------------------------------

host_labels: Final = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True)


@st.composite
def hostnames(draw: st.DrawFn, max_length: int = MAX_HOST_LENGTH) -> str:
    """RFC 1123 names whose last label is not all digits."""
    labels = draw(st.lists(host_labels, min_size=1, max_size=4))
    tld = draw(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}[A-Za-z0-9]|[A-Za-z]", fullmatch=True))
    name = ".".join([*labels, tld])
    return name[-max_length:].lstrip(".-") or tld


ipv4_hosts: Final = st.ip_addresses(v=4).map(str)
ipv6_hosts: Final = st.ip_addresses(v=6).map(str)
valid_hosts: Final = st.one_of(hostnames(), ipv4_hosts, ipv6_hosts)

# --- options ----------------------------------------------------------------

printable_text: Final = st.text(
    alphabet=st.characters(  # what str.isprintable refuses, bar the space
        exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
    )
    | st.just(" "),
    max_size=40,
).filter(str.isprintable)

option_keys: Final = st.from_regex(r"[a-z][a-z0-9_.-]{0,63}", fullmatch=True)
extra_values: Final = st.one_of(
    st.booleans(),
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    printable_text,
)
option_extras: Final = st.dictionaries(option_keys, extra_values, max_size=16)

console_options: Final = st.builds(
    ConsoleOptions,
    internal_access_path=st.none() | printable_text,
    use_tls=st.booleans(),
    tls_port=st.none() | st.integers(1, 65535),
    mode=st.none() | st.sampled_from(SerialMode),
    extra=option_extras,
)

# --- URLs -------------------------------------------------------------------

url_text: Final = st.text(
    alphabet=st.characters(codec="utf-8")  # no lone surrogates
    | st.sampled_from("&=+%?/#;:@[] ~"),
    max_size=12,
)
"""Any text a query can carry once percent-encoded."""

query_pairs: Final = st.lists(
    st.tuples(url_text.filter(lambda k: k not in {*RESERVED_KEYS, "path"}), url_text), max_size=5
)
"""A query's own pairs: any keys but ours, and ``path`` (``base_urls`` places it)."""


def _plain_novnc_path(path: str) -> bool:
    """No fragment, no authority, none of our keys: a path any release must take."""
    if "#" in path:
        return False
    try:
        parts = urlsplit(path)
    except ValueError:
        return False
    keys = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return not parts.netloc and not RESERVED_KEYS & keys


novnc_path_values: Final = st.one_of(
    st.just(""),
    st.just("websockify"),
    st.builds(
        lambda prefix, pairs: f"{prefix}?{urlencode(pairs)}" if pairs else prefix,
        st.sampled_from(["", "websockify", "/proxy/vnc", "a/b"]),
        query_pairs,
    ),
    url_text,
).filter(_plain_novnc_path)
"""A base's own noVNC ``path`` that must be accepted. Paths with a fragment
or an authority are left to ``raw_novnc_paths``: refusing them is allowed."""

raw_novnc_paths: Final = st.one_of(
    url_text,
    st.text(alphabet=st.characters(codec="utf-8")),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(["//", "\t//", "\x00//", " //", "#", "?", "?#", "[", "//[", "]"]),
        url_text,
    ),
)
"""Any noVNC ``path``, delimiters included: each is refused or round-trips."""


@st.composite
def base_urls(draw: st.DrawFn, novnc_path: bool = False) -> str:
    """A base URL ``check_base_url`` must accept: http(s)/ws(s), a name or IP
    literal, an optional port and path, and any query not using our keys."""
    scheme = draw(st.sampled_from(["http", "https", "ws", "wss", "HTTPS", "Ws"]))
    host = draw(
        st.one_of(hostnames(max_length=60), ipv4_hosts, ipv6_hosts.map(lambda h: f"[{h}]"))
    )
    port = draw(st.none() | st.integers(1, 65535))
    segments = draw(st.lists(url_text.map(lambda s: quote(s, safe="")), max_size=3))
    path = "".join(f"/{segment}" for segment in segments) or draw(st.sampled_from(["", "/"]))
    pairs = draw(query_pairs)
    if novnc_path:
        position = draw(st.integers(0, len(pairs)))
        pairs.insert(position, ("path", draw(novnc_path_values)))
    query = f"?{urlencode(pairs)}" if pairs else draw(st.sampled_from(["", "?"]))
    netloc = host if port is None else f"{host}:{port}"
    url = f"{scheme}://{netloc}{path}{query}"
    if len(url) > MAX_BASE_URL_LENGTH:
        url = f"{scheme}://{netloc}/"
    return url


any_base_urls: Final = st.one_of(base_urls(), base_urls(novnc_path=True))

# --- connections ------------------------------------------------------------

token_hashes: Final = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@st.composite
def connections(draw: st.DrawFn) -> ConsoleConnection:
    """Any valid ``ConsoleConnection``, every field exercised."""
    expires_at = draw(aware_datetimes())
    issued_at = draw(
        st.none()
        | st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)).map(
            lambda ago: expires_at - ago
        )
    )
    return ConsoleConnection(
        instance_uuid=draw(st.uuids()),
        host=draw(valid_hosts),
        port=draw(st.integers(1, 65535)),
        console_type=draw(st.sampled_from(ConsoleType)),
        options=draw(console_options),
        access_url_base=draw(st.none() | any_base_urls),
        token_hash=draw(token_hashes),
        expires_at=expires_at,
        issued_at=issued_at,
        mac=draw(st.none() | token_hashes),  # the MAC has a hash's shape
    )


json_values: Final = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
"""Arbitrary JSON documents."""


def json_object_with(keys: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, json_values, max_size=4)
