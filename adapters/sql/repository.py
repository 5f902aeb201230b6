"""``ConsoleConnectionRepository`` on SQL: Core statements built once at import, rows validated
on the way out (ARCHITECTURE.md: "The hot path is lean", "Rows are validated on read")."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from console_auth.application.ports import StoredConnection
from console_auth.application.service import in_batches, purge_in_batches
from console_auth.domain import BackendUnavailable, ConsoleConnection, ConsoleOptions
from console_auth.domain.model import invalid_request
from console_auth.domain.types import from_microseconds, to_microseconds

from .statements import DUPLICATE_HASH, Prepared, Statements
from .tables import CONSOLE_CONNECTIONS, REVOCATIONS

logger = logging.getLogger(__name__)

DELETE_CHUNK: Final = 500
"""Ids per ``IN (...)``: below every dialect's bound-parameter limit."""
_T: Final = CONSOLE_CONNECTIONS
_V: Final = REVOCATIONS
_COLUMNS: Final = tuple(c for c in _T.c if c.key != "id")  # in table order, as _to_model reads
_OPTION_FIELDS: Final = frozenset(ConsoleOptions.model_fields)
_INSERT: Final = insert(_T).inline().values({c.key: bindparam(c.key) for c in _COLUMNS})
"""``inline()``: no ``RETURNING id`` on PostgreSQL, nobody reads it."""
_BY_HASH: Final = select(*_COLUMNS).where(_T.c.token_hash == bindparam("token_hash"))
_BY_INSTANCE: Final = delete(_T).where(_T.c.instance_uuid == bindparam("instance_uuid"))


class SqlConsoleConnectionRepository:
    """Safe for threads, as ``Statements`` is."""

    def __init__(self, statements: Statements) -> None:
        self._statements = statements
        prepare = functools.partial(Prepared, statements.engine)
        self._insert = prepare(_INSERT)
        self._by_hash = prepare(_BY_HASH)
        self._by_instance = prepare(_BY_INSTANCE)
        self._record = prepare(_record_revocation(statements.engine.dialect.name))

    def add(self, connection: ConsoleConnection) -> None:
        self._statements.write(self._insert, _to_row(connection), on_conflict=DUPLICATE_HASH)

    def get_by_hash(
        self, token_hash: str, instance_uuid: UUID | None = None
    ) -> ConsoleConnection | None:
        row = self._statements.fetch_one(self._by_hash, {"token_hash": token_hash})
        return None if row is None else _to_model(row)

    def delete_by_instance(self, instance_uuid: UUID, revoked_at: datetime) -> int:
        """The record first: a revoke cut short has ended the sessions and can run again."""
        instance = str(instance_uuid)
        at = {"instance_uuid": instance, "revoked_at_us": to_microseconds(revoked_at)}
        self._statements.write(self._record, at)
        return self._statements.write(self._by_instance, {"instance_uuid": instance})

    def revocations(self, instance_uuids: Collection[UUID]) -> dict[UUID, datetime]:
        wanted = sorted(str(instance_uuid) for instance_uuid in instance_uuids)

        def read(conn: Connection) -> dict[UUID, datetime]:
            found: dict[UUID, datetime] = {}
            for start in range(0, len(wanted), DELETE_CHUNK):
                chunk = _V.c.instance_uuid.in_(wanted[start : start + DELETE_CHUNK])
                for instance, revoked_at_us in conn.execute(select(*_V.c).where(chunk)):
                    found[UUID(instance)] = _revoked_at(instance, revoked_at_us)
            return found

        return self._statements.run(read)

    def delete_revocations(self, before: datetime) -> int:
        old = delete(_V).where(_V.c.revoked_at_us < to_microseconds(before))
        return self._statements.run(lambda conn: int(conn.execute(old).rowcount))

    def purge_expired(self, now: datetime, host: str | None, batch_size: int) -> int:
        return purge_in_batches(self, now, host, batch_size)

    def delete_expired(self, now: datetime, host: str | None, limit: int) -> int:
        """Select the oldest ids, then delete by id (ARCHITECTURE.md, "Purge deletes by id")."""
        if limit < 1:
            return 0
        oldest = oldest_expired(now, host, limit)
        return delete_selected(self._statements, _T, oldest, expired_again(now))

    def purge_instances(
        self, now: datetime, instance_uuids: Collection[UUID], batch_size: int
    ) -> int:
        """``DELETE_CHUNK`` instances at a time, each chunk in batches."""
        wanted = sorted(str(instance_uuid) for instance_uuid in instance_uuids)
        expired = _T.c.expires_at_us <= to_microseconds(now)
        total = 0
        for start in range(0, len(wanted), DELETE_CHUNK):
            of_chunk = _T.c.instance_uuid.in_(wanted[start : start + DELETE_CHUNK])

            def batch(limit: int, of_chunk: ColumnElement[bool] = of_chunk) -> int:
                oldest = select(_T.c.id).where(of_chunk, expired).limit(limit)
                return delete_selected(self._statements, _T, oldest, expired_again(now))

            total += in_batches(batch, batch_size)
        return total

    def connections(
        self,
        after: str | None,
        limit: int,
        *,
        instance_uuid: UUID | None = None,
        host: str | None = None,
        live_at: datetime | None = None,
    ) -> list[StoredConnection]:
        """Through the unique hash index, in its order."""
        page = select(*_COLUMNS).order_by(_T.c.token_hash).limit(limit)
        if after is not None:
            page = page.where(_T.c.token_hash > after)
        if instance_uuid is not None:
            page = page.where(_T.c.instance_uuid == str(instance_uuid))
        if host is not None:
            page = page.where(_T.c.host == host)
        if live_at is not None:
            page = page.where(_T.c.expires_at_us > to_microseconds(live_at))
        rows = self._statements.run(lambda conn: conn.execute(page).all())
        return [StoredConnection(_to_model(row)) for row in rows]

    def delete_by_hash(self, token_hash: str) -> int:
        one = delete(_T).where(_T.c.token_hash == token_hash)
        return self._statements.run(lambda conn: int(conn.execute(one).rowcount))

    def looked_in(self, instance_uuid: UUID | None) -> str | None:
        return None


def delete_selected(
    statements: Statements, table: Table, ids_of: Select[tuple[int]], still: ColumnElement[bool]
) -> int:
    """Delete the rows ``ids_of`` selects where ``still`` holds, in one transaction."""

    def purge(conn: Connection) -> int:
        ids = conn.scalars(ids_of).all()
        deleted = 0
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = table.c.id.in_(ids[start : start + DELETE_CHUNK])
            deleted += conn.execute(delete(table).where(chunk, still)).rowcount
        return deleted

    return statements.run(purge)


def _revoked_at(instance: str, revoked_at_us: object) -> datetime:
    """An unreadable row is a store fault, never "not revoked"."""
    try:
        return from_microseconds(revoked_at_us)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        raise BackendUnavailable(
            f"stored revocation of instance {instance} is unreadable"
        ) from None


def _record_revocation(dialect: str) -> Insert:
    """Insert, or keep the later time (racing revokes, skewed clocks): SQLAlchemy has
    no dialect-neutral upsert."""
    values: dict[str, Any] = {
        "instance_uuid": bindparam("instance_uuid"),
        "revoked_at_us": bindparam("revoked_at_us"),
    }
    stored = _V.c.revoked_at_us
    if dialect in ("mysql", "mariadb"):
        upsert = mysql.insert(_V).values(values)
        later = func.greatest(stored, upsert.inserted.revoked_at_us)
        return upsert.on_duplicate_key_update(revoked_at_us=later)
    on_postgresql = dialect == "postgresql"
    on_conflict = (postgresql.insert(_V) if on_postgresql else sqlite.insert(_V)).values(values)
    greatest = func.greatest if on_postgresql else func.max  # SQLite's two-argument max
    return on_conflict.on_conflict_do_update(
        index_elements=[_V.c.instance_uuid],
        set_={"revoked_at_us": greatest(stored, on_conflict.excluded.revoked_at_us)},
    )


def expired_again(now: datetime) -> ColumnElement[bool]:
    """``+ 0`` so no index serves it, only the primary key (ARCHITECTURE.md, "Purge deletes
    by id"); an id reused since the select is a newer row, kept unless expired too."""
    return (_T.c.expires_at_us + literal_column("0")) <= to_microseconds(now)


def oldest_expired(now: datetime, host: str | None, limit: int) -> Select[tuple[int]]:
    """By expiry alone, the expiry indexes' order (ARCHITECTURE.md, "Purge deletes by id")."""
    expired = _T.c.expires_at_us <= to_microseconds(now)
    where = expired if host is None else expired & (_T.c.host == host)
    return select(_T.c.id).where(where).order_by(_T.c.expires_at_us).limit(limit)


def _to_row(connection: ConsoleConnection) -> dict[str, Any]:
    issued_at = connection.issued_at
    return {
        "token_hash": connection.token_hash,
        "instance_uuid": str(connection.instance_uuid),
        "host": connection.host,
        "port": connection.port,
        "console_type": connection.console_type.value,
        "options": connection.options.model_dump_json(),
        "access_url_base": connection.access_url_base,
        "expires_at_us": to_microseconds(connection.expires_at),
        "issued_at_us": None if issued_at is None else to_microseconds(issued_at),
        "mac": connection.mac,
    }


def _to_model(row: Sequence[Any]) -> ConsoleConnection:
    token_hash, instance_uuid, host, port, console_type, options, base, expires, issued, mac = row
    try:
        return ConsoleConnection.model_validate(
            {
                "token_hash": token_hash,
                "instance_uuid": instance_uuid,
                "host": host,
                "port": port,
                "console_type": console_type,
                "options": _options(options),
                "access_url_base": base,
                "expires_at": from_microseconds(expires),
                "issued_at": None if issued is None else from_microseconds(issued),
                "mac": mac,
            }
        )
    except ValidationError as exc:  # from None: pydantic's text quotes the stored values
        raise _unreadable(token_hash, str(invalid_request(exc))) from None
    except (TypeError, ValueError, OverflowError) as exc:  # bad JSON, a time out of range
        raise _unreadable(token_hash, f"{type(exc).__name__} while decoding") from exc


def _unreadable(token_hash: object, problem: str) -> BackendUnavailable:
    """A store fault for the caller, not an unknown token."""
    logger.error("unreadable console connection row (token hash %.8s): %s", token_hash, problem)
    return BackendUnavailable(f"stored console connection is unreadable: {problem}")


@functools.lru_cache(maxsize=1024)
def _options(text: str) -> object:
    """Keys a newer release added are dropped, as ``from_primitive`` drops newer fields;
    cached, as a few option sets repeat (validation copies the dict)."""
    data = json.loads(text)
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if key in _OPTION_FIELDS}
    return data
