"""Alembic driven from code: no ``alembic.ini``, no logging set-up.

The migrations ship inside the package (``script_location`` is a package
resource), so an installed wheel can upgrade its own schema. The version
table has its own name so that console-auth can share a database with an
application that runs Alembic too.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

from console_auth.domain import InvalidRequest, UnsupportedVersion

from .errors import mapped_errors
from .transactions import transaction

SCRIPT_LOCATION: Final = "console_auth.adapters.sql:migrations"
VERSION_TABLE: Final = "console_auth_alembic_version"
HEAD: Final = "0002"
"""The newest revision; a test pins it to the scripts' head."""

_ALEMBIC: Final = threading.Lock()
"""Alembic runs ``env.py`` through a process-global ``alembic.context``, so
two threads must never migrate at once."""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; a no-op when it is there already."""
    with _migrating(engine) as config:
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` (``"base"``: drop everything)."""
    with _migrating(engine) as config:
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` before the first upgrade."""
    with mapped_errors(), engine.connect() as connection:
        return _current(connection)


def upgrade_script(url: str, revision: str = "head") -> str:
    """The DDL of an upgrade as text, for operators who apply it themselves.

    Needs only the dialect of ``url``, never a connection.
    """
    buffer = io.StringIO()
    config = script_config(output_buffer=buffer)
    config.set_main_option("sqlalchemy.url", url)
    with _ALEMBIC:
        command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def script_config(output_buffer: io.StringIO | None = None) -> Config:
    """An Alembic ``Config`` for console-auth's scripts, built in code."""
    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


MIGRATION_LOCK_WAIT_MS: Final = 60_000
"""How long a process auto-migrating at start-up waits for another one that
is migrating the same SQLite file (on a loaded host that can take seconds)."""


@contextmanager
def _migrating(engine: Engine) -> Iterator[Config]:
    """One transaction around the whole run, handed to ``env.py``.

    On SQLite the driver would autocommit each DDL statement, leaving half a
    schema behind a failure; an explicit ``BEGIN IMMEDIATE`` makes the run
    atomic and takes the write lock first, so processes that auto-migrate at
    the same start-up wait for each other (up to the busy timeout) instead
    of creating the same table twice. PostgreSQL's DDL is transactional too
    (server engines autocommit, so the transaction is asked for explicitly);
    MariaDB/MySQL commit each DDL statement whatever is asked.
    """
    with _ALEMBIC, mapped_errors(), transaction(engine) as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a whole migration may hold the lock longer than one write
            usual_wait = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            connection.exec_driver_sql(f"PRAGMA busy_timeout={MIGRATION_LOCK_WAIT_MS}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            config = script_config()
            config.attributes["connection"] = connection
            _check_known(_current(connection), ScriptDirectory.from_config(config))
            try:
                yield config
            except CommandError as exc:  # e.g. an unknown target revision
                raise InvalidRequest(f"cannot migrate the console-auth schema: {exc}") from exc
        finally:
            if sqlite:  # the pooled connection goes back with the usual wait
                connection.exec_driver_sql(f"PRAGMA busy_timeout={int(usual_wait or 0)}")


def _current(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _check_known(current: str | None, scripts: ScriptDirectory) -> None:
    """A schema written by a newer release: refuse to guess how to move it."""
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise UnsupportedVersion(
            f"the database schema is at revision {current}, newer than this release "
            f"of console-auth knows (its head is {HEAD})"
        )
