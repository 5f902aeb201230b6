"""Rows changed behind the library's back in a real SQL store: an UPDATE by
someone holding the database password, and random bit flips. Each is
refused; none ever hands the proxy another host, port or option."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from console_auth.application import (
    ConsoleAuthService,
    ConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.domain import ConsoleAuthError, InvalidToken, InvalidTokenReason
from tests.backends import opened
from tests.fakes import FakeClock, FixedTokenSource

INSTANCE = uuid.UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")
TEXT_COLUMNS = ("instance_uuid", "host", "console_type", "options", "access_url_base", "mac")
INT_COLUMNS = ("port", "expires_at_us", "issued_at_us")


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def sql_backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    with opened(request.param) as backend:
        yield backend


@pytest.fixture
def repository(sql_backend: Any) -> Iterator[ConsoleConnectionRepository]:
    with sql_backend.fresh() as fresh:
        yield fresh


def _service(repository: ConsoleConnectionRepository, **policy: Any) -> ConsoleAuthService:
    return ConsoleAuthService(repository, FakeClock(), FixedTokenSource(), ServicePolicy(**policy))


def test_an_update_of_the_host_is_refused_as_tampered(
    sql_backend: Any, repository: ConsoleConnectionRepository
) -> None:
    service = _service(repository)
    token = service.authorize(
        INSTANCE, "compute-1", 5900, "novnc", options={"use_tls": True}
    ).token.get_secret_value()
    with sql_backend.engine.begin() as conn:
        conn.execute(text("UPDATE console_connections SET host = 'evil.example', port = 22"))
    with pytest.raises(InvalidToken) as exc:
        service.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED


def test_a_stripped_mac_passes_only_while_unsigned_rows_are_accepted(
    sql_backend: Any, repository: ConsoleConnectionRepository
) -> None:
    service = _service(repository)
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    with sql_backend.engine.begin() as conn:
        conn.execute(text("UPDATE console_connections SET mac = NULL"))
    assert service.validate(token, INSTANCE).host == "compute-1"
    strict = _service(repository, require_token_mac=True)
    with pytest.raises(InvalidToken) as exc:
        strict.validate(token, INSTANCE)
    assert exc.value.reason is InvalidTokenReason.TAMPERED


def test_random_bit_flips_never_serve_another_connection(
    sql_backend: Any, repository: ConsoleConnectionRepository
) -> None:
    service = _service(repository)
    rng = random.Random(1425640)
    trials = 300 if sql_backend.name == "sqlite" else 60
    refused = 0
    for _ in range(trials):
        with sql_backend.engine.begin() as conn:
            conn.execute(text("DELETE FROM console_connections"))
        issued = service.authorize(
            INSTANCE,
            "compute-1",
            5900,
            "novnc",
            options={"internal_access_path": "/websockify", "tls_port": 5901},
            access_url_base="https://console.example.org/vnc_lite.html",
        )
        column = rng.choice(TEXT_COLUMNS + INT_COLUMNS)
        with sql_backend.engine.begin() as conn:
            value = conn.execute(text(f"SELECT {column} FROM console_connections")).scalar_one()
            if column in INT_COLUMNS:
                flipped: Any = value ^ (1 << rng.randrange(31 if column == "port" else 60))
            else:
                at = rng.randrange(len(value))
                char = chr((ord(value[at]) ^ (1 << rng.randrange(7))) or 1)
                flipped = value[:at] + char + value[at + 1 :]
            conn.execute(
                text(f"UPDATE console_connections SET {column} = :v"),
                {"v": flipped},
            )
        try:
            served = service.validate(issued.token.get_secret_value(), INSTANCE)
        except ConsoleAuthError:
            refused += 1
        else:
            assert served == issued.connection, f"a flip in {column} served another connection"
    assert refused >= trials * 0.9  # the rest flipped into an equal meaning (case of a hex digit)
