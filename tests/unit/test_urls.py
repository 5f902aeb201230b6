"""Access URLs as the real clients need them."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from console_auth.domain import InvalidRequest, InvalidToken, build_access_url, parse_access_url
from console_auth.domain.urls import MAX_ACCESS_URL_LENGTH, MAX_BASE_URL_LENGTH, check_base_url

TOKEN = "A" * 21 + "-_" + "z" * 20
INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")


def test_plain_clients_get_top_level_parameters_after_the_existing_query() -> None:
    url = build_access_url(
        "https://proxy.example:6082/spice_auto.html?a=1&b=x%20y",
        TOKEN,
        INSTANCE,
        nested_in_path=False,
    )
    assert url == (
        "https://proxy.example:6082/spice_auto.html?a=1&b=x%20y"
        f"&token={TOKEN}&instance_uuid={INSTANCE}"
    )


def test_novnc_gets_both_inside_the_path_its_websocket_opens() -> None:
    url = build_access_url(
        "https://proxy.example/vnc_lite.html", TOKEN, INSTANCE, nested_in_path=True
    )
    query = parse_qs(urlsplit(url).query)
    assert query == {"path": [f"?token={TOKEN}&instance_uuid={INSTANCE}"]}


def test_novnc_merges_into_an_existing_path_prefix() -> None:
    base = "https://proxy.example/vnc.html?path=region-1%2Fwebsockify&lang=de"
    url = build_access_url(base, TOKEN, INSTANCE, nested_in_path=True)
    query = parse_qs(urlsplit(url).query)
    assert query["lang"] == ["de"]
    assert query["path"] == [f"region-1/websockify?token={TOKEN}&instance_uuid={INSTANCE}"]
    assert parse_access_url(url) == (TOKEN, str(INSTANCE))


def test_a_websocket_request_target_is_parsed() -> None:
    assert parse_access_url(f"/?token={TOKEN}") == (TOKEN, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://p.example/?instance_uuid=x",
        f"https://p.example/?token={TOKEN}&token=other",
        f"https://p.example/?path=%3Ftoken%3D{TOKEN}%26token%3Dx",
    ],
)
def test_urls_without_exactly_one_token_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="token"):
        parse_access_url(url)


@pytest.mark.parametrize(
    ("base", "problem"),
    [
        ("javascript:alert(1)//", "scheme"),
        ("ftp://p.example/", "scheme"),
        ("https:///nohost", "no host"),
        ("https://u:p@p.example/", "credentials"),
        ("https://p.example/#frag", "fragment"),
        ("https://p.example/ x", "printable"),
        ("https://p.example/\x00", "printable"),
        ("https://bücher.example/", "ASCII"),
        ("https://p.example:99999/", "valid URL"),
        ("https://p.example/?instance_uuid=1", "instance_uuid"),
        ("https://p.example/?path=%3Ftoken%3Dx", "path"),
        ("https://p.example/" + "a" * 1024, "longer"),
        ("https://evil.example\\.cons.example.org/", "host"),
        ("https://evil.example\\cons.example.org/", "host"),
        ("https://cons.example.org\\:443/", "host"),
        ("http://evil%2Eexample/", "host"),
        ("http://a_b.example/", "host"),
        ("http://-a.example/", "host"),
        ("http://a..example/", "host"),
        ("http://1.2.3/", "host"),
        ("http://0x7f.1/", "host"),
        ("http://evil.example;.p.example/", "host"),
        ("http://[v1.evil]/", "host"),
        ("http://[::1%25eth0 ]/", "printable"),
        (None, "text"),
        (b"http://p.example/", "text"),
    ],
)
def test_hostile_bases_are_refused_with_the_reason(base: object, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        check_base_url(base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "base",
    ["http://[::1]:6080/", "https://proxy.example./", "wss://10.0.0.1/", "http://P.Example/"],
)
def test_proxy_hosts_of_every_form_are_accepted(base: str) -> None:
    assert check_base_url(base) == base


def test_novnc_keeps_the_base_query_byte_for_byte_and_extends_only_path() -> None:
    base = "https://p.example/vnc.html?a=x%20y&path=p%2Fq+r&b=%7E~"
    url = build_access_url(base, TOKEN, INSTANCE, nested_in_path=True)
    assert url == (
        "https://p.example/vnc.html?a=x%20y&path=p%2Fq+r"
        f"%3Ftoken%3D{TOKEN}%26instance_uuid%3D{INSTANCE}&b=%7E~"
    )
    assert parse_access_url(url) == (TOKEN, str(INSTANCE))
    bare = build_access_url(
        "https://p.example/vnc.html?a=x%20y", TOKEN, INSTANCE, nested_in_path=True
    )
    assert bare.startswith("https://p.example/vnc.html?a=x%20y&path=%3Ftoken%3D")


@pytest.mark.parametrize("nested", [False, True])
def test_the_longest_url_this_library_builds_is_read_back(nested: bool) -> None:
    stem = "https://proxy.example:6080/vnc.html?path=websockify%3Fa%3D1&x="
    base = stem + "y" * (MAX_BASE_URL_LENGTH - len(stem))
    assert check_base_url(base) == base
    url = build_access_url(base, TOKEN, INSTANCE, nested_in_path=nested)
    ours = quote(f"&token={TOKEN}&instance_uuid={INSTANCE}", safe="" if nested else "=&")
    assert len(url) == MAX_BASE_URL_LENGTH + len(ours) <= 1200 < MAX_ACCESS_URL_LENGTH
    assert parse_access_url(url) == (TOKEN, str(INSTANCE))


@pytest.mark.parametrize(
    "url",
    [
        "/?" + "a=1&" * 1100 + f"token={TOKEN}",
        "/?x=" + "a" * MAX_ACCESS_URL_LENGTH + f"&token={TOKEN}",
    ],
)
def test_an_over_long_url_is_refused_before_it_is_parsed(url: str) -> None:
    with pytest.raises(InvalidRequest, match=f"longer than {MAX_ACCESS_URL_LENGTH}") as caught:
        parse_access_url(url)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"/?token={TOKEN}&path=%3Ftoken%3D{TOKEN}",
        f"/?path=%3Ftoken%3D{TOKEN}&token={TOKEN}",
        f"/?token={TOKEN}&path=%3Finstance_uuid%3D{INSTANCE}&instance_uuid={INSTANCE}",
        f"/?path=%3Ftoken%3D{TOKEN}&path=%3Ftoken%3D{TOKEN}",
    ],
)
def test_a_token_or_uuid_carried_at_two_levels_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="more than once"):
        parse_access_url(url)


@pytest.mark.parametrize(
    ("base", "token", "instance"),
    [
        (None, TOKEN, INSTANCE),
        ("javascript:x", TOKEN, INSTANCE),
        ("https://p.example/", "short", INSTANCE),
        ("https://p.example/", None, INSTANCE),
        ("https://p.example/", TOKEN, str(INSTANCE)),
    ],
)
def test_build_refuses_what_it_could_not_read_back(
    base: object, token: object, instance: object
) -> None:
    with pytest.raises((InvalidRequest, InvalidToken)):
        build_access_url(base, token, instance, nested_in_path=True)  # type: ignore[arg-type]
