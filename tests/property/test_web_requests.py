"""The proxy's request rules under hostile input: an answer or a ``Refused``,
never another exception, and never the token in what a refusal carries."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network
from typing import Final
from urllib.parse import quote

from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.web.refusals import Reason, refusal_for
from console_auth.adapters.web.requests import (
    ConsoleRequest,
    Refused,
    RequestRules,
    RequestView,
    read_request,
)
from console_auth.application import ConsoleAuthService
from console_auth.domain import ConsoleAuthError, ConsoleType
from tests.chains import assert_chain_holds_no
from tests.fakes import FakeClock, FixedTokenSource
from tests.property.strategies import tokens

NAMES: Final = ["Host", "Origin", "Cookie", "X-Forwarded-For", "X-Forwarded-Proto", "Other"]
RULES: Final = st.builds(
    RequestRules,
    allowed_origins=st.frozensets(
        st.sampled_from(["https://portal.example", "http://[::1]:8080", "http://10.0.0.1"])
    ),
    trusted_proxies=st.lists(
        st.sampled_from(["10.0.0.0/8", "::1/128", "::/0", "0.0.0.0/0", "fd00::/8"]).map(
            ip_network
        ),
        max_size=3,
    ).map(tuple),
)
ADDRESSES: Final = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:{a.packed[0]}"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4).map(lambda a: f"{a}:65536"),
)
PIECES: Final = st.sampled_from(
    ["/", "//", "\\", "?", "&", "=", "#", "%", "%3F", "%26", "%3D", "%25", "+", " ", "\t",
     "\x00", "é", "\ud800", "path=", "token=", "instance_uuid=", "websockify", ";", ",",
     '"', "[", "]", ":", "@", "http://", "https://", "null", "x" * 5000]
)  # fmt: skip
HOSTILE: Final = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(PIECES, ADDRESSES, st.text(max_size=10)), max_size=20).map("".join),
)
WELL_FORMED: Final = {  # so that later rules are reached, not only the first refusal
    "Host": st.sampled_from(["console.example", "console.example:6080", "[::1]:6080"]),
    "Origin": st.tuples(
        st.sampled_from(["http://", "https://", "HTTP://", "ws://", ""]),
        st.lists(st.one_of(PIECES, ADDRESSES, st.just("console.example")), max_size=4).map(
            "".join
        ),
    ).map("".join),
    "Cookie": st.lists(
        st.tuples(st.sampled_from(["token", " token", "x", ""]), st.text(max_size=50)).map(
            "=".join
        ),
        max_size=5,
    ).map(";".join),
    "X-Forwarded-For": st.lists(ADDRESSES, max_size=4).map(", ".join),
    "X-Forwarded-Proto": st.sampled_from(["http", "https", "HTTPS", "http, https", ""]),
    "Other": st.just("1"),
}
HEADERS: Final = st.lists(
    st.sampled_from(NAMES).flatmap(
        lambda name: st.tuples(st.just(name), st.one_of(HOSTILE, WELL_FORMED[name]))
    ),
    max_size=8,
)
TARGETS: Final = st.one_of(
    HOSTILE,
    st.tuples(st.sampled_from(["/?", "/websockify?", "/?path=%3F"]), HOSTILE).map("".join),
    st.sampled_from(["/", "/websockify", f"/?token={'A' * 43}"]),
)
PEERS: Final = st.one_of(st.none(), ADDRESSES, st.text(max_size=40))
STATUSES: Final = {400, 401, 403}


@example(  # urlsplit and .port raise ValueError on these
    target="/?token=x",
    headers=[("Host", "["), ("Origin", "http://["), ("X-Forwarded-For", "[::1")],
    peer="::1",
    secure=False,
    rules=RequestRules(trusted_proxies=(ip_network("::1/128"),)),
)
@example(
    target="/?token=x",
    headers=[("Host", "a:b"), ("Origin", "http://a:99999")],
    peer=None,
    secure=False,
    rules=RequestRules(),
)
@given(
    target=TARGETS,
    headers=HEADERS,
    peer=PEERS,
    secure=st.booleans(),
    rules=RULES,
)
def test_hostile_requests_get_a_request_or_a_refusal(
    target: str,
    headers: list[tuple[str, str]],
    peer: str | None,
    secure: bool,
    rules: RequestRules,
) -> None:
    view = RequestView(target=target, headers=CIMultiDict(headers), peer=peer, secure=secure)
    outcome = _outcome(view, rules)
    if isinstance(outcome, Refused):
        assert outcome.status in STATUSES
        assert outcome.reason in set(Reason)
    else:
        assert outcome.scheme in {"http", "https"}
        assert outcome.token


def _outcome(view: RequestView, rules: RequestRules) -> ConsoleRequest | Refused:
    try:
        return read_request(view, rules)
    except Refused as refusal:
        return refusal


@given(headers=HEADERS, peer=ADDRESSES, secure=st.booleans())
def test_forwarding_headers_of_an_untrusted_peer_change_nothing(
    headers: list[tuple[str, str]], peer: str, secure: bool
) -> None:
    """Only a trusted peer's X-Forwarded-* count; here no peer is trusted."""
    rules = RequestRules(trusted_proxies=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")))
    bare = [(name, value) for name, value in headers if not name.startswith("X-Forwarded")]
    forged = [*bare, ("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Proto", "https")]
    if "192.0.2." in peer or "2001:db8:" in peer:
        peer = "198.51.100.1"

    def outcome(lines: list[tuple[str, str]]) -> ConsoleRequest | tuple[int, str]:
        view = RequestView(f"/?token={'A' * 43}", CIMultiDict(lines), peer, secure)
        read = _outcome(view, rules)
        return (read.status, read.reason) if isinstance(read, Refused) else read

    assert outcome(headers) == outcome(bare) == outcome(forged)


def _placements(token: str, instance: str) -> st.SearchStrategy[tuple[str, list[tuple[str, str]]]]:
    """The token where clients put it, and where hostile ones do: twice, in
    headers that are refused, beside junk."""
    query = f"token={token}&instance_uuid={instance}"
    targets = st.sampled_from(
        [
            f"/?{query}",
            f"/websockify?{query}",
            f"/?path={quote('?' + query, safe='')}",
            f"/?{query}&token={token}",
            f"/?{query}&path={quote('?token=' + token, safe='')}",
            f"//{token}/?{query}",
            f"/{token}\t?{query}",
            f"/?{query}&x=" + "y" * 5000,
            f"/?token={token}%ZZ&instance_uuid={token}",
            "/websockify",
        ]
    )
    hostile = st.sampled_from(
        [
            f"token={token}",
            f"token={token}; token={token}x",
            f"http://{token}",
            f"{token}, 10.0.0.1",
            token,
            f"{token}\x00",
        ]
    )
    values = {
        "Host": st.just("console.example"),
        "Origin": st.sampled_from(["http://console.example", "https://console.example"]),
        "X-Forwarded-For": st.just("198.51.100.1"),
        "X-Forwarded-Proto": st.just("https"),
        "Cookie": st.just(f"token={token}"),
    }
    headers = st.tuples(*(_absent_or(name, st.one_of(hostile, v)) for name, v in values.items()))
    return st.tuples(targets, headers.map(lambda pairs: [p for p in pairs if p is not None]))


def _absent_or(
    name: str, values: st.SearchStrategy[str]
) -> st.SearchStrategy[tuple[str, str] | None]:
    return st.one_of(st.none(), st.tuples(st.just(name), values))


@given(
    data=st.data(),
    token=tokens,
    peer=st.one_of(st.sampled_from(["10.0.0.1", "::1"]), PEERS),  # trusted, so XFF is read
    expire=st.booleans(),
    rules=RULES,
)
def test_a_refusal_never_carries_the_token(
    data: st.DataObject, token: str, peer: str | None, expire: bool, rules: RequestRules
) -> None:
    """From the rules through ``validate`` and ``refusal_for``, as the proxy runs them."""
    clock = FakeClock()
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), clock, FixedTokenSource(token[:3])
    )
    issued = service.authorize(
        instance_uuid=data.draw(st.uuids()),
        host="compute-1",
        port=5900,
        console_type=ConsoleType.NOVNC,
    )
    if data.draw(st.booleans()):
        token = issued.token.get_secret_value()
    instance = data.draw(
        st.sampled_from([issued.connection.instance_uuid, data.draw(st.uuids())]).map(str)
    )
    target, headers = data.draw(_placements(token, instance))
    if expire:
        clock.advance(timedelta(hours=1))
    view = RequestView(target, CIMultiDict(headers), peer, secure=data.draw(st.booleans()))
    try:
        read = read_request(view, rules)
        try:
            service.validate(read.token, read.instance_uuid)
        except ConsoleAuthError as exc:
            raise refusal_for(exc) from exc
    except Refused as refusal:
        assert_chain_holds_no(refusal, token)
