"""The rules every HTTP endpoint applies to a console request, framework-free.

``read_request`` turns what a web framework saw (``RequestView``) into what
to validate (``ConsoleRequest``), or raises ``Refused``. In order:

1. The target must be an origin-form path of printable ASCII; ``//`` (or
   ``/\\``) at its start is refused, as in Nova's open-redirect fix.
2. ``X-Forwarded-For`` / ``-Proto`` count only when the TCP peer is in
   ``trusted_proxies``: the client is then the rightmost forwarded address
   outside them, and the scheme the nearest proxy's ``X-Forwarded-Proto``.
3. A browser's ``Origin`` must be in ``allowed_origins`` or be the request's
   own ``Host``, and its scheme must be the one the client used (an https
   page on a TLS hop, an http page on a plain one). A request without
   ``Origin`` comes from no browser (every browser sends it on a WebSocket
   handshake) and so carries no ambient credential a page could abuse: it
   is let through, as Nova does.
4. The token and instance uuid come from the target, plain query or noVNC
   ``path`` form, through ``read_access_params``. Without a token there, a
   ``token`` cookie (Nova's legacy form) is read; the target wins over a
   cookie, since old noVNC sends both and a stale cookie must not lock a
   user out; two different ``token`` cookies are refused as ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final
from urllib.parse import SplitResult, urlsplit

from console_auth.domain import ConsoleAuthError, InvalidRequest
from console_auth.domain.urls import TOKEN_PARAM, read_access_params

from .refusals import Reason, Refused, refusal_for

__all__ = [
    "ConsoleRequest",
    "Refused",
    "RequestRules",
    "RequestView",
    "client_address",
    "read_request",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MAX_ORIGIN_LENGTH: Final = 2048
"""Far above any real ``scheme://host:port``; longer is refused unparsed."""

Address = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the rules read of one HTTP request; the web framework fills it."""

    target: str
    """The raw request target, path and query, as received (aiohttp ``request.raw_path``)."""
    headers: Mapping[str, str]
    """Case-insensitive (aiohttp's ``CIMultiDictProxy``); first value per name. When it
    has ``getall`` (a multidict), every ``X-Forwarded-*`` line is read: HAProxy adds its
    own line after the client's instead of appending to it."""
    peer: str | None
    """The TCP peer's IP address, ``None`` for a Unix socket."""
    secure: bool
    """Whether the connection to us is TLS."""


@dataclass(frozen=True, slots=True)
class RequestRules:
    """A deployment's request settings."""

    allowed_origins: frozenset[str] = frozenset()
    """Extra origins (``scheme://host[:port]``) besides the request's own host; stored
    canonical (lower case, no default port). A malformed one raises ``InvalidRequest``."""
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    """Peers whose ``X-Forwarded-Proto`` / ``X-Forwarded-For`` are believed."""

    def __post_init__(self) -> None:
        canonical: set[str] = set()
        for origin in self.allowed_origins:
            key = _canonical_origin(origin)
            if key is None:
                raise InvalidRequest(
                    "allowed origins must be http(s)://host[:port], without path or query"
                )
            canonical.add(key)
        object.__setattr__(self, "allowed_origins", frozenset(canonical))


@dataclass(frozen=True, slots=True)
class ConsoleRequest:
    """A request that passed the rules: what to validate, and who asked."""

    token: str = field(repr=False)
    """As presented, not yet shape-checked: ``validate`` does that. Never logged."""
    instance_uuid: str | None
    """As presented; ``validate`` checks it. ``None`` for a cookie-borne token."""
    client: str | None
    """The client's address: the peer, or the last untrusted hop of ``X-Forwarded-For``."""
    scheme: str
    """``http`` or ``https`` as the client sees it."""


def read_request(view: RequestView, rules: RequestRules) -> ConsoleRequest:
    """Apply the rules; raise ``Refused`` with the answer otherwise."""
    _check_target(view.target)
    client, scheme = _client_and_scheme(view, rules)
    _check_origin(view.headers, scheme, rules)
    try:
        token, instance_uuid = read_access_params(view.target)
    except ConsoleAuthError as exc:
        raise refusal_for(exc) from exc
    if not token:  # an empty value carries none, as in Nova
        token = _cookie_token(view.headers.get("Cookie"))
    if not token:
        raise Refused(
            HTTPStatus.UNAUTHORIZED,
            Reason.MISSING_TOKEN,
            "the request carries no console token (query, noVNC path or cookie)",
        )
    return ConsoleRequest(token=token, instance_uuid=instance_uuid, client=client, scheme=scheme)


def client_address(view: RequestView, rules: RequestRules) -> str | None:
    """The client's address as ``read_request`` resolves it (the peer, or
    the last untrusted hop a trusted proxy forwarded); ``Refused`` for
    forwarding headers a trusted proxy cannot have written."""
    return _client_and_scheme(view, rules)[0]


def _check_target(target: str) -> None:
    # a request target is printable ASCII (RFC 9112); urlsplit drops tabs and newlines
    # silently, so "/\t/evil" would turn into "//evil" after this check
    if not (target.startswith("/") and target.isascii() and target.isprintable()):
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            Reason.BAD_TARGET,
            "the request target must be a path of printable ASCII",
        )
    if " " in target or target.startswith(("//", "/\\")):  # a browser reads \ as /
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            Reason.BAD_TARGET,
            "the request target must not start with // or contain spaces",
        )


def _cookie_token(header: str | None) -> str | None:
    """The ``token`` cookie's value; refused when two differ (which would be read?)."""
    if not header:
        return None
    values: set[str] = set()
    for pair in header.split(";"):
        name, equals, value = pair.partition("=")
        if equals and name.strip() == TOKEN_PARAM:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':  # RFC 6265 allows quotes
                value = value[1:-1]
            if value:  # how a server deletes a cookie
                values.add(value)
    if len(values) > 1:
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            Reason.AMBIGUOUS_TOKEN,
            "the request carries more than one token cookie; clear the console cookies",
        )
    return values.pop() if values else None


def _client_and_scheme(view: RequestView, rules: RequestRules) -> tuple[str | None, str]:
    scheme = "https" if view.secure else "http"
    peer = _address(view.peer) if view.peer is not None else None
    if peer is None or not _trusted(peer, rules):
        return view.peer, scheme
    proto = _header_values(view.headers, "X-Forwarded-Proto")
    if proto:
        scheme = proto[-1].lower()  # the nearest proxy's: a client can only prepend
        if scheme not in _DEFAULT_PORTS:
            raise _bad_forwarded("X-Forwarded-Proto must be http or https")
    client = peer
    for hop in reversed(_header_values(view.headers, "X-Forwarded-For")):
        address = _address(hop)
        if address is None:  # a trusted proxy writes addresses: it is misconfigured
            raise _bad_forwarded("X-Forwarded-For holds something that is no IP address")
        client = address
        if not _trusted(address, rules):
            break
    return str(client), scheme


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every non-empty comma-separated item of every ``name`` line, in order."""
    getall = getattr(headers, "getall", None)
    lines = getall(name, []) if callable(getall) else [headers.get(name)]
    items = (item.strip() for line in lines if line is not None for item in line.split(","))
    return [item for item in items if item]


def _address(text: str) -> Address | None:
    """An IP address as peers and ``X-Forwarded-For`` write it, port or not."""
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


def _trusted(address: Address, rules: RequestRules) -> bool:
    return any(address in network for network in rules.trusted_proxies)


def _bad_forwarded(message: str) -> Refused:
    return Refused(HTTPStatus.BAD_REQUEST, Reason.BAD_FORWARDED, message)


def _check_origin(headers: Mapping[str, str], scheme: str, rules: RequestRules) -> None:
    origin = headers.get("Origin")
    if origin is None:
        return
    key = _canonical_origin(origin)
    if key is None:
        raise Refused(HTTPStatus.FORBIDDEN, Reason.BAD_ORIGIN, "the Origin header is malformed")
    if not key.startswith(f"{scheme}://"):
        raise Refused(
            HTTPStatus.FORBIDDEN,
            Reason.ORIGIN_SCHEME_MISMATCH,
            f"the page's scheme does not match the connection's ({scheme})",
        )
    host = headers.get("Host")
    own = None if host is None else _canonical_origin(f"{scheme}://{host}")
    if key != own and key not in rules.allowed_origins:
        raise Refused(
            HTTPStatus.FORBIDDEN,
            Reason.BAD_ORIGIN,
            "the page's origin is neither this host nor an allowed origin",
        )


def _canonical_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or ``None``
    when ``origin`` is no http(s) origin (``null``, a path, credentials)."""
    if not _origin_shaped(origin):
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or not _authority_only(parts):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origin_shaped(origin: str) -> bool:
    """Short printable ASCII without spaces, not ending in an empty query or fragment."""
    return (
        len(origin) <= _MAX_ORIGIN_LENGTH
        and origin.isascii()
        and origin.isprintable()
        and " " not in origin
        and not origin.endswith(("?", "#"))
    )


def _authority_only(parts: SplitResult) -> bool:
    """No credentials, backslash, path, query or fragment: a scheme and an authority."""
    return not (
        "@" in parts.netloc or "\\" in parts.netloc or parts.path or parts.query or parts.fragment
    )
