"""The use cases: issue a console, check a presented token, clean up.

Depends only on the ports and the domain, so the same code runs on SQLite,
a cell database, memcached or memory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, TypedDict
from uuid import UUID

from pydantic import SecretStr

from console_auth.domain import (
    BackendUnavailable,
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    InstanceMismatch,
    InvalidRequest,
    InvalidToken,
    InvalidTokenReason,
    IssuedConsole,
    UnknownCell,
    check_token,
    hash_token,
    parse_access_url,
)
from console_auth.domain.errors import AmbiguousTokenHash, UnknownTokenHash
from console_auth.domain.integrity import connection_mac, mac_matches
from console_auth.domain.model import parse_host, parse_instance_uuid, parse_utc
from console_auth.domain.tokens import HASH_PREFIX_LENGTH, check_hash_prefix, is_token_hash
from console_auth.domain.types import parse_ttl

from .events import (
    UseCase,
    asked_console,
    asked_host,
    asked_instance,
    bind_observed,
    observed,
    presented,
    presented_url,
)
from .ports import (
    MAX_PAGE,
    Clock,
    ConsoleConnectionRepository,
    ConsoleEvents,
    StoredConnection,
    TokenSource,
)

logger = logging.getLogger(__name__)

MAX_PURGE_BATCH_SIZE: Final = 100_000
"""Rows one purge transaction may delete: a larger batch holds the write lock
too long, and every dialect's integer types hold it."""

DEFAULT_PURGE_GRACE: Final = timedelta(minutes=5)
"""How long after expiry a token may still be purged no sooner: validity is
decided at ``validate``, so a purger whose clock runs ahead must not delete
live tokens."""

MAX_PURGE_GRACE: Final = timedelta(days=1)

REVOCATION_RETENTION: Final = timedelta(days=1)
"""How long purge keeps a revocation record: a proxy that cannot reach its
store for longer may miss the revocation of a session it holds."""

MAX_LEASE_TTL: Final = timedelta(days=1)

DEFAULT_PAGE: Final = 500
"""Connections per page of an operator's listing."""


@dataclass(frozen=True, kw_only=True)
class ServicePolicy:
    """The knobs a deployment turns; defaults suit a single-cell cloud."""

    default_ttl: timedelta = timedelta(minutes=10)
    require_instance_uuid: bool = False
    """Refuse URLs without an instance uuid once every issued URL has one."""
    lease_ttl: timedelta = timedelta(seconds=60)
    """How long a proxy's serial-port lease lasts without a heartbeat."""
    purge_batch_size: int = 1000
    purge_grace: timedelta = DEFAULT_PURGE_GRACE
    """Purge deletes only tokens and port leases that expired more than this
    long ago: a purger whose clock runs ahead would delete live ones (a
    deleted live lease frees its port for a second client)."""
    require_token_mac: bool = False
    """Refuse stored connections without a MAC (written before 1.2) too: set
    it once every token issued before the upgrade has expired, so that a
    writer to the store cannot strip a MAC to pass a changed row."""

    def __post_init__(self) -> None:
        parse_ttl(self.default_ttl)
        lease_ttl = self.lease_ttl
        if not isinstance(lease_ttl, timedelta) or not timedelta(0) < lease_ttl <= MAX_LEASE_TTL:
            raise InvalidRequest(
                f"lease ttl must be a timedelta above zero and at most {MAX_LEASE_TTL}"
            )
        check_purge(self.purge_batch_size, self.purge_grace)


def check_purge(batch_size: object, grace: object) -> None:
    """The purge knobs of a policy: a batch a transaction can hold, a grace
    from zero to ``MAX_PURGE_GRACE``."""
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_PURGE_BATCH_SIZE:
        raise InvalidRequest(f"purge batch size must be from 1 to {MAX_PURGE_BATCH_SIZE}")
    if not isinstance(grace, timedelta) or not timedelta(0) <= grace <= MAX_PURGE_GRACE:
        raise InvalidRequest(f"purge grace must be a timedelta from 0 to {MAX_PURGE_GRACE}")


def clock_now(clock: Clock) -> datetime:
    """The clock's time, aware UTC. A naive time (``oslo_utils.timeutils.utcnow()``)
    is refused: read as local time it would shift every expiry."""
    now = clock.now()
    if isinstance(now, datetime) and now.tzinfo is UTC:  # the system clock's: no conversion
        return now
    return parse_utc(now, "Clock.now()")


def purge_cutoff(now: datetime, grace: timedelta) -> datetime | None:
    """What a purge deletes up to: expired more than ``grace`` before
    ``now``; ``None`` when that is before the earliest datetime (nothing is)."""
    try:
        return now - grace
    except OverflowError:
        return None


class IssueOptions(TypedDict, total=False):
    """The optional keywords of ``ConsoleAuthService.authorize``, for a
    caller that passes them through (``ConsolePortService.authorize_serial``)."""

    options: ConsoleOptions | Mapping[str, Any] | None
    access_url_base: str | None
    ttl: timedelta | None


class IssueStep(Protocol):
    """Something taken with a console's token hash before the console is
    stored (a serial port's hold), so that two issuers racing never take
    the same thing."""

    def __call__(
        self, connection: ConsoleConnection, /
    ) -> tuple[ConsoleConnection, Callable[[], object]]:
        """Take it for ``connection`` (validated, token hash set, not stored
        yet); return the connection to store (changed as the claim needs,
        same token hash) and how to give the claim back if storing fails."""
        ...


def _nothing_to_undo() -> None:
    return None


class ConsoleAuthService:
    """Authorize, validate, revoke and purge console connections, on any
    ``ConsoleConnectionRepository``: one store, cells, or a fallback pair.

    With ``events``, each use case reports what it did (``events.observed``).
    """

    def __init__(
        self,
        repository: ConsoleConnectionRepository,
        clock: Clock,
        tokens: TokenSource,
        policy: ServicePolicy | None = None,
        events: ConsoleEvents | None = None,
    ) -> None:
        self._repository = repository
        self._clock = clock
        self._tokens = tokens
        self._policy = policy or ServicePolicy()
        self.events: Final = events
        """Where use cases report; ``None``: nowhere (an attribute: read on every call)."""
        bind_observed(self)

    @property
    def policy(self) -> ServicePolicy:
        return self._policy

    def now(self) -> datetime:
        """The service's clock, aware UTC: what serial ports time their
        leases with, so tokens and leases never disagree on the time."""
        return clock_now(self._clock)

    @observed(UseCase.AUTHORIZE, asked_console)
    def authorize(
        self,
        instance_uuid: UUID | str,
        host: str,
        port: int,
        console_type: ConsoleType | str,
        *,
        options: ConsoleOptions | Mapping[str, Any] | None = None,
        access_url_base: str | None = None,
        ttl: timedelta | None = None,
        claim: IssueStep | None = None,
    ) -> IssuedConsole:
        """Store a new connection and return its token, the only time it is seen.

        ``claim`` takes something with the token's hash first (a serial
        port's hold) and may change the connection (its port); it is given
        back if storing fails, and the MAC covers what is stored.
        """
        now, expires_at = self._expiry(ttl)
        token = check_token(self._tokens.new_token())
        connection = ConsoleConnection.build(
            instance_uuid=parse_instance_uuid(instance_uuid),
            host=host,
            port=port,
            console_type=console_type,
            options={} if options is None else options,
            access_url_base=access_url_base,
            token_hash=hash_token(token),
            expires_at=expires_at,
            issued_at=now,
        )
        connection, undo = (connection, _nothing_to_undo) if claim is None else claim(connection)
        connection = connection.model_copy(update={"mac": connection_mac(token, connection)})
        try:
            self._repository.add(connection)
        except BaseException:
            undo()
            raise
        logger.info(
            "authorized %s console for instance %s on %s:%s (token hash %.8s)",
            connection.console_type,
            connection.instance_uuid,
            connection.host,
            connection.port,
            connection.token_hash,
        )
        return IssuedConsole(token=SecretStr(token), connection=connection)

    def _expiry(self, ttl: timedelta | None) -> tuple[datetime, datetime]:
        """Now, and when a token issued now with ``ttl`` expires."""
        ttl = self._policy.default_ttl if ttl is None else parse_ttl(ttl)
        now = self.now()  # in UTC: a TTL is elapsed time, wall time jumps at DST
        try:
            return now, now + ttl
        except OverflowError:
            raise InvalidRequest("ttl puts the expiry past the supported date range") from None

    @observed(UseCase.VALIDATE, presented, hot=True)
    def validate(
        self, token: str | bytes, instance_uuid: UUID | str | None = None
    ) -> ConsoleConnection:
        """The connection the token grants, or a typed refusal.

        Shape and uuid are checked before the store is asked, so garbage
        costs no round trip.
        """
        return self._validate(token, instance_uuid)

    def _validate(self, token: str | bytes, instance_uuid: UUID | str | None) -> ConsoleConnection:
        token = check_token(token)
        token_hash = hash_token(token)
        expected = None if instance_uuid is None else parse_instance_uuid(instance_uuid)
        if expected is None and self._policy.require_instance_uuid:
            raise InstanceMismatch("an instance uuid is required with the console token")
        connection = self._repository.get_by_hash(token_hash, expected)
        if connection is None:
            logger.info("refused console token (hash %.8s): unknown", token_hash)
            raise InvalidToken(InvalidTokenReason.UNKNOWN)
        self._check_mac(token, connection)  # first: nothing of a changed row can be trusted
        if connection.is_expired(self.now()):
            logger.info("refused console token (hash %.8s): expired", token_hash)
            raise InvalidToken(InvalidTokenReason.EXPIRED)
        if expected is not None and expected != connection.instance_uuid:
            logger.warning(
                "refused console token (hash %.8s): issued for instance %s, presented for %s",
                token_hash,
                connection.instance_uuid,
                expected,
            )
            raise InstanceMismatch("the console token was not issued for this instance")
        return connection

    def _check_mac(self, token: str, connection: ConsoleConnection) -> None:
        mac = connection.mac
        if mac_matches(token, connection, mac) if mac else not self._policy.require_token_mac:
            return
        logger.error(
            "refused console token (hash %.8s): the stored connection %s (tampered)",
            connection.token_hash,
            "has no MAC" if mac is None else "does not match its MAC",
        )
        raise InvalidToken(InvalidTokenReason.TAMPERED)

    @observed(UseCase.VALIDATE, presented_url)
    def validate_url(self, url: str) -> ConsoleConnection:
        """Validate the token and uuid an access URL (or request target) carries."""
        token, instance_uuid = parse_access_url(url)
        return self._validate(token, instance_uuid)

    @observed(UseCase.REVOKE, asked_instance)
    def revoke_instance(self, instance_uuid: UUID | str) -> int:
        """Forget every token of an instance (deleted, migrated, rebuilt), and
        record the revocation so that proxies end the sessions they opened
        (``revoked_among``); return how many tokens went."""
        instance_uuid = parse_instance_uuid(instance_uuid)
        count = self._repository.delete_by_instance(instance_uuid, self.now())
        logger.info("revoked %d console tokens of instance %s", count, instance_uuid)
        return count

    def revoked_among(self, connections: Collection[ConsoleConnection]) -> list[ConsoleConnection]:
        """The connections whose instance was revoked since they were issued:
        a proxy ends the live sessions they opened. Their tokens may have
        expired and been purged since; the revocation record outlives them
        (``REVOCATION_RETENTION``)."""
        if not connections:
            return []
        revoked = self._repository.revocations({c.instance_uuid for c in connections})
        return [
            connection
            for connection in connections
            if connection.instance_uuid in revoked
            and connection.is_revoked_by(revoked[connection.instance_uuid])
        ]

    @observed(UseCase.PURGE, asked_host)
    def purge_expired(self, host: str | None = None) -> int:
        """Delete connections that expired more than ``purge_grace`` ago, of
        one compute host when given, in batches so no transaction holds the
        table for long. Validity is decided by ``validate``; the grace keeps
        a purger whose clock runs ahead from deleting live tokens. Memory
        stays flat whatever the number of rows: one batch of ids at a time.
        Revocation records older than ``REVOCATION_RETENTION`` (before the
        grace) go too.

        Over cells, only the host's cell when it is known; a cell that fails
        is skipped, and once the others are done a ``BackendUnavailable``
        names it (see ``ConsoleConnectionRepository.purge_expired``).
        """
        host = None if host is None else parse_host(host)
        now = purge_cutoff(self.now(), self._policy.purge_grace)
        if now is None:
            return 0
        total = self._repository.purge_expired(now, host, self._policy.purge_batch_size)
        logger.info("purged %d expired console tokens%s", total, f" of {host}" if host else "")
        return total

    @observed(UseCase.PURGE)
    def purge_instances(self, instance_uuids: Iterable[UUID | str]) -> int:
        """Delete the expired connections of these instances (those a compute
        node runs), as ``purge_expired`` does for a host: the stored ``host``
        is the console's, not always the compute node's (bug 1816399)."""
        wanted = {parse_instance_uuid(instance_uuid) for instance_uuid in instance_uuids}
        now = purge_cutoff(self.now(), self._policy.purge_grace)
        if not wanted or now is None:
            return 0
        total = self._repository.purge_instances(now, wanted, self._policy.purge_batch_size)
        logger.info("purged %d expired console tokens of %d instances", total, len(wanted))
        return total

    def connections(
        self,
        after: str | None = None,
        *,
        instance_uuid: UUID | str | None = None,
        host: str | None = None,
        expired: bool = False,
        limit: int = DEFAULT_PAGE,
    ) -> list[StoredConnection]:
        """One page of stored connections in token-hash order, live ones
        only unless ``expired``; the next page starts ``after`` the last
        hash of this one. An operator's listing: one page in memory at a time."""
        if after is not None and not is_token_hash(after):
            raise InvalidRequest("a listing continues after a whole token hash (64 hex digits)")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"a page holds 1 to {MAX_PAGE} connections")
        return self._repository.connections(
            after,
            limit,
            instance_uuid=None if instance_uuid is None else parse_instance_uuid(instance_uuid),
            host=None if host is None else parse_host(host),
            live_at=None if expired else self.now(),
        )

    @observed(UseCase.REVOKE)
    def revoke_token(self, hash_prefix: str) -> ConsoleConnection:
        """Delete the one stored token (live or expired) whose hash starts
        with ``hash_prefix`` (``HASH_PREFIX_LENGTH`` to 64 hex digits);
        return what it granted. ``UnknownTokenHash`` or ``AmbiguousTokenHash``
        otherwise. No revocation record: a session it opened runs on
        (``revoke_instance`` ends those)."""
        prefix = check_hash_prefix(hash_prefix)
        if len(prefix) == 64:
            found = self._repository.get_by_hash(prefix)
            matches = [] if found is None else [found]
        else:  # every hash starting with the prefix sorts right after it
            page = self._repository.connections(prefix, 2)
            matches = [s.connection for s in page if s.connection.token_hash.startswith(prefix)]
        if len(matches) > 1:
            raise AmbiguousTokenHash(
                f"more than one stored console token has a hash starting with {prefix}; "
                "give more digits"
            )
        if not matches or not self._repository.delete_by_hash(matches[0].token_hash):
            raise UnknownTokenHash(f"no stored console token has a hash starting with {prefix}")
        connection = matches[0]
        logger.info(
            "revoked console token (hash %.8s) of instance %s",
            connection.token_hash,
            connection.instance_uuid,
        )
        return connection

    def explain_url(self, url: str) -> Explanation:
        """``explain`` for the token and uuid an access URL carries."""
        try:
            token, instance_uuid = parse_access_url(url)
        except InvalidToken as exc:
            return Explanation(verdict=exc.reason.value, detail=f"the URL's {exc}")
        except InvalidRequest as exc:
            return Explanation(verdict="bad_request", detail=str(exc))
        return self.explain(token, instance_uuid)

    def explain(self, token: str | bytes, instance_uuid: UUID | str | None = None) -> Explanation:
        """Why ``validate(token, instance_uuid)`` accepts or refuses, and what
        the store holds under the token's hash: validate decides, this only
        adds the stored row and where it was looked for."""
        try:
            token_hash = hash_token(check_token(token))
        except InvalidToken:
            return Explanation(
                verdict="malformed",
                detail="a console token is 43 URL-safe characters (A-Z a-z 0-9 - _)",
            )
        prefix = token_hash[:HASH_PREFIX_LENGTH]
        try:
            expected = None if instance_uuid is None else parse_instance_uuid(instance_uuid)
        except InvalidRequest as exc:
            return Explanation(verdict="bad_request", detail=str(exc), token_hash=prefix)
        found = functools.partial(
            Explanation, token_hash=prefix, instance_uuid=expected, looked_in=None
        )
        try:
            found = functools.partial(found, looked_in=self._repository.looked_in(expected))
            connection = self._validate(token, expected)  # not counted as a validate
        except (InvalidToken, InstanceMismatch, BackendUnavailable, InvalidRequest) as exc:
            return self._explain_refusal(found, exc, token_hash, expected)
        return found(
            verdict="valid",
            detail=f"valid until {connection.expires_at.isoformat()}",
            stored=connection,
        )

    def _explain_refusal(
        self,
        found: Callable[..., Explanation],
        refusal: ConsoleAuthError,
        token_hash: str,
        expected: UUID | None,
    ) -> Explanation:
        if isinstance(refusal, InstanceMismatch):
            if expected is None:
                return found(verdict="instance_required", detail=str(refusal))
            stored = self._stored(token_hash, expected)
            issued_for = "" if stored is None else f" it was issued for {stored.instance_uuid}"
            detail = f"presented for instance {expected};{issued_for}"
            return found(verdict="instance_mismatch", detail=detail, stored=stored)
        if not isinstance(refusal, InvalidToken):
            verdict = next(v for kind, v in _VERDICTS if isinstance(refusal, kind))
            return found(verdict=verdict, detail=str(refusal))
        reason = refusal.reason
        if reason is InvalidTokenReason.UNKNOWN:
            return found(verdict=reason.value, detail=_REFUSAL_DETAIL[reason])
        stored = self._stored(token_hash, expected)
        if reason is InvalidTokenReason.EXPIRED and stored is not None:
            detail = f"expired at {stored.expires_at.isoformat()}"
        else:
            detail = _REFUSAL_DETAIL.get(reason, f"refused ({reason.value})")
        return found(verdict=reason.value, detail=detail, stored=stored)

    def _stored(self, token_hash: str, instance_uuid: UUID | None) -> ConsoleConnection | None:
        """The row behind a refusal, for its details; gone (purged since, or
        the store went away) is no details, the verdict stands."""
        try:
            return self._repository.get_by_hash(token_hash, instance_uuid)
        except BackendUnavailable:
            return None


_VERDICTS: Final = (
    (UnknownCell, "unknown_cell"),  # before InvalidRequest, which it is
    (BackendUnavailable, "backend_unavailable"),
    (InvalidRequest, "bad_request"),
)


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """Why a presented token is or is not good, for an operator: what
    ``validate`` decided, and what the store holds under its hash."""

    verdict: str
    """``valid``, or a stable refusal code: ``malformed``, ``unknown``,
    ``expired``, ``tampered`` (``InvalidToken`` reasons), ``instance_mismatch``,
    ``instance_required``, ``bad_request``, ``unknown_cell``,
    ``backend_unavailable``."""
    detail: str
    """One sentence; never the token."""
    token_hash: str | None = None
    """The first ``HASH_PREFIX_LENGTH`` hex digits, once the token is well formed."""
    instance_uuid: UUID | None = None
    """The instance it was presented for, if any."""
    looked_in: str | None = None
    """Where the store looked (``cell a``), for a store split over cells."""
    stored: ConsoleConnection | None = None
    """The stored connection: what ``validate`` returned, or what refused it
    (expired, another instance's, or changed since it was stored)."""


_REFUSAL_DETAIL: Final = {
    InvalidTokenReason.UNKNOWN: "no stored console token has this hash",
    InvalidTokenReason.TAMPERED: (
        "the stored connection does not match its MAC (or has none while MACs are "
        "required): it was changed in the store after it was issued"
    ),
}


def is_listed(
    connection: ConsoleConnection,
    after: str | None,
    instance_uuid: UUID | None,
    host: str | None,
    live_at: datetime | None,
) -> bool:
    """The filter of ``ConsoleConnectionRepository.connections``, for a store
    that cannot say it in a query."""
    return (
        (after is None or connection.token_hash > after)
        and (instance_uuid is None or connection.instance_uuid == instance_uuid)
        and (host is None or connection.host == host)
        and (live_at is None or not connection.is_expired(live_at))
    )


def in_batches(delete_batch: Callable[[int], int], batch_size: int) -> int:
    """``delete_batch(batch_size)`` until it deletes fewer; the total: how a
    single store purges, each call one short transaction."""
    total = 0
    while True:
        deleted = delete_batch(batch_size)
        total += deleted
        if deleted < batch_size:
            return total


class BatchPurgeable(Protocol):
    """What ``purge_in_batches`` needs of a single store."""

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """Delete at most ``limit`` connections with ``expires_at <= now``
        (of ``host`` only, when given); return how many: one short transaction."""
        ...

    def delete_revocations(self, before: datetime) -> int:
        """Forget revocations recorded before ``before``; return how many
        (a store that expires them by itself may answer 0)."""
        ...


def purge_in_batches(
    store: BatchPurgeable, now: datetime, host: str | None, batch_size: int
) -> int:
    """How a single store purges (``ConsoleConnectionRepository.purge_expired``):
    ``delete_expired`` until it deletes fewer than ``batch_size``, each call
    one short transaction, then the revocation records past their retention."""
    total = in_batches(functools.partial(store.delete_expired, now, host), batch_size)
    with contextlib.suppress(OverflowError):  # before the earliest datetime: none is older
        store.delete_revocations(now - REVOCATION_RETENTION)
    return total
