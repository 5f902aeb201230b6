"""Access URLs: the only place a clean token and an instance uuid meet a URL.

Built with ``urllib.parse`` so every value is percent-encoded; a base URL's
own query is kept byte for byte. The instance uuid rides along so that a
proxy can route to the right cell before it looks the token up.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

from .errors import InvalidRequest

SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})
MAX_BASE_URL_LENGTH: Final = 1024
TOKEN_PARAM: Final = "token"  # noqa: S105 - a query key, not a secret
INSTANCE_PARAM: Final = "instance_uuid"
NOVNC_PATH_PARAM: Final = "path"
"""noVNC >= 1.1 ignores a top-level ``token``: it opens its websocket at
``/<path>``, so the token and uuid travel inside ``path`` as a query."""


def check_base_url(url: str) -> str:
    """Return ``url`` if tokens can be safely appended to it.

    Refuses what would leak or confuse: credentials in the URL, a fragment
    (a query after it is never sent), other schemes (``javascript:``), and
    query keys this library owns.
    """
    if len(url) > MAX_BASE_URL_LENGTH:
        raise InvalidRequest(f"access URL base is longer than {MAX_BASE_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequest(
            "access URL base must be printable ASCII without spaces (use punycode)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequest(f"access URL base is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidRequest("access URL base scheme must be one of http, https, ws, wss")
    if not parts.hostname:
        raise InvalidRequest("access URL base has no host")
    if "@" in parts.netloc:
        raise InvalidRequest("access URL base must not carry credentials")
    if parts.fragment or url.endswith("#"):
        raise InvalidRequest("access URL base must not have a fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvalidRequest("access URL base has a malformed query") from None
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
    """Append the token and uuid to ``base``.

    With ``nested_in_path`` (noVNC) they go inside the ``path`` parameter,
    merged into one the base may already have (a proxy behind a prefix).
    """
    ours = urlencode([(TOKEN_PARAM, token), (INSTANCE_PARAM, str(instance_uuid))])
    parts = urlsplit(base)
    if not nested_in_path:
        query = f"{parts.query}&{ours}" if parts.query else ours
        return urlunsplit(parts._replace(query=query))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    path = next((value for key, value in pairs if key == NOVNC_PATH_PARAM), "")
    path = f"{path}{'&' if '?' in path else '?'}{ours}"
    rest = [(key, value) for key, value in pairs if key != NOVNC_PATH_PARAM]
    return urlunsplit(parts._replace(query=urlencode([*rest, (NOVNC_PATH_PARAM, path)])))


def parse_access_url(url: str) -> tuple[str, str | None]:
    """Return the token and the instance uuid text carried by ``url``.

    Accepts a full access URL, a websocket request target (``/?token=...``)
    or a noVNC URL with both inside ``path``. The uuid is returned as text;
    the caller decides whether it is well formed.
    """
    try:
        query = urlsplit(url).query
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        raise InvalidRequest("access URL is not a valid URL") from None
    found = _ours(pairs)
    if TOKEN_PARAM not in found:
        for key, value in pairs:
            if key == NOVNC_PATH_PARAM:
                try:
                    nested = parse_qsl(urlsplit(value).query, keep_blank_values=True)
                except ValueError:
                    raise InvalidRequest("access URL path parameter is malformed") from None
                found = _ours(nested)
                break
    if TOKEN_PARAM not in found:
        raise InvalidRequest("access URL carries no token")
    return found[TOKEN_PARAM], found.get(INSTANCE_PARAM)


def _ours(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Our parameters from a query, refusing duplicates: two tokens in one URL
    would let an attacker choose which one a lenient parser reads."""
    found: dict[str, str] = {}
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
    try:
        keys = {key for key, _ in parse_qsl(urlsplit(path).query, keep_blank_values=True)}
    except ValueError:
        raise InvalidRequest("access URL base path parameter is malformed") from None
    if {TOKEN_PARAM, INSTANCE_PARAM} & keys:
        raise InvalidRequest("access URL base path parameter already carries a token")
