"""Token shape and hashing: the only form that reaches storage."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.adapters.system import SecretsTokenSource
from console_auth.application import ConsoleAuthService
from console_auth.application.ports import StoredConnection
from console_auth.domain import (
    TOKEN_LENGTH,
    ConsoleConnection,
    InvalidToken,
    InvalidTokenReason,
    check_token,
    hash_token,
)
from tests.fakes import FakeClock, FixedTokenSource
from tests.property.strategies import TOKEN_ALPHABET, is_token_shaped, tokens

_HEX64: Final = re.compile(r"[0-9a-f]{64}")

near_token_text: Final = st.text(
    alphabet=TOKEN_ALPHABET + "=+/.~ \n\t\x00é",
    min_size=TOKEN_LENGTH - 2,
    max_size=TOKEN_LENGTH + 2,
)
any_text: Final = st.one_of(st.text(), near_token_text, tokens)


@given(token=tokens)
def test_hash_is_sha256_hex_of_the_token(token: str) -> None:
    digest = hash_token(token)
    assert _HEX64.fullmatch(digest)
    assert hash_token(token) == digest
    assert token not in digest
    # Stored hashes must stay readable across releases: the algorithm is pinned.
    assert digest == hashlib.sha256(token.encode("ascii")).hexdigest()


@given(st.lists(tokens, min_size=2, max_size=8, unique=True))
def test_different_tokens_hash_apart(distinct: list[str]) -> None:
    assert len({hash_token(token) for token in distinct}) == len(distinct)


@given(value=any_text)
@example(value="A" * TOKEN_LENGTH)
@example(value="-" * TOKEN_LENGTH)
@example(value="A" * (TOKEN_LENGTH - 1))
@example(value="A" * (TOKEN_LENGTH + 1))
@example(value="A" * (TOKEN_LENGTH - 1) + "=")
@example(value="A" * (TOKEN_LENGTH - 1) + "\n")
@example(value="A" * (TOKEN_LENGTH - 1) + "\uff21")  # fullwidth A: a letter, not ASCII
def test_check_token_accepts_exactly_the_token_shape(value: str) -> None:
    if is_token_shaped(value):
        assert check_token(value) == value
        assert check_token(value.encode("ascii")) == value
        assert check_token(bytearray(value, "ascii")) == value
        return
    for presented in (value, value.encode("utf-8", "surrogatepass")):
        with pytest.raises(InvalidToken) as refused:
            check_token(presented)
        assert refused.value.reason is InvalidTokenReason.MALFORMED


@given(raw=st.one_of(st.binary(), near_token_text.map(lambda t: t.encode("utf-8"))))
@example(raw=b"A" * (TOKEN_LENGTH - 1) + b"\xff")
def test_check_token_reads_bytes_as_ascii_only(raw: bytes) -> None:
    try:
        text: str | None = raw.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and is_token_shaped(text):
        assert check_token(raw) == text
        return
    with pytest.raises(InvalidToken) as refused:
        check_token(raw)
    assert refused.value.reason is InvalidTokenReason.MALFORMED


@given(
    value=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.lists(tokens, max_size=2),
        st.tuples(tokens),
        tokens.map(lambda t: memoryview(t.encode("ascii"))),
    )
)
def test_check_token_refuses_what_is_not_text_or_bytes(value: Any) -> None:
    with pytest.raises(InvalidToken) as refused:
        check_token(value)
    assert refused.value.reason is InvalidTokenReason.MALFORMED


def test_secrets_token_source_issues_distinct_well_shaped_tokens() -> None:
    source = SecretsTokenSource()
    issued = [source.new_token() for _ in range(2000)]
    assert all(check_token(token) == token for token in issued)
    assert len(set(issued)) == len(issued)
    # 256 bits: every one of the 64 characters shows up somewhere.
    assert set("".join(issued)) == set(TOKEN_ALPHABET)


class _UntouchableRepository:
    """Fails the test if the service consults storage."""

    def add(self, connection: ConsoleConnection) -> None:
        raise AssertionError("add called")

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        raise AssertionError("get_by_hash called for a malformed token")

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        raise AssertionError("delete_by_instance called")

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        raise AssertionError("revocations called")

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        raise AssertionError("purge_expired called")

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        raise AssertionError("purge_instances called")

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        raise AssertionError("connections called")

    def delete_by_hash(self, token_hash: str) -> int:
        raise AssertionError("delete_by_hash called")

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        raise AssertionError("looked_in called")


@given(value=any_text.filter(lambda t: not is_token_shaped(t)) | st.binary())
def test_malformed_tokens_are_refused_before_storage_is_asked(value: str | bytes) -> None:
    service = ConsoleAuthService(_UntouchableRepository(), FakeClock(), FixedTokenSource())
    with pytest.raises(InvalidToken) as refused:
        service.validate(value)
    assert refused.value.reason is InvalidTokenReason.MALFORMED
