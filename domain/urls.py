"""Access URLs: the only place a clean token and an instance uuid meet a URL.

Built with ``urllib.parse`` so every value is percent-encoded; a base URL's
own query is kept byte for byte. The instance uuid rides along so that a
proxy can route to the right cell before it looks the token up.
"""

from __future__ import annotations

import functools
from typing import Final
from urllib.parse import (
    SplitResult,
    parse_qsl,
    quote,
    unquote_plus,
    urlencode,
    urlsplit,
    urlunsplit,
)
from uuid import UUID

from .errors import InvalidRequest
from .hosts import check_host
from .tokens import check_token

SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})
MAX_BASE_URL_LENGTH: Final = 1024
MAX_ACCESS_URL_LENGTH: Final = 4096
"""What ``parse_access_url`` reads at most: a URL built here is at most about
1.2 KB (a longest base and the appended token and uuid), and parsing time
grows with the length, so a longer one is refused before it is parsed."""
TOKEN_PARAM: Final = "token"  # noqa: S105 - a query key, not a secret
INSTANCE_PARAM: Final = "instance_uuid"
NOVNC_PATH_PARAM: Final = "path"
"""noVNC >= 1.1 ignores a top-level ``token``: it opens its websocket at
``/<path>``, so the token and uuid travel inside ``path`` as a query."""


def check_base_url(url: str) -> str:
    """Return ``url`` if tokens can be safely appended to it.

    Cached: a deployment has a handful of proxy base URLs, and rows repeat
    them. Only results are cached, never errors.

    Refuses what would leak or confuse: credentials in the URL, a host that
    is no hostname or IP literal (a browser reads ``\\`` as ``/``, so
    ``https://evil.example\\.proxy.example/`` goes to ``evil.example``), a
    fragment (a query after it is never sent), other schemes
    (``javascript:``), and query keys this library owns.
    """
    if not isinstance(url, str):
        raise InvalidRequest("access URL base must be text")
    return _check_base_url(url)


@functools.lru_cache(maxsize=1024)
def _check_base_url(url: str) -> str:
    if len(url) > MAX_BASE_URL_LENGTH:
        raise InvalidRequest(f"access URL base is longer than {MAX_BASE_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequest(
            "access URL base must be printable ASCII without spaces (use punycode)"
        )
    parts = _split(url, "access URL base is not a valid URL")
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidRequest("access URL base scheme must be one of http, https, ws, wss")
    if not parts.hostname:
        raise InvalidRequest("access URL base has no host")
    if "@" in parts.netloc:
        raise InvalidRequest("access URL base must not carry credentials")
    if "\\" in parts.netloc or not _is_url_host(parts.hostname, parts.netloc):
        raise InvalidRequest(
            "access URL base host must be a hostname or an IP address (IPv6 in brackets)"
        )
    if parts.fragment or url.endswith("#"):
        raise InvalidRequest("access URL base must not have a fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        pairs = None  # raised below, so the chain holds no input
    if pairs is None:
        raise InvalidRequest("access URL base has a malformed query")
    owned = {TOKEN_PARAM, INSTANCE_PARAM} & {key for key, _ in pairs}
    if owned:
        raise InvalidRequest(
            f"access URL base query already has {', '.join(sorted(owned))}, which this "
            "library sets"
        )
    paths = [value for key, value in pairs if key == NOVNC_PATH_PARAM]
    if len(paths) > 1:
        raise InvalidRequest("access URL base has more than one path parameter")
    if paths:
        _check_novnc_path(paths[0])
    return url


def build_access_url(base: str, token: str, instance_uuid: UUID, *, nested_in_path: bool) -> str:
    """Append the token and uuid to ``base``, whose query is kept byte for byte.

    With ``nested_in_path`` (noVNC) they go inside the ``path`` parameter:
    appended to the value of one the base already has (a proxy behind a
    prefix), whose bytes are kept too, or in a new one at the end.
    """
    if not isinstance(instance_uuid, UUID):
        raise InvalidRequest("instance uuid must be a UUID")
    pairs = [(TOKEN_PARAM, check_token(token)), (INSTANCE_PARAM, str(instance_uuid))]
    ours = urlencode(pairs)
    parts = urlsplit(check_base_url(base))
    pieces = parts.query.split("&") if parts.query else []
    if not nested_in_path:
        pieces.append(ours)
    else:
        at = next((i for i, piece in enumerate(pieces) if _key(piece) == NOVNC_PATH_PARAM), None)
        if at is None:
            pieces.append(f"{NOVNC_PATH_PARAM}={quote(f'?{ours}', safe='')}")
        else:  # the encoded tail starts with %, so it never joins the value's last escape
            key, _, value = pieces[at].partition("=")
            separator = "&" if "?" in unquote_plus(value) else "?"
            pieces[at] = f"{key}={value}{quote(separator + ours, safe='')}"
    return urlunsplit(parts._replace(query="&".join(pieces)))


def parse_access_url(url: str) -> tuple[str, str | None]:
    """Return the token and the instance uuid text carried by ``url``.

    Accepts a full access URL, a websocket request target (``/?token=...``)
    or a noVNC URL with both inside ``path``. Each may be carried once, at
    either level: noVNC sends what ``path`` holds, a plain client the top
    level, and a URL that could mean two tokens is refused. The uuid is
    returned as text; the caller decides whether it is well formed.
    """
    token, instance_uuid = read_access_params(url)
    if token is None:
        raise InvalidRequest("access URL carries no token")
    return token, instance_uuid


def read_access_params(url: str) -> tuple[str | None, str | None]:
    """``parse_access_url`` for a caller with another place to look for the
    token (a proxy's cookie): ``None`` where the URL carries none."""
    if not isinstance(url, str):
        raise InvalidRequest("access URL must be text")
    if len(url) > MAX_ACCESS_URL_LENGTH:
        raise InvalidRequest(f"access URL is longer than {MAX_ACCESS_URL_LENGTH} characters")
    pairs = _query_pairs(url, "access URL is not a valid URL")
    found = _ours(pairs, {})
    for key, value in pairs:
        if key == NOVNC_PATH_PARAM:
            _ours(_query_pairs(value, "access URL path parameter is malformed"), found)
    return found.get(TOKEN_PARAM), found.get(INSTANCE_PARAM)


def _split(url: str, problem: str) -> SplitResult:
    """``urlsplit`` with its port read, refusing with ``problem``; the
    ``ValueError`` is dropped before raising, so the chain holds no input."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None:
        raise InvalidRequest(problem)
    return parts


def _query_pairs(url: str, problem: str) -> list[tuple[str, str]]:
    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        pairs = None  # raised below, so the chain holds no input
    if pairs is None:
        raise InvalidRequest(problem)
    return pairs


def _key(piece: str) -> str:
    """The decoded key of one raw ``key=value`` piece, as ``parse_qsl`` reads it."""
    return unquote_plus(piece.partition("=")[0])


def _is_url_host(hostname: str, netloc: str) -> bool:
    """Whether ``urlsplit``'s host is one ``check_host`` takes, in its form:
    an IPv6 literal in brackets, anything else bare."""
    try:
        checked = check_host(hostname)
    except ValueError:
        return False
    return (":" in checked) == netloc.startswith("[")


def _ours(pairs: list[tuple[str, str]], found: dict[str, str]) -> dict[str, str]:
    """Add our parameters from a query to ``found``, refusing duplicates: two
    tokens in one URL would let an attacker choose which one a lenient parser
    (or noVNC, reading ``path``) reads."""
    for key, value in pairs:
        if key in (TOKEN_PARAM, INSTANCE_PARAM):
            if key in found:
                raise InvalidRequest(f"access URL carries {key} more than once")
            found[key] = value
    return found


def _check_novnc_path(path: str) -> None:
    """noVNC opens its websocket at ``/<path>``: a fragment would swallow the
    token we append, and ``//`` would make it an authority, another host."""
    if "#" in path or path.startswith("//"):
        raise InvalidRequest("access URL base path parameter must be a plain relative path")
    keys = {key for key, _ in _query_pairs(path, "access URL base path parameter is malformed")}
    if {TOKEN_PARAM, INSTANCE_PARAM} & keys:
        raise InvalidRequest("access URL base path parameter already carries a token")
