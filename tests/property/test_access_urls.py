"""Access URLs: token and uuid survive the trip, the base's query is kept,
hostile bases and ambiguous URLs are refused before anything is stored."""

from __future__ import annotations

import uuid
from typing import Final
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.adapters.system import SecretsTokenSource
from console_auth.domain import (
    ConsoleType,
    InvalidRequest,
    build_access_url,
    parse_access_url,
)
from console_auth.domain.urls import check_base_url
from tests.backends import Backend
from tests.property.strategies import (
    MAX_BASE_URL_LENGTH,
    any_base_urls,
    base_urls,
    hostnames,
    raw_novnc_paths,
    tokens,
)
from tests.property.support import harness

INSTANCE = uuid.UUID("5d6c8f0e-3b7a-4c1d-9e2f-a0b1c2d3e4f5")
TOKEN = "T" * 43


def _pairs(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def _raw_pieces_kept(base: str, url: str) -> bool:
    """The base's raw query pieces are in the built URL byte for byte, in
    order; only the ``path`` piece may be longer, or one is added last."""
    before = urlsplit(base).query.split("&") if urlsplit(base).query else []
    after = urlsplit(url).query.split("&")
    is_path = [unquote_plus(piece.partition("=")[0]) == "path" for piece in before]
    if not any(is_path):
        return after[: len(before)] == before and len(after) == len(before) + 1
    return len(after) == len(before) and all(
        new.startswith(old) if path else new == old
        for old, new, path in zip(before, after, is_path, strict=True)
    )


@given(base=any_base_urls)
def test_generated_bases_are_accepted(base: str) -> None:
    assert check_base_url(base) == base


@given(base=any_base_urls, token=tokens, instance=st.uuids())
@example(base="http://h", token=TOKEN, instance=INSTANCE)
@example(base="https://h/?", token=TOKEN, instance=INSTANCE)
@example(base="wss://[::1]:6080/a?=&b=%2B+", token=TOKEN, instance=INSTANCE)
def test_top_level_round_trip_keeps_the_base_query(
    base: str, token: str, instance: uuid.UUID
) -> None:
    url = build_access_url(base, token, instance, nested_in_path=False)
    assert parse_access_url(url) == (token, str(instance))
    assert _pairs(url) == [*_pairs(base), ("token", token), ("instance_uuid", str(instance))]
    built, original = urlsplit(url), urlsplit(base)
    assert (built.scheme, built.netloc, built.path) == (
        original.scheme,
        original.netloc,
        original.path,
    )
    assert built.query.startswith(original.query)  # kept byte for byte
    assert built.fragment == ""


@given(base=any_base_urls, token=tokens, instance=st.uuids())
@example(base="http://h/vnc.html", token=TOKEN, instance=INSTANCE)
@example(base="http://h/vnc.html?path=", token=TOKEN, instance=INSTANCE)
@example(base="http://h/vnc.html?a=1&path=p%3Fx%3D1&b=2", token=TOKEN, instance=INSTANCE)
@example(base="http://h/vnc.html?path=%3F", token=TOKEN, instance=INSTANCE)
def test_novnc_round_trip_nests_in_path_and_keeps_the_rest(
    base: str, token: str, instance: uuid.UUID
) -> None:
    url = build_access_url(base, token, instance, nested_in_path=True)
    assert parse_access_url(url) == (token, str(instance))
    before, after = _pairs(base), _pairs(url)
    assert [p for p in after if p[0] != "path"] == [p for p in before if p[0] != "path"]
    paths = [value for key, value in after if key == "path"]
    assert len(paths) == 1
    original = next((value for key, value in before if key == "path"), "")
    assert paths[0].startswith(original)
    assert _raw_pieces_kept(base, url)
    assert _pairs(paths[0]) == [
        *_pairs(original),
        ("token", token),
        ("instance_uuid", str(instance)),
    ]
    assert not {"token", "instance_uuid"} & {key for key, _ in after}


@given(base=any_base_urls, console_type=st.sampled_from(ConsoleType), instance=st.uuids())
def test_issued_access_url_validates_to_the_stored_connection(
    backend: Backend, base: str, console_type: ConsoleType, instance: uuid.UUID
) -> None:
    with harness(backend, source=SecretsTokenSource()) as h:
        issued = h.authorize(instance, "compute-1", 5900, console_type, access_url_base=base)
        url = issued.access_url
        assert url is not None
        token = issued.token.get_secret_value()
        assert parse_access_url(url) == (token, str(instance))
        assert h.service.validate_url(url) == issued.connection
        assert issued.connection.access_url_base == base


# --- hostile bases ------------------------------------------------------------

_printable_ascii: Final = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30
)


def _insert(base: str, position: int, text: str) -> str:
    cut = position % (len(base) + 1)
    return f"{base[:cut]}{text}{base[cut:]}"


def _with_query(base: str, extra: str) -> str:
    if "?" not in base:
        return f"{base}?{extra}"
    return f"{base}{extra}" if base.endswith("?") else f"{base}&{extra}"


bad_schemes: Final = st.one_of(
    st.sampled_from(
        [
            "javascript:alert(1)",
            "javascript://h/%0aalert(1)",
            "JavaScript:alert(document.cookie)",
            "data:text/html,<script>alert(1)</script>",
            "data:text/html;base64,PHNjcmlwdD4=",
            "file:///etc/passwd",
            "ftp://h/",
            "vbscript:msgbox",
            "//h/no-scheme",
            "h/no-scheme",
        ]
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}:{rest}",
        st.sampled_from(["javascript", "data", "file", "ftp", "gopher", "mailto", "blob"]),
        _printable_ascii,
    ),
)
credentials: Final = st.builds(
    lambda base, userinfo: base.replace("://", f"://{userinfo}@", 1),
    base_urls(),
    st.sampled_from(["user:pw", "user", ":pw", "", "a%40b:c"]),
)
fragments: Final = st.builds(lambda base, frag: f"{base}#{frag}", base_urls(), _printable_ascii)
bad_characters: Final = st.builds(
    _insert,
    base_urls(),
    st.integers(0, 2000),
    st.characters(categories=["Cc", "Zs", "Zl", "Zp"])
    | st.characters(min_codepoint=0x80)
    | st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x7f", "\u00a0", "é", "\u2028"]),
)
over_long: Final = st.builds(
    lambda base, extra: f"{base.split('?')[0].rstrip('/')}/{'a' * (MAX_BASE_URL_LENGTH + extra)}",
    base_urls(),
    st.integers(1, 50),
)
reserved_keys: Final = st.builds(
    lambda base, key, value: _with_query(base, f"{key}={quote(value)}"),
    base_urls(),
    st.sampled_from(["token", "instance_uuid", "tok%65n", "instance%5Fuuid", "instance_uuid"]),
    _printable_ascii,
)
path_carrying_ours: Final = st.builds(
    lambda base, shape, key: _with_query(base, urlencode([("path", shape.format(key))])),
    base_urls(),
    st.sampled_from(["?{}=x", "websockify?{}=x", "a?b=1&{}=x", "?{}", "//h/p?{}="]),
    st.sampled_from(["token", "instance_uuid"]),
)
no_host_or_bad_port: Final = st.sampled_from(
    [
        "http:///x",
        "https://:443/",
        "ws://?a=1",
        "http://h:99999/",
        "http://h:x/",
        "http://h:-1/",
        "http://[::1/",
        "http://[not-ip]/",
        "http:",
        "",
    ]
)
malformed_queries: Final = st.sampled_from(
    ["http://h/?a", "http://h/?a=1&&b=2", "http://h/?&", "http://h/?a=1&", "http://h/?=&b"]
)
hostile_bases: Final = st.one_of(
    bad_schemes,
    credentials,
    fragments,
    bad_characters,
    over_long,
    reserved_keys,
    path_carrying_ours,
    no_host_or_bad_port,
    malformed_queries,
)


@given(base=hostile_bases)
@example(base="http://h/?token=x")
@example(base="http://h/?a=1#")
@example(base="http://user:pw@h/")
def test_hostile_bases_are_refused(base: str) -> None:
    with pytest.raises(InvalidRequest):
        check_base_url(base)


def test_length_limit_is_exact() -> None:
    stem = "http://h/"
    assert check_base_url(stem + "a" * (MAX_BASE_URL_LENGTH - len(stem)))
    with pytest.raises(InvalidRequest):
        check_base_url(stem + "a" * (MAX_BASE_URL_LENGTH - len(stem) + 1))


@given(base=hostile_bases, console_type=st.sampled_from(ConsoleType))
def test_authorize_with_a_hostile_base_stores_nothing(
    backend: Backend, base: str, console_type: ConsoleType
) -> None:
    with harness(backend) as h:
        h.authorize(INSTANCE, "compute-1", 5900, console_type, access_url_base="http://h/")
        with pytest.raises(InvalidRequest):
            h.service.authorize(INSTANCE, "compute-1", 5900, console_type, access_url_base=base)
        h.assert_store_is_exactly_issued()


# --- URLs presented to parse ---------------------------------------------------


@given(
    base=base_urls(),
    token=tokens,
    other=tokens,
    instance=st.uuids(),
    key=st.sampled_from(["token", "instance_uuid"]),
    built_nested=st.booleans(),
    added_nested=st.booleans(),
)
def test_a_url_carrying_our_keys_twice_is_refused(
    base: str,
    token: str,
    other: str,
    instance: uuid.UUID,
    key: str,
    built_nested: bool,
    added_nested: bool,
) -> None:
    """At the top level, inside noVNC's path, or one at each: noVNC sends
    the one in path, so a URL that could mean two is refused."""
    url = build_access_url(base, token, instance, nested_in_path=built_nested)
    added = urlencode([("path", f"?{key}={other}")]) if added_nested else f"{key}={other}"
    url = _with_query(url, added)
    with pytest.raises(InvalidRequest):
        parse_access_url(url)


@given(
    url=st.one_of(
        st.text(),
        st.builds(lambda q: f"http://h/?{q}", st.text()),
        st.builds(lambda p: f"/?{urlencode([('path', p)])}", raw_novnc_paths),
        base_urls(),
    )
)
@example(url="http://[::1/?token=" + TOKEN)
@example(url="/?token=" + TOKEN)
@example(url="/?path=%3Ftoken%3D" + TOKEN)
@example(url=f"/?{urlencode([('path', f'//[?token={TOKEN}')])}")  # urlsplit raises inside
@example(url=f"/?{urlencode([('path', f'//]?token={TOKEN}')])}")
@example(url=f"/?{urlencode([('path', f'//[x]?token={TOKEN}')])}")
def test_parse_returns_our_params_or_raises_invalid_request(url: str) -> None:
    try:
        token, instance = parse_access_url(url)
    except InvalidRequest:
        return
    found = dict(_pairs(url))
    if "token" not in found:
        found = dict(_pairs(found["path"]))
    assert token == found["token"]
    assert instance == found.get("instance_uuid")


@given(path=raw_novnc_paths, token=tokens, instance=st.uuids())
@example(path="x#y", token=TOKEN, instance=INSTANCE)  # '#' swallowed the appended query
@example(path="a?b=1#c", token=TOKEN, instance=INSTANCE)
@example(path="//[", token=TOKEN, instance=INSTANCE)  # urlsplit raised ValueError on parse
@example(path="//[x]", token=TOKEN, instance=INSTANCE)
@example(path="\t//h/x", token=TOKEN, instance=INSTANCE)  # urlsplit drops the tab
def test_a_novnc_path_is_refused_or_round_trips(
    path: str, token: str, instance: uuid.UUID
) -> None:
    base = f"http://h/vnc.html?{urlencode([('path', path)])}"
    try:
        check_base_url(base)
    except InvalidRequest:
        return
    url = build_access_url(base, token, instance, nested_in_path=True)
    assert parse_access_url(url) == (token, str(instance))


def test_a_novnc_base_with_two_paths_is_refused_or_keeps_both() -> None:
    base = "http://h/vnc.html?path=a&path=b"
    try:
        check_base_url(base)
    except InvalidRequest:
        return
    url = build_access_url(base, TOKEN, INSTANCE, nested_in_path=True)
    assert [v for k, v in _pairs(url) if k == "path"][1:] == ["b"]


# --- proxy hosts ----------------------------------------------------------------

_NOT_IN_A_HOST: Final = "\\%_!$&'()*+,;=~\"<>^`{|}"
"""Characters that stay inside ``urlsplit``'s host but no hostname holds; a
browser reads ``\\`` as ``/`` and sends the user elsewhere."""


@given(
    host=hostnames(max_length=60),
    at=st.integers(0, 60),
    character=st.sampled_from(_NOT_IN_A_HOST),
    rest=st.sampled_from(["/", "/vnc.html?path=websockify", ":6080/", ""]),
)
@example(host="cons.example.org", at=0, character="\\", rest="/")
@example(host="evil.example.cons.example.org", at=12, character="\\", rest="/")
def test_a_base_whose_host_is_no_hostname_is_refused(
    host: str, at: int, character: str, rest: str
) -> None:
    cut = at % (len(host) + 1)
    base = f"https://{host[:cut]}{character}{host[cut:]}{rest}"
    with pytest.raises(InvalidRequest, match="host"):
        check_base_url(base)
