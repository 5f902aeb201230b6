"""Access URLs as the real clients need them."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from console_auth.domain import InvalidRequest, build_access_url, parse_access_url
from console_auth.domain.urls import check_base_url

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
    ],
)
def test_hostile_bases_are_refused_with_the_reason(base: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        check_base_url(base)
