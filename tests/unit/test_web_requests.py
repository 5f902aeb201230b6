"""The console proxy's request rules and refusals, framework-free."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_network
from urllib.parse import quote

import pytest
from multidict import CIMultiDict

from console_auth.adapters.web.refusals import Reason, refusal_for, wrong_console_kind
from console_auth.adapters.web.requests import (
    ConsoleRequest,
    Refused,
    RequestRules,
    RequestView,
    read_request,
)
from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleType,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    LeaseLost,
    PortAlreadyConnected,
    UnknownCell,
    UnsupportedVersion,
)
from console_auth.domain.urls import MAX_ACCESS_URL_LENGTH
from tests.chains import assert_chain_holds_no

TOKEN = "A" * 21 + "-_" + "z" * 20
OTHER = "B" * 43
INSTANCE = "6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab"
QUERY = f"token={TOKEN}&instance_uuid={INSTANCE}"
HOST = "console.example:6080"
NO_RULES = RequestRules()
PROXIES = RequestRules(trusted_proxies=(ip_network("10.0.0.0/8"), ip_network("fd00::/8")))


def view(
    target: str = f"/?{QUERY}",
    *,
    peer: str | None = "203.0.113.9",
    secure: bool = False,
    headers: list[tuple[str, str]] | None = None,
) -> RequestView:
    """A request as aiohttp would describe it; ``Host`` unless given."""
    lines = CIMultiDict(headers if headers is not None else [("Host", HOST)])
    return RequestView(target=target, headers=lines, peer=peer, secure=secure)


def refused(request: RequestView, rules: RequestRules = NO_RULES) -> Refused:
    with pytest.raises(Refused) as caught:
        read_request(request, rules)
    assert_chain_holds_no(caught.value, TOKEN, OTHER)
    return caught.value


# --- where the token is -------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        f"/?{QUERY}",
        f"/websockify?{QUERY}",  # noVNC: the page's path parameter, opened as /<path>
        f"/region-1/websockify?{QUERY}",
        f"/vnc.html?path={quote('websockify?' + QUERY, safe='')}",  # the page URL itself
    ],
)
def test_token_and_uuid_come_from_the_target(target: str) -> None:
    assert read_request(view(target), RequestRules()) == ConsoleRequest(
        token=TOKEN, instance_uuid=INSTANCE, client="203.0.113.9", scheme="http"
    )


def test_a_token_cookie_serves_when_the_target_has_none() -> None:
    request = view("/websockify", headers=[("Cookie", f"lang=de; token={TOKEN}; x=1")])
    read = read_request(request, RequestRules())
    assert (read.token, read.instance_uuid) == (TOKEN, None)


def test_a_quoted_or_repeated_equal_cookie_is_one_token() -> None:
    cookies = f'token="{TOKEN}"; token={TOKEN}'
    assert read_request(view("/", headers=[("Cookie", cookies)]), RequestRules()).token == TOKEN


def test_an_empty_query_token_defers_to_the_cookie() -> None:
    request = view(f"/?token=&instance_uuid={INSTANCE}", headers=[("Cookie", f"token={TOKEN}")])
    read = read_request(request, RequestRules())
    assert (read.token, read.instance_uuid) == (TOKEN, INSTANCE)


def test_the_target_wins_over_a_stale_cookie() -> None:
    """Old noVNC sends both, and a cookie from an earlier console outlives its token."""
    request = view(f"/?{QUERY}", headers=[("Cookie", f"token={OTHER}")])
    assert read_request(request, RequestRules()).token == TOKEN


def test_two_different_token_cookies_are_ambiguous() -> None:
    answer = refused(view("/", headers=[("Cookie", f"token={TOKEN}; token={OTHER}")]))
    assert (answer.status, answer.reason) == (400, Reason.AMBIGUOUS_TOKEN)


@pytest.mark.parametrize(
    "request_",
    [
        view("/websockify"),
        view(f"/?instance_uuid={INSTANCE}"),
        view("/?tokens=1", headers=[("Cookie", "tokenx=1; =token; token")]),
        view("/?token=", headers=[("Cookie", 'token=; token=""')]),
    ],
)
def test_no_token_anywhere_is_401(request_: RequestView) -> None:
    answer = refused(request_)
    assert (answer.status, answer.reason) == (401, Reason.MISSING_TOKEN)


@pytest.mark.parametrize(
    "target",
    [
        f"/?{QUERY}&token={OTHER}",
        f"/websockify?{QUERY}&path={quote('?token=' + OTHER, safe='')}",
        f"/?{QUERY}&instance_uuid={INSTANCE}",
        f"/?{QUERY}&pad=" + "a" * MAX_ACCESS_URL_LENGTH,
    ],
)
def test_two_tokens_or_an_over_long_target_are_400(target: str) -> None:
    answer = refused(view(target))
    assert (answer.status, answer.reason) == (400, Reason.BAD_REQUEST)


@pytest.mark.parametrize(
    "target",
    [
        f"//evil.example/?{QUERY}",
        f"/\\evil.example/?{QUERY}",
        f"/\t/evil.example/?{QUERY}",  # urlsplit drops the tab: // after the check
        f"/a b?{QUERY}",
        f"/é?{QUERY}",
        f"http://console.example/?{QUERY}",
        f"?{QUERY}",
        "",
    ],
)
def test_targets_that_are_no_plain_path_are_400(target: str) -> None:
    answer = refused(view(target))
    assert (answer.status, answer.reason) == (400, Reason.BAD_TARGET)


# --- who asked, over which scheme ---------------------------------------------


def test_forwarding_headers_of_an_untrusted_peer_are_ignored() -> None:
    request = view(
        peer="203.0.113.9",
        headers=[("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https")],
    )
    read = read_request(request, PROXIES)
    assert (read.client, read.scheme) == ("203.0.113.9", "http")


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("1.1.1.1, 198.51.100.1, 10.0.0.2", "198.51.100.1"),  # the client forged 1.1.1.1
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),  # every hop trusted: the first
        ("[2001:db8::1]:4711, 10.0.0.2:80", "2001:db8::1"),
        ("2001:db8::1, fd00::7", "2001:db8::1"),
        ("", "10.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(forwarded_for: str, client: str) -> None:
    request = view(peer="10.0.0.1", headers=[("X-Forwarded-For", forwarded_for)])
    assert read_request(request, PROXIES).client == client


def test_every_forwarded_for_line_counts() -> None:
    """HAProxy adds its own line after the one the client sent."""
    request = view(
        peer="10.0.0.1",
        headers=[("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.1")],
    )
    assert read_request(request, PROXIES).client == "198.51.100.1"


def test_an_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    request = view(peer="::ffff:10.0.0.1", headers=[("X-Forwarded-For", "198.51.100.1")])
    assert read_request(request, PROXIES).client == "198.51.100.1"


def test_an_ipv6_network_trusts_no_ipv4_peer() -> None:
    rules = RequestRules(trusted_proxies=(ip_network("::/0"),))
    request = view(peer="0.0.0.1", headers=[("X-Forwarded-For", "198.51.100.1")])
    assert read_request(request, rules).client == "0.0.0.1"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Forwarded-For", "198.51.100.1, not-an-address")],
        [("X-Forwarded-Proto", "gopher")],
    ],
)
def test_garbage_from_a_trusted_proxy_is_400(headers: list[tuple[str, str]]) -> None:
    answer = refused(view(peer="10.0.0.1", headers=headers), PROXIES)
    assert (answer.status, answer.reason) == (400, Reason.BAD_FORWARDED)


@pytest.mark.parametrize(
    ("secure", "proto", "scheme"),
    [
        (False, None, "http"),
        (True, None, "https"),
        (False, "HTTPS", "https"),
        (True, "http", "http"),
    ],
)
def test_the_scheme_is_the_hop_or_the_trusted_proxy_s(
    secure: bool, proto: str | None, scheme: str
) -> None:
    headers = [] if proto is None else [("X-Forwarded-Proto", f"http, {proto}")]
    request = view(peer="10.0.0.1", secure=secure, headers=headers)
    assert read_request(request, PROXIES).scheme == scheme


# --- Origin --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://console.example:6080", HOST, False),
        ("https://console.example:6080", HOST, True),
        ("HTTP://Console.Example:80", "console.example", False),  # case and default port
        ("https://console.example", "console.example:443", True),
        ("http://[2001:db8::1]:6080", "[2001:DB8::1]:6080", False),
        ("https://portal.example", HOST, True),  # allowed
    ],
)
def test_an_origin_of_this_host_or_an_allowed_one_passes(
    origin: str, host: str, secure: bool
) -> None:
    rules = RequestRules(allowed_origins=frozenset({"HTTPS://portal.example:443"}))
    request = view(secure=secure, headers=[("Host", host), ("Origin", origin)])
    assert read_request(request, rules).token == TOKEN


def test_a_request_without_origin_comes_from_no_browser_and_passes() -> None:
    assert read_request(view(headers=[]), RequestRules()).token == TOKEN


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://console.example:6081",  # same host, other port: another origin
        "http://console.example",
        "null",
        "http://console.example:6080/",
        "http://user@console.example:6080",
        "http://console.example:99999",
        "x" * 5000,
    ],
)
def test_other_origins_are_403(origin: str) -> None:
    answer = refused(view(headers=[("Host", HOST), ("Origin", origin)]))
    assert (answer.status, answer.reason) == (403, Reason.BAD_ORIGIN)


def test_without_host_only_allowed_origins_pass() -> None:
    answer = refused(view(headers=[("Origin", "http://console.example:6080")]))
    assert answer.reason == Reason.BAD_ORIGIN


@pytest.mark.parametrize(
    ("origin", "secure", "proxies"),
    [
        ("https://console.example:6080", False, []),  # https page, plain hop
        ("http://console.example:6080", True, []),  # http page, TLS hop
        ("https://console.example:6080", False, [("X-Forwarded-Proto", "https")]),  # untrusted
    ],
)
def test_an_origin_whose_scheme_misfits_the_hop_is_403(
    origin: str, secure: bool, proxies: list[tuple[str, str]]
) -> None:
    request = view(secure=secure, headers=[("Host", HOST), ("Origin", origin), *proxies])
    answer = refused(request)
    assert (answer.status, answer.reason) == (403, Reason.ORIGIN_SCHEME_MISMATCH)


def test_a_tls_terminating_trusted_proxy_makes_https_fit() -> None:
    request = view(
        peer="10.0.0.1",
        headers=[
            ("Host", HOST),
            ("Origin", "https://console.example:6080"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    assert read_request(request, PROXIES).scheme == "https"


def test_the_origin_is_checked_before_the_token() -> None:
    answer = refused(view("/websockify", headers=[("Host", HOST), ("Origin", "http://evil")]))
    assert answer.reason == Reason.BAD_ORIGIN


@pytest.mark.parametrize(
    "origin", ["console.example", "https://p.example/path", "ftp://p.example", "null"]
)
def test_a_malformed_allowed_origin_is_a_setting_error(origin: str) -> None:
    with pytest.raises(InvalidRequest, match="allowed origins"):
        RequestRules(allowed_origins=frozenset({origin}))


# --- refusals ------------------------------------------------------------------

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (InvalidToken(InvalidTokenReason.MALFORMED), 401, Reason.MALFORMED_TOKEN),
        (InvalidToken(InvalidTokenReason.UNKNOWN), 403, Reason.UNKNOWN_TOKEN),
        (InvalidToken(InvalidTokenReason.EXPIRED), 403, Reason.EXPIRED_TOKEN),
        (InvalidToken(InvalidTokenReason.TAMPERED), 403, Reason.TAMPERED_TOKEN),
        (InstanceMismatch("not this instance"), 403, Reason.WRONG_INSTANCE),
        (
            UnknownCell(f"no cell is known to hold instance {INSTANCE}"),
            403,
            Reason.UNKNOWN_INSTANCE,
        ),
        (InvalidRequest("instance uuid must be a UUID"), 400, Reason.BAD_REQUEST),
        (
            PortAlreadyConnected(
                f"serial port cn-7.internal:10000 already has a client ({SINCE})"
            ),
            409,
            Reason.PORT_IN_USE,
        ),
        (
            LeaseLost("the lease on serial port cn-7.internal:10000 is gone"),
            409,
            Reason.PORT_UNAVAILABLE,
        ),
        (BackendUnavailable("db at cn-7.internal is down"), 503, Reason.BACKEND_UNAVAILABLE),
        (UnsupportedVersion("ConsoleConnection 9.0"), 503, Reason.UNSUPPORTED_VERSION),
        (ConsoleAuthError("odd"), 500, Reason.INTERNAL_ERROR),
    ],
)
def test_each_error_has_its_answer(error: ConsoleAuthError, status: int, reason: Reason) -> None:
    answer = refusal_for(error)
    assert (answer.status, answer.reason) == (status, reason)
    assert "cn-7.internal" not in answer.message  # compute hosts stay in the logs
    assert INSTANCE not in answer.message


def test_tampered_reads_as_unknown_to_the_client() -> None:
    tampered = refusal_for(InvalidToken(InvalidTokenReason.TAMPERED))
    assert tampered.message == refusal_for(InvalidToken(InvalidTokenReason.UNKNOWN)).message


def test_a_wrong_console_kind_is_403_and_names_the_kind() -> None:
    answer = wrong_console_kind(ConsoleType.SERIAL)
    assert (answer.status, answer.reason) == (403, Reason.WRONG_CONSOLE_KIND)
    assert "serial" in answer.message
