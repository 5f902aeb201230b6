"""Alembic's entry point for console-auth's schema, run by ``adapters.sql.migrate``.

A library never configures logging, so unlike Alembic's template there is no ``fileConfig``.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import Connection

from console_auth.adapters.sql.migrate import VERSION_TABLE
from console_auth.adapters.sql.tables import Base

target_metadata = Base.metadata
"""For autogenerate only; the revisions themselves never import the tables."""


def include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """A shared database holds other applications' tables: compare only ours."""
    return type_ != "table" or name in target_metadata.tables


def offline_options() -> dict[str, Any]:
    """From a URL, to print the DDL (``migrate.upgrade_script``)."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("offline migrations need the sqlalchemy.url option")
    return {
        "url": url,
        "literal_binds": True,
        "dialect_opts": {"paramstyle": "named"},
        "render_as_batch": url.startswith("sqlite"),
    }


def online_options() -> dict[str, Any]:
    """On the live connection, inside the transaction ``migrate`` opened."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "run console-auth migrations through console_auth.adapters.sql.migrate, "
            "which passes a connection"
        )
    return {"connection": connection, "render_as_batch": connection.dialect.name == "sqlite"}


context.configure(
    target_metadata=target_metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    compare_type=True,
    **(offline_options() if context.is_offline_mode() else online_options()),
)
with context.begin_transaction():
    context.run_migrations()
