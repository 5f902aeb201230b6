"""The two sides on a SQLite file: the library, and plain ``sqlite3`` as the floor.

Both files get their schema from the library's own migration and their
connections the library's own pragmas, so the only difference left is the
code between the caller and SQLite, which is what the ratio is about.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Final, Protocol
from uuid import UUID

from sqlalchemy import Engine

from console_auth.adapters.sql.engine import SQLITE_PRAGMAS, open_engine
from console_auth.adapters.sql.migrate import upgrade
from console_auth.adapters.sql.repository import SqlConsoleConnectionRepository
from console_auth.adapters.sql.statements import Statements
from console_auth.adapters.system import SecretsTokenSource
from console_auth.application import ConsoleAuthService, ServicePolicy
from console_auth.domain import TOKEN_BYTES
from console_auth.domain.types import to_microseconds

from .workload import (
    ACCESS_URL_BASE,
    CONSOLE_TYPE,
    HOST,
    PORT,
    STORED_OPTIONS,
    TTL_US,
    BenchClock,
    authorize_all,
    revoke_all,
    validate_all,
)

TABLE: Final = "console_connections"
LIBRARY_FILE: Final = "library.sqlite3"
FLOOR_FILE: Final = "floor.sqlite3"
SMALL_FILE: Final = "growth-small.sqlite3"
BIG_FILE: Final = "growth-big.sqlite3"

INSERTED: Final = (
    "token_hash",
    "instance_uuid",
    "host",
    "port",
    "console_type",
    "options",
    "access_url_base",
    "expires_at_us",
    "issued_at_us",
    "mac",
)
"""Every column but the generated id: what an authorize writes and a
validate reads, on both sides. The floor stores the token hash again as its
MAC, the same size: computing the real one is the library's work."""

_INSERT: Final = (
    f"INSERT INTO {TABLE} ({', '.join(INSERTED)}) VALUES ({', '.join('?' * len(INSERTED))})"
)

_DELETE_INSTANCE: Final = f"DELETE FROM {TABLE} WHERE instance_uuid = ?"
_RECORD_REVOCATION: Final = (
    "INSERT INTO console_revocations (instance_uuid, revoked_at_us) VALUES (?, ?) "
    "ON CONFLICT (instance_uuid) DO UPDATE SET revoked_at_us = excluded.revoked_at_us"
)
_EXPIRED_IDS: Final = (
    f"SELECT id FROM {TABLE} WHERE expires_at_us <= ? ORDER BY expires_at_us LIMIT ?"
)
"""The order the library's purge uses (``repository.oldest_expired``); the
expiry index serves it, so it costs no sort on either side."""


class Side(Protocol):
    """One way of running the workload; the benchmark times each call."""

    name: str

    def authorize(self, instances: Sequence[UUID]) -> list[str]:
        """Issue one token per element (instances repeat); return the tokens."""
        ...

    def validate(self, tokens: Sequence[str]) -> int:
        """Check each token; return how many opened a console."""
        ...

    def revoke(self, instances: Sequence[UUID]) -> int:
        """Revoke each instance; return how many rows went."""
        ...

    def purge(self) -> int:
        """Delete every expired row in bounded batches; return how many."""
        ...

    def close(self) -> None: ...


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def create_schema(path: Path) -> None:
    """Run the library's migration on a new file: the floor then has the
    very schema the library has, indexes and constraints included."""
    engine = open_engine(sqlite_url(path))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def schema_of(path: Path) -> list[tuple[str, str, str, str | None]]:
    """``sqlite_master`` as sorted rows, comparable between files."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return sorted(rows, key=lambda row: (row[0], row[1]))


def connect_raw(path: Path) -> sqlite3.Connection:
    """A stdlib connection set up like the library's.

    The default isolation level (a transaction opened before each write and
    ended by ``commit``) is what SQLAlchemy's pysqlite dialect uses too.
    """
    conn = sqlite3.connect(path)
    for pragma in SQLITE_PRAGMAS:
        conn.execute(pragma).fetchall()
    return conn


class LibrarySide:
    """The service as a compute API and a proxy would call it."""

    name = "library"

    def __init__(self, path: Path, clock: BenchClock, policy: ServicePolicy) -> None:
        self.engine: Engine = open_engine(sqlite_url(path))
        self._service = ConsoleAuthService(
            SqlConsoleConnectionRepository(Statements(self.engine)),
            clock,
            SecretsTokenSource(),
            policy,
        )

    def authorize(self, instances: Sequence[UUID]) -> list[str]:
        return authorize_all(self._service, instances)

    def validate(self, tokens: Sequence[str]) -> int:
        return validate_all(self._service, tokens)

    def revoke(self, instances: Sequence[UUID]) -> int:
        return revoke_all(self._service, instances)

    def purge(self) -> int:
        return self._service.purge_expired()

    def close(self) -> None:
        self.engine.dispose()


class FloorSide:
    """The least work that still does the job: what the library could
    approach, but never beat, on the same database."""

    name = "floor"

    def __init__(self, path: Path, clock: BenchClock, policy: ServicePolicy) -> None:
        self._conn = connect_raw(path)
        self._clock = clock
        self._batch = policy.purge_batch_size
        self._select = f"SELECT {', '.join(INSERTED)} FROM {TABLE} WHERE token_hash = ?"

    def authorize(self, instances: Sequence[UUID]) -> list[str]:
        conn, now = self._conn, self._clock.now
        tokens = []
        for instance in instances:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            issued_us = to_microseconds(now())
            token_hash = hashlib.sha256(token.encode("ascii")).hexdigest()
            conn.execute(
                _INSERT,
                (
                    token_hash,
                    str(instance),
                    HOST,
                    PORT,
                    CONSOLE_TYPE,
                    json.dumps(STORED_OPTIONS, sort_keys=True),
                    ACCESS_URL_BASE,
                    issued_us + TTL_US,
                    issued_us,
                    token_hash,
                ),
            )
            conn.commit()
            tokens.append(token)
        return tokens

    def validate(self, tokens: Sequence[str]) -> int:
        conn, now, select = self._conn, self._clock.now, self._select
        hits = 0
        for token in tokens:
            token_hash = hashlib.sha256(token.encode("ascii")).hexdigest()
            row = conn.execute(select, (token_hash,)).fetchone()
            if row is None:
                continue
            record = dict(zip(INSERTED, row, strict=True))
            if record["expires_at_us"] > to_microseconds(now()):
                hits += 1
        return hits

    def revoke(self, instances: Sequence[UUID]) -> int:
        """The library's two statements: the revocation record, then the delete."""
        conn, now = self._conn, self._clock.now
        deleted = 0
        for instance in instances:
            conn.execute(_RECORD_REVOCATION, (str(instance), to_microseconds(now())))
            conn.commit()
            cursor = conn.execute(_DELETE_INSTANCE, (str(instance),))
            conn.commit()
            deleted += cursor.rowcount
        return deleted

    def purge(self) -> int:
        conn, batch = self._conn, self._batch
        now_us = to_microseconds(self._clock.now())
        total = 0
        while True:
            ids = [row[0] for row in conn.execute(_EXPIRED_IDS, (now_us, batch))]
            if ids:
                marks = ", ".join("?" * len(ids))
                conn.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", ids)
                conn.commit()
            total += len(ids)
            if len(ids) < batch:
                return total

    def close(self) -> None:
        self._conn.close()


Row = tuple[str, str, str, int, str, str, str, int, int, str | None]


def fake_rows(
    count: int,
    *,
    expires_us: int,
    issued_us: int,
    rng: random.Random,
    known: dict[int, str] | None = None,
) -> Iterator[Row]:
    """Rows as the library would store them, with random hashes.

    A stored hash is uniformly random, so random ones index exactly like
    real ones; only the rows at ``known`` positions get the hash of a token
    the caller keeps, so it can present them later. They carry no MAC, as
    rows written before 1.2: the growth measurement compares table sizes,
    not the per-call work that authorize and validate hits measure.
    """
    options = json.dumps(STORED_OPTIONS, sort_keys=True)
    instance = ""
    for position in range(count):
        if position % 2 == 0:
            instance = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        token = None if known is None else known.get(position)
        token_hash = (
            f"{rng.getrandbits(256):064x}"
            if token is None
            else hashlib.sha256(token.encode("ascii")).hexdigest()
        )
        yield (
            token_hash,
            instance,
            HOST,
            PORT,
            CONSOLE_TYPE,
            options,
            ACCESS_URL_BASE,
            expires_us,
            issued_us,
            None,
        )


def known_tokens(count: int, positions: int, rng: random.Random) -> dict[int, str]:
    """Fresh tokens at ``positions`` random row numbers out of ``count``."""
    return {
        position: secrets.token_urlsafe(TOKEN_BYTES)
        for position in rng.sample(range(count), min(positions, count))
    }


def bulk_insert(path: Path, rows: Iterable[Row]) -> None:
    """Insert in one transaction with ``executemany``.

    Set-up only, so durability is traded for speed: no fsync, and a page
    cache large enough that random index inserts do not thrash. Neither
    setting outlives this connection, so timed connections are unaffected.
    """
    with closing(sqlite3.connect(path)) as conn:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma).fetchall()
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")
        with conn:
            conn.executemany(_INSERT, rows)
