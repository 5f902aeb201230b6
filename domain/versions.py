"""The version history of ``ConsoleConnection`` primitives.

Processes of two releases share one store during a rolling upgrade, so every
primitive names its version, and a writer can be asked to write for an older
reader. One row per version; the current version is the last row. Bump the
minor version for an added field (older readers drop it), the major version
for anything an older reader would misread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .errors import UnsupportedVersion

Version = tuple[int, int]
NAME: Final = "ConsoleConnection"
NAME_KEY: Final = "console_auth.name"
VERSION_KEY: Final = "console_auth.version"
DATA_KEY: Final = "console_auth.data"
_PART_LIMIT: Final = 10**6


def _keep(data: dict[str, Any]) -> None:
    """Backport of a version that changed nothing an older reader sees."""


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    def backport(data: dict[str, Any]) -> None:
        data.pop(field, None)

    return backport


class Step(NamedTuple):
    version: Version
    change: str
    backport: Callable[[dict[str, Any]], None] = _keep
    """Rewrites data of this version into the previous version's shape."""


HISTORY: Final = (
    Step((1, 0), "initial: the spec's fields, storing only the token's hash"),
    Step((1, 1), "issued_at: when the token was issued, for audit", _drop("issued_at")),
    Step((1, 2), "mac: HMAC of the connection keyed by the token, tamper evidence", _drop("mac")),
)
CURRENT: Final = HISTORY[-1].version


def parse_version(value: object) -> Version:
    """``"1.1"`` or ``(1, 1)`` to ``(1, 1)``, each part below a million;
    anything else is unsupported."""
    if isinstance(value, tuple) and len(value) == 2:
        if all(type(v) is int and 0 <= v < _PART_LIMIT for v in value):
            return (value[0], value[1])
    elif isinstance(value, str) and len(value) <= 13:
        major, dot, minor = value.partition(".")
        parts = (major, minor)
        if dot and all(p.isascii() and p.isdigit() and len(p) <= 6 for p in parts):
            return (int(major), int(minor))
    # the value is not echoed: str() of a huge int raises, and it may be anything
    raise UnsupportedVersion(f"{NAME} version is not of the form X.Y")


def check_writable(target: Version) -> None:
    """Refuse to write a version that was never part of this history."""
    if target not in {step.version for step in HISTORY}:
        raise UnsupportedVersion(
            f"{NAME} {target[0]}.{target[1]} was never written by this library "
            f"(known: {', '.join(f'{a}.{b}' for a, b in (s.version for s in HISTORY))})"
        )


def check_readable(version: Version) -> None:
    """A newer minor version only adds fields, so it is readable; a newer
    major version may mean something else entirely."""
    if version[0] != CURRENT[0] or version < HISTORY[0].version:
        raise UnsupportedVersion(
            f"{NAME} {version[0]}.{version[1]} cannot be read by this library "
            f"(it reads {CURRENT[0]}.x)"
        )


def backport(data: dict[str, Any], target: Version) -> None:
    """Rewrite current-version ``data`` in place into ``target``'s shape."""
    for step in reversed(HISTORY):
        if step.version <= target:
            break
        step.backport(data)
