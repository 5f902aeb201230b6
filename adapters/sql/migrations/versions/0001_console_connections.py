"""console_connections: one row per issued token, keyed by the token's hash

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00

Uses ``op`` and ``sa`` only, never ``console_auth.adapters.sql.tables``: a
revision describes the schema of its day, not of today's code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "console_connections"


def _ascii(length: int) -> sa.types.TypeEngine[str]:
    """Hex and uuid text: ASCII, compared byte for byte on MariaDB/MySQL."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("token_hash", _ascii(64), nullable=False),
        sa.Column("instance_uuid", _ascii(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("console_type", sa.String(32), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("access_url_base", sa.String(1024), nullable=True),
        sa.Column("expires_at_us", sa.BigInteger(), nullable=False),
        sa.Column("issued_at_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_connections")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_console_connections_token_hash")),
        # MariaDB/MySQL: exact (binary) text comparison, as on every other store
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(op.f("ix_console_connections_instance_uuid"), TABLE, ["instance_uuid"])
    op.create_index(op.f("ix_console_connections_expires_at_us"), TABLE, ["expires_at_us"])
    op.create_index(
        op.f("ix_console_connections_host_expires_at_us"), TABLE, ["host", "expires_at_us"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_console_connections_host_expires_at_us"), table_name=TABLE)
    op.drop_index(op.f("ix_console_connections_expires_at_us"), table_name=TABLE)
    op.drop_index(op.f("ix_console_connections_instance_uuid"), table_name=TABLE)
    op.drop_table(TABLE)
