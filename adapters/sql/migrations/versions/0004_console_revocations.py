"""console_revocations: when each instance's consoles were last revoked

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00

A revoke deletes the instance's tokens, and a purge deletes expired ones:
both leave no row, so this record is what tells a proxy to end a session
its token opened. Uses ``op`` and ``sa`` only, never
``console_auth.adapters.sql.tables``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "console_revocations"


def upgrade() -> None:
    uuid = sa.String(36).with_variant(
        mysql.VARCHAR(36, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )
    op.create_table(
        TABLE,
        sa.Column("instance_uuid", uuid, nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("instance_uuid", name=op.f("pk_console_revocations")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(op.f("ix_console_revocations_revoked_at_us"), TABLE, ["revoked_at_us"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_revocations_revoked_at_us"), table_name=TABLE)
    op.drop_table(TABLE)
