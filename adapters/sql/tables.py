"""The schema as the code sees it: typed declarative, queried through Core.

The migrations never import this module (a migration must keep describing
the schema of its day); ``tests/integration/test_sql_migrations.py`` checks
that the two agree.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names are chosen here, not by each dialect, so a later
migration can drop them by name on SQLite, PostgreSQL and MariaDB alike."""

ID_TYPE: Final = BigInteger().with_variant(Integer(), "sqlite")
"""SQLite makes only an ``INTEGER`` primary key the rowid (and so
auto-incrementing); elsewhere 64 bits, since ids are never reused soon."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConsoleConnectionRow(Base):
    """One issued token's connection, found by the hash of the token.

    Many tokens may exist per (instance, host, port): consoles are shared
    sessions, as in Nova, so the hash alone is unique. Times are integer
    microseconds since the Unix epoch (UTC): exact and comparable on every
    dialect, unlike DATETIME types that differ in precision and time zone.
    """

    __tablename__ = "console_connections"
    __table_args__ = (Index(None, "host", "expires_at_us"),)  # per-host purge

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    console_type: Mapped[str] = mapped_column(String(32))
    options: Mapped[str] = mapped_column(Text)
    """JSON of ``ConsoleOptions.model_dump(mode="json")``."""
    access_url_base: Mapped[str | None] = mapped_column(String(1024))
    expires_at_us: Mapped[int] = mapped_column(BigInteger, index=True)  # global purge
    issued_at_us: Mapped[int | None] = mapped_column(BigInteger)


CONSOLE_CONNECTIONS: Final[Table] = Base.metadata.tables[ConsoleConnectionRow.__tablename__]
"""The mapped class's ``Table``, typed as such for Core statements."""
