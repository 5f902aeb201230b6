"""Tamper evidence on every backend: a stored connection that someone changed
is refused as tampered, distinct from unknown, and logged as such."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from console_auth.application import ConsoleAuthService, ConsoleConnectionRepository, ServicePolicy
from console_auth.domain import (
    ConsoleConnection,
    ConsoleOptions,
    InvalidToken,
    InvalidTokenReason,
    hash_token,
)
from tests.fakes import T0, FakeClock, FixedTokenSource

INSTANCE = uuid.UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")
BASE = "https://console.example.org/vnc_lite.html"


def _issue(
    repository: ConsoleConnectionRepository, **policy: Any
) -> tuple[ConsoleAuthService, str]:
    service = ConsoleAuthService(
        repository, FakeClock(), FixedTokenSource(), ServicePolicy(**policy)
    )
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc", access_url_base=BASE)
    return service, issued.token.get_secret_value()


def _replace_stored(repository: ConsoleConnectionRepository, token: str, **changes: Any) -> None:
    """What a writer to the store can do: put another row under the same hash."""
    stored = repository.get_by_hash(hash_token(token))
    assert stored is not None
    assert stored.mac is not None
    repository.delete_by_instance(INSTANCE, T0)
    repository.add(ConsoleConnection.model_validate({**stored.model_dump(), **changes}))


def test_an_issued_connection_is_stored_with_its_mac_and_validates(
    repository: ConsoleConnectionRepository,
) -> None:
    service, token = _issue(repository)
    stored = repository.get_by_hash(hash_token(token))
    assert stored is not None
    assert stored.mac is not None
    assert service.validate(token, INSTANCE) == stored


@pytest.mark.parametrize(
    "changes",
    [
        {"host": "evil.example"},
        {"port": 22},
        {"options": ConsoleOptions(internal_access_path="/other").model_dump()},
        {"access_url_base": "https://evil.example/vnc_lite.html"},
    ],
    ids=["host", "port", "options", "base"],
)
def test_a_changed_row_is_refused_as_tampered_and_logged(
    repository: ConsoleConnectionRepository,
    changes: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, token = _issue(repository)
    _replace_stored(repository, token, **changes)
    with caplog.at_level(logging.INFO, logger="console_auth"), pytest.raises(InvalidToken) as exc:
        service.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED
    records = [r for r in caplog.records if "tampered" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert hash_token(token)[:8] in records[0].getMessage()
    assert token not in caplog.text


def test_an_extended_expiry_is_refused_even_though_it_would_be_live(
    repository: ConsoleConnectionRepository,
) -> None:
    service, token = _issue(repository)
    stored = repository.get_by_hash(hash_token(token))
    assert stored is not None
    _replace_stored(repository, token, expires_at=stored.expires_at.replace(year=2027))
    with pytest.raises(InvalidToken) as exc:
        service.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED


def test_a_row_without_a_mac_is_accepted_until_macs_are_required(
    repository: ConsoleConnectionRepository,
) -> None:
    service, token = _issue(repository)
    _replace_stored(repository, token, mac=None)
    assert service.validate(token, INSTANCE).mac is None  # written before 1.2
    strict = ConsoleAuthService(
        repository, FakeClock(), FixedTokenSource(), ServicePolicy(require_token_mac=True)
    )
    with pytest.raises(InvalidToken) as exc:
        strict.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED


def test_a_mac_moved_from_another_token_is_refused(
    repository: ConsoleConnectionRepository,
) -> None:
    service, token = _issue(repository)
    other = service.authorize(INSTANCE, "compute-1", 5900, "novnc", access_url_base=BASE)
    other_stored = repository.get_by_hash(other.connection.token_hash)
    assert other_stored is not None
    _replace_stored(repository, token, mac=other_stored.mac)
    with pytest.raises(InvalidToken) as exc:
        service.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED
