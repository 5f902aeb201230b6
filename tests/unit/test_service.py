"""The use cases on the in-memory adapter with a fake clock and tokens."""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.application import (
    MAX_TTL,
    REVOCATION_RETENTION,
    ConsoleAuthService,
    ServicePolicy,
)
from console_auth.application.service import IssueOptions
from console_auth.domain import (
    BackendUnavailable,
    ConsoleConnection,
    ConsoleType,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    hash_token,
)
from tests.chains import assert_chain_holds_no
from tests.fakes import T0, FakeClock, FixedTokenSource, UnavailableRepository

INSTANCE = uuid.UUID("6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab")

Claimed = tuple[ConsoleConnection, Callable[[], object]]


def make(**policy: object) -> tuple[ConsoleAuthService, FakeClock]:
    clock = FakeClock()
    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(),
        clock,
        FixedTokenSource(),
        ServicePolicy(**policy),  # type: ignore[arg-type]
    )
    return service, clock


def test_authorize_stores_only_the_hash_and_returns_the_token_once() -> None:
    service, _ = make()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=30))
    token = issued.token.get_secret_value()
    assert issued.connection.token_hash == hash_token(token)
    assert token not in repr(issued)
    assert token not in str(issued)
    assert token not in issued.connection.model_dump_json()
    assert issued.connection.expires_at == T0 + timedelta(seconds=30)
    assert issued.connection.issued_at == T0
    assert issued.access_url is None


def test_a_claim_may_change_the_connection_and_the_mac_covers_what_is_stored() -> None:
    service, _ = make(require_token_mac=True)
    seen: list[ConsoleConnection] = []

    def take_port_5901(
        connection: ConsoleConnection,
    ) -> Claimed:
        seen.append(connection)
        return connection.model_copy(update={"port": 5901}), lambda: None

    issued = service.authorize(INSTANCE, "compute-1", 5900, "serial", claim=take_port_5901)
    assert seen[0].port == 5900
    assert seen[0].mac is None  # prepared, not stored yet
    assert seen[0].token_hash == issued.connection.token_hash
    assert service.validate(issued.token.get_secret_value()) == issued.connection
    assert issued.connection.port == 5901


def test_a_claim_that_raises_leaves_nothing_stored() -> None:
    service, _ = make()

    def refuse(connection: ConsoleConnection) -> Claimed:
        raise InvalidRequest("nothing to claim")

    with pytest.raises(InvalidRequest, match="nothing to claim"):
        service.authorize(INSTANCE, "compute-1", 5900, "serial", claim=refuse)
    with pytest.raises(InvalidToken) as unknown:
        service.validate(FixedTokenSource().new_token())  # the token it had minted
    assert unknown.value.reason is InvalidTokenReason.UNKNOWN
    assert service.revoke_instance(INSTANCE) == 0


def test_a_store_that_fails_gives_the_claim_back() -> None:
    service = ConsoleAuthService(UnavailableRepository(), FakeClock(), FixedTokenSource())
    undone: list[ConsoleConnection] = []

    def claim(connection: ConsoleConnection) -> Claimed:
        return connection, lambda: undone.append(connection)

    with pytest.raises(BackendUnavailable):
        service.authorize(INSTANCE, "compute-1", 5900, "serial", claim=claim)
    assert len(undone) == 1


def test_the_issue_options_are_the_keywords_of_authorize() -> None:
    """``authorize_serial`` passes them through: one list, checked here."""
    keywords = inspect.signature(ConsoleAuthService.authorize).parameters.values()
    named = {p.name for p in keywords if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(IssueOptions.__annotations__) == named - {"claim"}


def test_default_ttl_comes_from_the_policy() -> None:
    service, _ = make(default_ttl=timedelta(minutes=3))
    issued = service.authorize(INSTANCE, "compute-1", 5900, ConsoleType.SERIAL)
    assert issued.connection.expires_at == T0 + timedelta(minutes=3)


def test_validate_returns_the_stored_connection_until_expiry() -> None:
    service, clock = make()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=60))
    token = issued.token.get_secret_value()
    clock.advance(timedelta(seconds=60) - timedelta(microseconds=1))
    assert service.validate(token, INSTANCE) == issued.connection
    clock.advance(timedelta(microseconds=1))
    with pytest.raises(InvalidToken) as caught:
        service.validate(token, INSTANCE)
    assert caught.value.reason is InvalidTokenReason.EXPIRED


@pytest.mark.parametrize(
    "token", ["", "short", "x" * 44, "t" * 42 + "!", "ü" * 43, b"\xff" * 43, None, 42]
)
def test_malformed_tokens_never_reach_the_repository(token: object) -> None:
    class Exploding(InMemoryConsoleConnectionRepository):
        def get_by_hash(
            self, token_hash: str, instance_uuid: uuid.UUID | None = None
        ) -> ConsoleConnection | None:
            raise AssertionError("the repository was asked")

    service = ConsoleAuthService(Exploding(), FakeClock(), FixedTokenSource())
    with pytest.raises(InvalidToken) as caught:
        service.validate(token)  # type: ignore[arg-type]
    assert caught.value.reason is InvalidTokenReason.MALFORMED


def test_unknown_token_is_reported_as_unknown() -> None:
    service, _ = make()
    with pytest.raises(InvalidToken) as caught:
        service.validate("A" * 43)
    assert caught.value.reason is InvalidTokenReason.UNKNOWN


def test_bytes_tokens_are_accepted() -> None:
    service, _ = make()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value().encode()) == issued.connection


def test_instance_uuid_must_match() -> None:
    service, _ = make()
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    assert service.validate(token, str(INSTANCE).upper()).instance_uuid == INSTANCE
    with pytest.raises(InstanceMismatch):
        service.validate(token, uuid.uuid4())


@pytest.mark.parametrize("required", [False, True])
def test_missing_instance_uuid_follows_the_policy(required: bool) -> None:
    service, _ = make(require_instance_uuid=required)
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    if required:
        with pytest.raises(InstanceMismatch, match="required"):
            service.validate(token)
    else:
        assert service.validate(token).instance_uuid == INSTANCE


@pytest.mark.parametrize(
    "bad", ["nope", "6f1b2a0e1c1d4d6e9a1f0123456789ab", "{6f1b2a0e-1c1d-4d6e-9a1f-0123456789ab}"]
)
def test_malformed_instance_uuid_is_a_bad_request(bad: str) -> None:
    service, _ = make()
    token = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    with pytest.raises(InvalidRequest, match="instance uuid"):
        service.validate(token, bad)
    with pytest.raises(InvalidRequest, match="instance uuid"):
        service.authorize(bad, "compute-1", 5900, "novnc")


def test_validate_url_reads_the_novnc_path_parameter() -> None:
    service, _ = make()
    issued = service.authorize(
        INSTANCE, "compute-1", 5900, "novnc", access_url_base="https://proxy.example/vnc.html"
    )
    assert issued.access_url is not None
    assert "path=%3Ftoken%3D" in issued.access_url
    assert service.validate_url(issued.access_url) == issued.connection


def test_revoke_instance_counts_and_removes_its_tokens() -> None:
    service, _ = make()
    tokens = [
        service.authorize(INSTANCE, "compute-1", 5900 + i, "novnc").token.get_secret_value()
        for i in range(3)
    ]
    other = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
    assert service.revoke_instance(str(INSTANCE)) == 3
    for token in tokens:
        with pytest.raises(InvalidToken):
            service.validate(token)
    assert service.validate(other.token.get_secret_value()) == other.connection


def test_purge_loops_over_batches_and_keeps_live_tokens() -> None:
    service, clock = make(purge_batch_size=2, purge_grace=timedelta(0))
    for i in range(5):
        service.authorize(INSTANCE, "compute-1", 5900 + i, "novnc", ttl=timedelta(seconds=10))
    live = service.authorize(INSTANCE, "compute-2", 5900, "novnc", ttl=timedelta(hours=1))
    clock.advance(timedelta(seconds=10))
    assert service.purge_expired(host="compute-2") == 0
    assert service.purge_expired() == 5
    assert service.validate(live.token.get_secret_value()) == live.connection


@pytest.mark.parametrize(
    "ttl", [timedelta(0), timedelta(seconds=-1), MAX_TTL + timedelta(microseconds=1), 60]
)
def test_ttl_out_of_range_is_refused(ttl: object) -> None:
    service, _ = make()
    with pytest.raises(InvalidRequest, match="ttl"):
        service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", "bad host"),
        ("host", "-leading.example"),
        ("host", "a" * 254),
        ("port", 0),
        ("port", 65536),
        ("console_type", "telnet"),
        ("access_url_base", "javascript:alert(1)"),
        ("access_url_base", "https://user:pw@proxy.example/"),
        ("access_url_base", "https://proxy.example/?token=x"),
        ("options", {"extra": {f"k{i}": i for i in range(17)}}),
        ("options", {"unknown": 1}),
    ],
)
def test_bad_authorize_input_is_named_and_stores_nothing(field: str, value: object) -> None:
    service, _ = make()
    good = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    request: dict[str, object] = {
        "instance_uuid": INSTANCE,
        "host": "compute-1",
        "port": 5900,
        "console_type": "novnc",
        field: value,
    }
    with pytest.raises(InvalidRequest, match=field):
        service.authorize(**request)  # type: ignore[arg-type]
    assert service.revoke_instance(INSTANCE) == 1
    with pytest.raises(InvalidToken):
        service.validate(good.token.get_secret_value())


def test_logs_name_the_hash_prefix_never_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    service, clock = make()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=1))
    token = issued.token.get_secret_value()
    service.validate(token, INSTANCE)
    with pytest.raises(InstanceMismatch):
        service.validate(token, uuid.uuid4())
    clock.advance(timedelta(seconds=2))
    with pytest.raises(InvalidToken) as caught:
        service.validate(token)
    assert token not in str(caught.value)
    assert caplog.records
    assert issued.connection.token_hash[:8] in caplog.text
    assert token not in caplog.text


@pytest.mark.parametrize("url", [None, b"/?token=" + b"A" * 43, 42, ["/?token="], {}, 1.5])
def test_validate_url_refuses_what_is_not_text(url: object) -> None:
    service, _ = make()
    with pytest.raises(InvalidRequest, match="access URL must be text"):
        service.validate_url(url)  # type: ignore[arg-type]


def test_validate_url_refuses_a_long_url_before_parsing_it() -> None:
    service, _ = make()
    token = service.authorize(INSTANCE, "compute-1", 5900, "spice-html5").token.get_secret_value()
    padded = f"/?token={token}&instance_uuid={INSTANCE}&pad={'a&' * 2024}"
    assert 4096 < len(padded) < 4200
    with pytest.raises(InvalidRequest, match="longer than 4096") as caught:
        service.validate_url(padded)
    assert_chain_holds_no(caught.value, token)
    assert service.validate_url(padded[:4096]).instance_uuid == INSTANCE


def test_validate_url_refuses_a_token_at_the_top_and_another_in_the_novnc_path() -> None:
    service, _ = make()
    mine = service.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    other = service.authorize(INSTANCE, "compute-2", 5900, "novnc").token.get_secret_value()
    for url in (
        f"https://p.example/vnc.html?token={mine}&path=%3Ftoken%3D{other}",
        f"https://p.example/vnc.html?path=%3Ftoken%3D{other}&token={mine}",
        f"https://p.example/vnc.html?instance_uuid={INSTANCE}"
        f"&path=%3Ftoken%3D{mine}%26instance_uuid%3D{INSTANCE}",
    ):
        with pytest.raises(InvalidRequest, match="more than once"):
            service.validate_url(url)
    nested = f"https://p.example/vnc.html?instance_uuid={INSTANCE}&path=%3Ftoken%3D{mine}"
    assert service.validate_url(nested).host == "compute-1"  # one of each, at any level


@pytest.mark.parametrize(
    "reading", [T0.replace(tzinfo=None), None, "2026-01-01", 1.7e9, T0.date()]
)
def test_a_clock_time_that_is_not_aware_is_refused_everywhere(reading: object) -> None:
    """A naive time is what ``oslo_utils.timeutils.utcnow()`` returns; read as
    local time it would shift every expiry by the host's UTC offset."""

    class Clock:
        def now(self) -> object:
            return reading

    repository = InMemoryConsoleConnectionRepository()
    good = ConsoleAuthService(repository, FakeClock(), FixedTokenSource())
    token = good.authorize(INSTANCE, "compute-1", 5900, "novnc").token.get_secret_value()
    service = ConsoleAuthService(repository, Clock(), FixedTokenSource("new"))  # type: ignore[arg-type]
    calls: list[Callable[[], object]] = [
        lambda: service.authorize(INSTANCE, "compute-1", 5900, "novnc"),
        lambda: service.validate(token, INSTANCE),
        lambda: service.purge_expired(),
    ]
    for call in calls:
        with pytest.raises(InvalidRequest, match=r"Clock\.now\(\) must be"):
            call()
    assert good.revoke_instance(INSTANCE) == 1  # nothing was stored or purged


def test_an_aware_clock_in_another_zone_gives_the_same_instants() -> None:
    class Tokyo:
        def now(self) -> datetime:
            return T0.astimezone(timezone(timedelta(hours=9)))

    service = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), Tokyo(), FixedTokenSource()
    )
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc", ttl=timedelta(seconds=5))
    assert issued.connection.expires_at == T0 + timedelta(seconds=5)
    assert issued.connection.expires_at.tzinfo is UTC
    assert service.validate(issued.token.get_secret_value()) == issued.connection


def test_a_refused_extra_option_key_is_not_echoed() -> None:
    service, _ = make()
    hostile = "Ab" * 21 + "c"  # token-shaped, as a careless caller might pass one
    for extra in ({hostile: 1}, {hostile: [1]}, {"k": 1, hostile: {"x": 1}}):
        with pytest.raises(InvalidRequest, match="extra") as caught:
            service.authorize(INSTANCE, "compute-1", 5900, "novnc", options={"extra": extra})
        assert_chain_holds_no(caught.value, hostile)


def test_a_refused_authorize_chain_holds_no_input() -> None:
    service, _ = make()
    secret = "S3cr3t" * 7
    with pytest.raises(InvalidRequest) as caught:
        service.authorize(INSTANCE, f"{secret} x", 5900, "novnc")
    assert caught.value.__context__ is None
    assert_chain_holds_no(caught.value, secret)


def test_revoked_among_names_what_was_issued_no_later_than_the_revoke() -> None:
    service, clock = make()
    before = service.authorize(INSTANCE, "compute-1", 5900, "novnc").connection
    other = service.authorize(uuid.uuid4(), "compute-1", 5901, "novnc").connection
    legacy = before.model_copy(update={"issued_at": None})  # stored before 1.1
    clock.advance(timedelta(seconds=1))
    at_the_revoke = service.authorize(INSTANCE, "compute-1", 5900, "novnc").connection
    assert service.revoked_among([before, other, legacy, at_the_revoke]) == []
    service.revoke_instance(INSTANCE)
    clock.advance(timedelta(microseconds=1))
    after = service.authorize(INSTANCE, "compute-1", 5900, "novnc").connection
    assert service.revoked_among([before, other, legacy, at_the_revoke, after]) == [
        before,
        legacy,
        at_the_revoke,
    ]
    assert service.revoked_among([]) == []


def test_purge_forgets_revocations_only_past_the_retention() -> None:
    repository = InMemoryConsoleConnectionRepository()
    clock = FakeClock()
    service = ConsoleAuthService(repository, clock, FixedTokenSource())
    old, recent = uuid.uuid4(), uuid.uuid4()
    service.revoke_instance(old)
    clock.advance(timedelta(seconds=1))
    service.revoke_instance(recent)
    clock.advance(REVOCATION_RETENTION + service.policy.purge_grace)
    service.purge_expired(host="compute-1")  # records have no host: any purge forgets them
    assert repository.revocations({old, recent}) == {recent: T0 + timedelta(seconds=1)}
