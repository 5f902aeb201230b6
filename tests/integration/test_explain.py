"""``explain``: every verdict, on SQLite, on cells of SQLite stores, and on
memcached, each against the real store (and a real broken one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import port_for
import pytest

from console_auth.adapters.memcached import MemcachedConsoleConnectionRepository
from console_auth.adapters.memory import InMemoryCellLocator
from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.application.service import Explanation
from console_auth.domain import InvalidTokenReason, hash_token
from console_auth.domain.integrity import connection_mac
from tests.backends import opened
from tests.backends.memcached import client_for
from tests.builders import a_connection
from tests.fakes import T0, FakeClock, FixedTokenSource

IN_A, ALSO_IN_A, IN_B, NOWHERE = (uuid.uuid4() for _ in range(4))
BASE = "https://console.example.com/vnc_lite.html"
VARIANTS = ["sqlite", "sqlite-cells", "memcached"]


@dataclass
class Stores:
    working: ConsoleConnectionRepository
    broken: ConsoleConnectionRepository
    """The same kind of store, unable to answer."""
    cells: bool


def broken_sqlite(workdir: Path) -> SqlConsoleConnectionRepository:
    path = workdir / "not-a-database.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    return SqlConsoleConnectionRepository(Statements(open_engine(f"sqlite:///{path}")))


@contextmanager
def stores(variant: str, workdir: Path) -> Iterator[Stores]:
    with ExitStack() as stack:
        if variant == "memcached":
            backend = stack.enter_context(opened("memcached"))
            working = stack.enter_context(backend.fresh())
            client = client_for([f"127.0.0.1:{port_for.select_random()}"])  # nothing listens
            stack.callback(client.close)
            yield Stores(working, MemcachedConsoleConnectionRepository(client), cells=False)
            return
        first = stack.enter_context(opened("sqlite"))
        working = stack.enter_context(first.fresh())
        if variant == "sqlite":
            yield Stores(working, broken_sqlite(workdir), cells=False)
            return
        second = stack.enter_context(opened("sqlite"))
        locator = InMemoryCellLocator(
            {IN_A: "a", ALSO_IN_A: "a", IN_B: "b"}, hosts={}, cells=["a", "b"]
        )
        cells = CellRoutedConsoleConnectionRepository(
            {"a": working, "b": stack.enter_context(second.fresh())}, locator
        )
        half_down = CellRoutedConsoleConnectionRepository(
            {"a": working, "b": broken_sqlite(workdir)}, locator
        )
        stack.callback(cells.close)
        stack.callback(half_down.close)
        yield Stores(cells, half_down, cells=True)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    with stores(request.param, tmp_path) as each:
        yield each


def service_on(
    repository: ConsoleConnectionRepository,
    clock: FakeClock,
    *,
    require_instance_uuid: bool = False,
) -> ConsoleAuthService:
    policy = ServicePolicy(require_instance_uuid=require_instance_uuid)
    return ConsoleAuthService(repository, clock, FixedTokenSource(), policy)


def issue(service: ConsoleAuthService, instance: uuid.UUID = IN_A) -> tuple[str, str]:
    issued = service.authorize(instance, "compute-1", 5900, "novnc", access_url_base=BASE)
    assert issued.access_url is not None
    return issued.token.get_secret_value(), issued.access_url


def assert_no_token(explanation: Explanation, token: str) -> None:
    """The stored connection holds its whole hash, as ``validate``'s answer
    does; what the CLI prints of it is tested with the CLI."""
    assert token not in repr(explanation)
    assert token not in explanation.detail


def test_a_good_token_is_valid_with_what_it_grants(variant: Stores) -> None:
    service = service_on(variant.working, FakeClock(T0))
    token, url = issue(service)
    explanation = service.explain_url(url)
    assert explanation.verdict == "valid"
    assert explanation.stored is not None
    assert explanation.stored.instance_uuid == IN_A
    assert explanation.token_hash == hash_token(token)[:12]
    assert explanation.looked_in == ("cell a" if variant.cells else None)
    assert service.explain(token, IN_A) == explanation
    assert_no_token(explanation, token)


def test_malformed_tokens_and_uuids(variant: Stores) -> None:
    service = service_on(variant.working, FakeClock(T0))
    token, _ = issue(service)
    malformed = service.explain(token[:-1])
    assert (malformed.verdict, malformed.token_hash, malformed.stored) == ("malformed", None, None)
    assert "43 URL-safe characters" in malformed.detail
    bad_uuid = service.explain(token, "not-a-uuid")
    assert bad_uuid.verdict == "bad_request"
    assert "uuid" in bad_uuid.detail
    twice = service.explain_url(f"{BASE}?token={token}&token={token}&instance_uuid={IN_A}")
    assert twice.verdict == "bad_request"
    for explanation in (malformed, bad_uuid, twice):
        assert_no_token(explanation, token)


def test_an_unknown_token_says_where_it_was_looked_for(variant: Stores) -> None:
    service = service_on(variant.working, FakeClock(T0))
    issue(service)
    never_issued = "x" * 43
    explanation = service.explain(never_issued, IN_A)
    assert explanation.verdict == InvalidTokenReason.UNKNOWN.value
    assert explanation.looked_in == ("cell a" if variant.cells else None)
    assert explanation.stored is None
    everywhere = service.explain(never_issued)
    assert everywhere.looked_in == ("every cell (a, b)" if variant.cells else None)


def test_an_expired_token_says_when(variant: Stores) -> None:
    clock = FakeClock(T0)
    service = service_on(variant.working, clock)
    token, url = issue(service)
    clock.advance(timedelta(minutes=10))  # the default TTL: expired at that instant
    explanation = service.explain_url(url)
    assert explanation.verdict == "expired"
    assert explanation.detail == f"expired at {(T0 + timedelta(minutes=10)).isoformat()}"
    assert explanation.stored is not None
    assert_no_token(explanation, token)


def test_a_token_for_another_instance_names_both(variant: Stores) -> None:
    service = service_on(variant.working, FakeClock(T0))
    token, _ = issue(service)
    explanation = service.explain(token, ALSO_IN_A)  # same cell, when split
    assert explanation.verdict == "instance_mismatch"
    assert str(ALSO_IN_A) in explanation.detail
    assert str(IN_A) in explanation.detail
    if variant.cells:  # another cell is never asked: unknown there, and said so
        elsewhere = service.explain(token, IN_B)
        assert (elsewhere.verdict, elsewhere.looked_in) == ("unknown", "cell b")


def test_a_missing_uuid_when_one_is_required(variant: Stores) -> None:
    service = service_on(variant.working, FakeClock(T0), require_instance_uuid=True)
    token, _ = issue(service)
    assert service.explain(token).verdict == "instance_required"


def test_a_changed_row_is_tampered(variant: Stores) -> None:
    token = "t" * 43
    stored = a_connection(token=token, instance_uuid=IN_A, expires_at=T0 + timedelta(hours=1))
    forged = stored.model_copy(update={"mac": connection_mac("u" * 43, stored)})
    variant.working.add(forged)
    explanation = service_on(variant.working, FakeClock(T0)).explain(token, IN_A)
    assert explanation.verdict == "tampered"
    assert "changed in the store" in explanation.detail
    assert_no_token(explanation, token)


def test_a_store_that_cannot_answer_is_backend_unavailable(variant: Stores) -> None:
    service = service_on(variant.broken, FakeClock(T0))
    explanation = service.explain("x" * 43, IN_B)
    assert explanation.verdict == "backend_unavailable"
    if variant.cells:
        assert "cell b" in explanation.detail
        assert explanation.looked_in == "cell b"


def test_an_instance_no_cell_holds(variant: Stores) -> None:
    explanation = service_on(variant.working, FakeClock(T0)).explain("x" * 43, NOWHERE)
    if variant.cells:
        assert explanation.verdict == "unknown_cell"
        assert str(NOWHERE) in explanation.detail
    else:
        assert explanation.verdict == "unknown"
