"""The service on each backend agrees, step by step, with a plain dict model.

One ``RuleBasedStateMachine`` runs per backend (the session ``backend``
fixture); each example gets an empty repository from ``backend.fresh()``.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Final, NamedTuple

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from console_auth.application import (
    DEFAULT_PURGE_GRACE,
    MAX_TTL,
    REVOCATION_RETENTION,
    ConsoleAuthService,
    ServicePolicy,
)
from console_auth.domain import (
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleType,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    hash_token,
)
from console_auth.domain.errors import UnknownTokenHash
from tests.backends import ROUTED_BY_INSTANCE, Backend
from tests.fakes import T0, FakeClock, FixedTokenSource
from tests.property.strategies import ONE_US, alphabet_tokens

INSTANCES: Final = (
    uuid.UUID("a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5"),
    uuid.UUID("f0e1d2c3-b4a5-4968-8776-655443322110"),
    uuid.UUID("0a0b0c0d-0e0f-4a1b-9c2d-3e4f5a6b7c8d"),
)
STRANGER: Final = uuid.UUID("ffffffff-0000-4000-8000-000000000000")  # never issued a token
HOSTS: Final = {
    # canonical form -> spellings callers may use for it
    "compute-1": ("compute-1",),
    "Compute-1": ("Compute-1",),  # the reference store compares host text exactly
    "2001:db8::1": ("2001:db8::1", "2001:DB8:0:0::1", "2001:0db8::0001"),
}
DEFAULT_TTL: Final = timedelta(minutes=10)

host_choices = st.sampled_from(sorted(HOSTS)).flatmap(
    lambda canonical: st.tuples(st.just(canonical), st.sampled_from(HOSTS[canonical]))
)
machine_ttls = st.one_of(
    st.none(),  # the policy's default
    st.sampled_from([ONE_US, timedelta(seconds=1), timedelta(seconds=60), MAX_TTL]),
    st.timedeltas(min_value=ONE_US, max_value=timedelta(hours=1)),
)
# Mostly the right uuid, so that valid tokens are checked as often as refusals.
PRESENTED = ("uuid", "text", "upper", "uuid", "text", "wrong", "stranger", "missing", "malformed")


class Expected(NamedTuple):
    instance_uuid: uuid.UUID
    host: str
    port: int
    console_type: ConsoleType
    expires_at: datetime
    issued_at: datetime


class ConsoleTokensMachine(RuleBasedStateMachine):
    """Model: token -> what was issued, for every token still stored."""

    tokens = Bundle("tokens")

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._resources = ExitStack()
        self.repository = self._resources.enter_context(backend.fresh())
        self.clock = FakeClock(T0)
        self.service = ConsoleAuthService(self.repository, self.clock, FixedTokenSource())
        self.model: dict[str, Expected] = {}
        self.issued: dict[str, ConsoleConnection] = {}
        """Every connection issued, as a proxy holding its session would."""
        self.revoked: dict[uuid.UUID, datetime] = {}
        """Revocation records still kept."""
        self.routed = backend.name in ROUTED_BY_INSTANCE
        self.purge_forgets_revocations = backend.name != "memcached"
        """memcached lets them expire in real time instead."""
        self.lists_everything = backend.name != "memcached"
        """memcached lists one instance's tokens only."""
        self.longest_ttl = timedelta(seconds=1)

    def teardown(self) -> None:
        self._resources.close()

    @initialize(
        require_uuid=st.booleans(),
        batch=st.sampled_from([1, 2, 3, 1000]),
        grace=st.sampled_from([timedelta(0), ONE_US, timedelta(seconds=30), DEFAULT_PURGE_GRACE]),
    )
    def choose_policy(self, require_uuid: bool, batch: int, grace: timedelta) -> None:
        policy = ServicePolicy(
            default_ttl=DEFAULT_TTL,
            require_instance_uuid=require_uuid,
            purge_batch_size=batch,
            purge_grace=grace,
        )
        self.service = ConsoleAuthService(self.repository, self.clock, FixedTokenSource(), policy)

    @rule(
        target=tokens,
        instance=st.sampled_from(INSTANCES),
        host=host_choices,
        port=st.integers(1, 65535),
        console_type=st.sampled_from(ConsoleType),
        ttl=machine_ttls,
    )
    def authorize(
        self,
        instance: uuid.UUID,
        host: tuple[str, str],
        port: int,
        console_type: ConsoleType,
        ttl: timedelta | None,
    ) -> str:
        now = self.clock.now()
        issued = self.service.authorize(instance, host[1], port, console_type, ttl=ttl)
        token = issued.token.get_secret_value()
        lifetime = DEFAULT_TTL if ttl is None else ttl
        expected = Expected(instance, host[0], port, console_type, now + lifetime, now)
        self._assert_matches(issued.connection, token, expected)
        assert token not in self.model
        self.model[token] = expected
        self.issued[token] = issued.connection
        self.longest_ttl = max(self.longest_ttl, lifetime)
        return token

    @rule(
        token=tokens,
        presented=st.sampled_from(PRESENTED),
        as_bytes=st.booleans(),
    )
    def validate(self, token: str, presented: str, as_bytes: bool) -> None:
        self._validate(token, presented, as_bytes)

    @rule(
        token=alphabet_tokens,
        presented=st.sampled_from(["uuid", "missing", "malformed"]),
    )
    def validate_unknown(self, token: str, presented: str) -> None:
        if token in self.model:  # astronomically unlikely, but then it is known
            return
        self._validate(token, presented, as_bytes=False)

    @rule(instance=st.sampled_from([*INSTANCES, STRANGER]), as_text=st.booleans())
    def revoke_instance(self, instance: uuid.UUID, as_text: bool) -> None:
        doomed = [t for t, e in self.model.items() if e.instance_uuid == instance]
        presented: uuid.UUID | str = str(instance) if as_text else instance
        assert self.service.revoke_instance(presented) == len(doomed)
        for token in doomed:
            del self.model[token]
        self.revoked[instance] = self.clock.now()

    @rule(host=st.none() | host_choices)
    def purge_expired(self, host: tuple[str, str] | None) -> None:
        cutoff = self.clock.now() - self.service.policy.purge_grace
        doomed = [
            t
            for t, e in self.model.items()
            if e.expires_at <= cutoff and (host is None or e.host == host[0])
        ]
        assert self.service.purge_expired(None if host is None else host[1]) == len(doomed)
        for token in doomed:
            del self.model[token]
        for instance, at in list(self.revoked.items()):
            if at < cutoff - REVOCATION_RETENTION and self.purge_forgets_revocations:
                del self.revoked[instance]

    @rule(instances=st.sets(st.sampled_from([*INSTANCES, STRANGER])))
    def purge_instances(self, instances: set[uuid.UUID]) -> None:
        """What a compute node purges: its guests' tokens, whatever host
        they were stored with (bug 1816399)."""
        cutoff = self.clock.now() - self.service.policy.purge_grace
        doomed = [
            t
            for t, e in self.model.items()
            if e.expires_at <= cutoff and e.instance_uuid in instances
        ]
        assert self.service.purge_instances(instances) == len(doomed)
        for token in doomed:
            del self.model[token]

    @rule(token=tokens, digits=st.sampled_from([12, 13, 40, 64]))
    def revoke_token(self, token: str, digits: int) -> None:
        """One token by a hash prefix; no revocation record, so the
        sessions of its instance run on (``recheck_session``)."""
        prefix = hash_token(token)[:digits]
        if digits < 64 and not self.lists_everything:
            with pytest.raises(InvalidRequest, match="needs the database backend"):
                self.service.revoke_token(prefix)
            return
        if token not in self.model:
            with pytest.raises(UnknownTokenHash):
                self.service.revoke_token(prefix)
            return
        assert self.service.revoke_token(prefix) == self.issued[token]
        del self.model[token]

    @rule(
        instance=st.none() | st.sampled_from(INSTANCES),
        expired=st.booleans(),
        page=st.sampled_from([1, 2, 1000]),
    )
    def list_connections(self, instance: uuid.UUID | None, expired: bool, page: int) -> None:
        """The listing, page by page, is the model's tokens in hash order."""
        if instance is None and not self.lists_everything:
            with pytest.raises(InvalidRequest, match="needs the database backend"):
                self.service.connections(limit=page)
            return
        now = self.clock.now()
        wanted = sorted(
            hash_token(t)
            for t, e in self.model.items()
            if (instance is None or e.instance_uuid == instance)
            and (expired or now < e.expires_at)
        )
        listed: list[str] = []
        after: str | None = None
        while batch := self.service.connections(
            after, instance_uuid=instance, expired=expired, limit=page
        ):
            listed += [stored.connection.token_hash for stored in batch]
            after = listed[-1]
        assert listed == wanted

    @rule(token=tokens)
    def recheck_session(self, token: str) -> None:
        """A session opened with ``token``, however long ago, ends iff its
        instance was revoked since the token was issued (and still recorded)."""
        connection = self.issued[token]
        at = self.revoked.get(connection.instance_uuid)
        ended = at is not None and (connection.issued_at is None or connection.issued_at <= at)
        assert self.service.revoked_among([connection]) == ([connection] if ended else [])

    @rule(
        permille=st.sampled_from([0, 500, 1000, 2000]) | st.integers(0, 20) | st.integers(0, 2000)
    )
    def advance_clock(self, permille: int) -> None:
        """Up to twice the longest TTL issued so far; often much less."""
        self.clock.advance(self.longest_ttl * permille // 1000)

    @rule(token=tokens, nudge=st.sampled_from([-ONE_US, timedelta(0), ONE_US]))
    def jump_to_expiry(self, token: str, nudge: timedelta) -> None:
        """Stand right at (or a microsecond either side of) a token's expiry,
        and check that token there."""
        expected = self.model.get(token)
        if expected is not None and expected.expires_at + nudge >= self.clock.now():
            self.clock.set(expected.expires_at + nudge)
        self._validate(token, "uuid", as_bytes=False)

    def _validate(self, token: str, presented: str, as_bytes: bool) -> None:
        expected = self.model.get(token)
        owner = INSTANCES[0] if expected is None else expected.instance_uuid
        other = next(i for i in INSTANCES if i != owner)
        choices: dict[str, uuid.UUID | str | None] = {
            "uuid": owner,
            "text": str(owner),
            "upper": str(owner).upper(),
            "wrong": other,
            "stranger": str(STRANGER),
            "missing": None,
            "malformed": str(owner).replace("-", ""),
        }
        instance = choices[presented]
        outcome = self._predict(expected, presented)
        call = token.encode("ascii") if as_bytes else token
        if outcome is None:
            assert expected is not None
            connection = self.service.validate(call, instance)
            self._assert_matches(connection, token, expected)
            return
        error, reason = outcome
        with pytest.raises(ConsoleAuthError) as refused:
            self.service.validate(call, instance)
        if self.routed and presented in ("wrong", "stranger") and _unknown(refused.value):
            return  # asked in that instance's cell, where the token is not
        assert type(refused.value) is error
        if reason is not None:
            assert isinstance(refused.value, InvalidToken)
            assert refused.value.reason is reason

    def _predict(
        self, expected: Expected | None, presented: str
    ) -> tuple[type[Exception], InvalidTokenReason | None] | None:
        """The documented order: uuid shape, required uuid, known, unexpired, owner."""
        if presented == "malformed":
            return InvalidRequest, None
        if presented == "missing" and self.service.policy.require_instance_uuid:
            return InstanceMismatch, None
        if expected is None:
            return InvalidToken, InvalidTokenReason.UNKNOWN
        if self.clock.now() >= expected.expires_at:
            return InvalidToken, InvalidTokenReason.EXPIRED
        if presented in ("wrong", "stranger"):
            return InstanceMismatch, None
        return None

    @staticmethod
    def _assert_matches(connection: ConsoleConnection, token: str, expected: Expected) -> None:
        assert connection.token_hash == hash_token(token)
        assert (
            connection.instance_uuid,
            connection.host,
            connection.port,
            connection.console_type,
            connection.expires_at,
            connection.issued_at,
        ) == tuple(expected)


def _unknown(error: Exception) -> bool:
    return isinstance(error, InvalidToken) and error.reason is InvalidTokenReason.UNKNOWN


STATEFUL_SETTINGS: Final = settings(
    max_examples=min(settings().max_examples, 100),
    stateful_step_count=50,
)


def test_service_agrees_with_a_dict_model(backend: Backend) -> None:
    class OnThisBackend(ConsoleTokensMachine):
        def __init__(self) -> None:
            super().__init__(backend)

    run_state_machine_as_test(OnThisBackend, settings=STATEFUL_SETTINGS)
