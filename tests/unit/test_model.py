"""Validation rules of the connection model."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError

from console_auth.domain import (
    ConsoleConnection,
    ConsoleOptions,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    check_token,
    hash_token,
)
from console_auth.domain.model import parse_host, parse_utc
from tests.builders import a_connection
from tests.chains import assert_chain_holds_no
from tests.fakes import T0


@pytest.mark.parametrize(
    "host", ["compute-1", "compute-1.example.org", "c.example.", "10.0.0.1", "2001:db8::1", "x"]
)
def test_good_hosts(host: str) -> None:
    assert a_connection(host=host).host


@pytest.mark.parametrize(
    ("written", "stored"),
    [("2001:DB8:0::1", "2001:db8::1"), ("::FFFF:1.2.3.4", "::ffff:1.2.3.4"), ("010.1.1.1", None)],
)
def test_ip_hosts_have_one_spelling(written: str, stored: str | None) -> None:
    if stored is None:
        with pytest.raises(ValidationError):
            a_connection(host=written)
    else:
        assert a_connection(host=written).host == stored


@pytest.mark.parametrize(
    "host", ["", "a b", "a..b", "-a", "a-", "1.2.3.999", "ho$t", "x" * 64, "bücher.example"]
)
def test_bad_hosts(host: str) -> None:
    with pytest.raises(ValidationError, match="host"):
        a_connection(host=host)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        a_connection(expires_at=datetime(2026, 1, 1))


def test_issued_after_expiry_is_refused() -> None:
    with pytest.raises(ValidationError, match="issued_at"):
        a_connection(expires_at=T0, issued_at=T0 + timedelta(seconds=1))


def test_token_hash_must_be_a_sha256() -> None:
    with pytest.raises(ValidationError, match="token_hash"):
        a_connection().model_copy(update={}).model_validate(
            {**a_connection().model_dump(), "token_hash": "A" * 64}
        )


@pytest.mark.parametrize(
    "options",
    [
        {"extra": {"Bad Key": 1}},
        {"extra": {"nan": float("nan")}},
        {"extra": {"big": 2**63}},
        {"extra": {"nested": {"a": 1}}},
        {"extra": {"long": "x" * 256}},
        {"internal_access_path": "/a\nb"},
        {"tls_port": 0},
        {"mode": "listen"},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConsoleOptions.model_validate(options)


def test_build_names_the_field_without_echoing_the_value() -> None:
    secret_looking = "S3cr3t" * 10
    with pytest.raises(InvalidRequest) as caught:
        ConsoleConnection.build(
            instance_uuid="6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab",
            host=secret_looking + " x",
            port=1,
            console_type="novnc",
            token_hash=hash_token("t"),
            expires_at=T0,
        )
    assert "host" in str(caught.value)
    assert secret_looking not in str(caught.value)


@pytest.mark.parametrize(
    "presented", [b"\xff" + b"Q" * 42, bytearray(b"Q" * 42 + b"\x80"), b"Q" * 40 + "é".encode()]
)
def test_check_token_refusal_of_non_ascii_bytes_holds_no_input(presented: bytes) -> None:
    with pytest.raises(InvalidToken) as caught:
        check_token(presented)
    assert caught.value.reason is InvalidTokenReason.MALFORMED
    assert caught.value.__context__ is None
    assert_chain_holds_no(caught.value, "Q" * 40)


def test_build_chain_holds_no_pydantic_error() -> None:
    secret = "S3cr3t" * 8
    with pytest.raises(InvalidRequest) as caught:
        ConsoleConnection.build(host=secret, port=secret, options={"extra": {secret: secret}})
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    assert_chain_holds_no(caught.value, secret)


def test_parse_helpers_hold_no_input() -> None:
    secret = "S3cr3t" * 8
    for call in (lambda: parse_host(secret + " x"), lambda: parse_utc(secret, "Clock.now()")):
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert_chain_holds_no(caught.value, secret)
