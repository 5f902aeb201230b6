"""What an error tracker collects from an exception, searched for a secret."""

from __future__ import annotations

from pydantic import ValidationError


def chain_texts(exc: BaseException) -> list[str]:
    """The str, repr and args of ``exc`` and of every exception reachable
    through ``__cause__`` and ``__context__``, with every pydantic error's
    input, and a ``UnicodeError``'s ``object``."""
    texts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        if isinstance(current, ValidationError):
            texts += [repr(error.get("input")) for error in current.errors()]
        if isinstance(current, UnicodeError):
            texts.append(repr(getattr(current, "object", None)))
        pending += [current.__cause__, current.__context__]
    return texts


def assert_chain_holds_no(exc: BaseException, *secrets: str) -> None:
    """No secret appears anywhere an error tracker would look (frame locals aside)."""
    for text in chain_texts(exc):
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}... reachable from {type(exc).__name__}"
