"""The schema as the code sees it: typed declarative, queried through Core.

Migrations never import it (each describes the schema of its day); a test checks they agree.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Table, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Names chosen here, not by each dialect, so a migration can drop them by name anywhere."""

ID_TYPE: Final = BigInteger().with_variant(Integer(), "sqlite")
"""SQLite makes only an ``INTEGER`` primary key the rowid (and so
auto-incrementing); elsewhere 64 bits, since ids are never reused soon."""

MYSQL_TABLE_OPTIONS: Final = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
"""Exact text as on every other backend (ARCHITECTURE.md, "Exact text on MariaDB"); ``_bin``
pads with spaces when comparing, and no validated host, hash or uuid ends in one."""


def ascii_string(length: int) -> TypeEngine[str]:
    """Hex hashes and uuids: one byte a character and binary comparison on
    MariaDB/MySQL (a quarter of utf8mb4's index size); plain elsewhere."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConsoleConnectionRow(Base):
    """One issued token's connection, found by the hash of the token (the one unique key).

    Times, here and below, are integer microseconds since the Unix epoch (UTC).
    """

    __tablename__ = "console_connections"
    __table_args__ = (
        Index(None, "host", "expires_at_us"),  # per-host purge
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    token_hash: Mapped[str] = mapped_column(ascii_string(64), unique=True)
    instance_uuid: Mapped[str] = mapped_column(ascii_string(36), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    console_type: Mapped[str] = mapped_column(String(32))
    options: Mapped[str] = mapped_column(Text)
    """JSON of ``ConsoleOptions.model_dump(mode="json")``."""
    access_url_base: Mapped[str | None] = mapped_column(String(1024))
    expires_at_us: Mapped[int] = mapped_column(BigInteger, index=True)  # global purge
    issued_at_us: Mapped[int | None] = mapped_column(BigInteger)
    mac: Mapped[str | None] = mapped_column(ascii_string(64))
    """HMAC-SHA256 of the row's meaning keyed by the clean token (hex), which
    only ``validate`` can check; ``NULL`` in rows written before 0003."""


CONSOLE_CONNECTIONS: Final[Table] = Base.metadata.tables[ConsoleConnectionRow.__tablename__]
"""The mapped class's ``Table``, typed as such for Core statements."""


class PortLeaseRow(Base):
    """Who holds a serial port: one row per (host, port), replaced in place
    by optimistic updates keyed on ``lease_id`` (see ``ports.py``)."""

    __tablename__ = "console_port_leases"
    __table_args__ = (
        UniqueConstraint("host", "port"),
        Index(None, "host", "expires_at_us"),  # per-host purge
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    instance_uuid: Mapped[str] = mapped_column(ascii_string(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    lease_id: Mapped[str] = mapped_column(ascii_string(64))
    token_hash: Mapped[str] = mapped_column(ascii_string(64))
    proxy_id: Mapped[str | None] = mapped_column(String(255))
    since_us: Mapped[int] = mapped_column(BigInteger)
    expires_at_us: Mapped[int] = mapped_column(BigInteger, index=True)  # global purge


class PortReservationRow(Base):
    """A host port reserved for a serial device; the primary key is the
    reservation, so two processes can never both reserve it."""

    __tablename__ = "console_port_reservations"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    reserved_at_us: Mapped[int] = mapped_column(BigInteger)


class RevocationRow(Base):
    """When an instance's consoles were last revoked: its tokens are gone,
    and this tells a proxy to end the sessions they opened."""

    __tablename__ = "console_revocations"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    instance_uuid: Mapped[str] = mapped_column(ascii_string(36), primary_key=True)
    revoked_at_us: Mapped[int] = mapped_column(BigInteger, index=True)  # purge


REVOCATIONS: Final[Table] = Base.metadata.tables[RevocationRow.__tablename__]
PORT_LEASES: Final[Table] = Base.metadata.tables[PortLeaseRow.__tablename__]
PORT_RESERVATIONS: Final[Table] = Base.metadata.tables[PortReservationRow.__tablename__]
