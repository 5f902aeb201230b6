"""console_connections.mac: tamper evidence, an HMAC keyed by the clean token

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:00:00

Nullable: rows written before this revision have none, and are accepted
until they expire. Uses ``op`` and ``sa`` only, never
``console_auth.adapters.sql.tables``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "console_connections"


def upgrade() -> None:
    mac = sa.String(64).with_variant(
        mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("mac", mac, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("mac")
