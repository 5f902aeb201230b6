"""console_port_leases and console_port_reservations: serial ports (bug 1425640)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:00:00

Uses ``op`` and ``sa`` only, never ``console_auth.adapters.sql.tables``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASES = "console_port_leases"
RESERVATIONS = "console_port_reservations"


def _ascii(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    op.create_table(
        LEASES,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("instance_uuid", _ascii(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lease_id", _ascii(64), nullable=False),
        sa.Column("token_hash", _ascii(64), nullable=False),
        sa.Column("proxy_id", sa.String(255), nullable=True),
        sa.Column("since_us", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_port_leases")),
        sa.UniqueConstraint("host", "port", name=op.f("uq_console_port_leases_host_port")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(op.f("ix_console_port_leases_instance_uuid"), LEASES, ["instance_uuid"])
    op.create_index(op.f("ix_console_port_leases_expires_at_us"), LEASES, ["expires_at_us"])
    op.create_index(
        op.f("ix_console_port_leases_host_expires_at_us"), LEASES, ["host", "expires_at_us"]
    )
    op.create_table(
        RESERVATIONS,
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("reserved_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("host", "port", name=op.f("pk_console_port_reservations")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table(RESERVATIONS)
    op.drop_index(op.f("ix_console_port_leases_host_expires_at_us"), table_name=LEASES)
    op.drop_index(op.f("ix_console_port_leases_expires_at_us"), table_name=LEASES)
    op.drop_index(op.f("ix_console_port_leases_instance_uuid"), table_name=LEASES)
    op.drop_table(LEASES)
