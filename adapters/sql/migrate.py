"""Alembic driven from code: no ``alembic.ini``, no logging set-up.

The scripts are a package resource, so an installed wheel upgrades its own schema.
Alembic is imported only to migrate; reading the revision is plain SQL.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import Connection, Engine, String, column, event, inspect, select, table
from sqlalchemy.pool import StaticPool

from console_auth.domain import BackendUnavailable, InvalidRequest, UnsupportedVersion

from .engine import open_engine
from .statements import mapped_errors, transaction

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

SCRIPT_LOCATION: Final = "console_auth.adapters.sql:migrations"
VERSION_TABLE: Final = "console_auth_alembic_version"
HEAD: Final = "0004"
"""The newest revision; a test pins it to the scripts' head."""

_ALEMBIC: Final = threading.Lock()
"""Alembic runs ``env.py`` through a process-global ``alembic.context``, so
two threads must never migrate at once."""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; a no-op when it is there already."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` (``"base"``: drop everything)."""
    _migrate(engine, "downgrade", revision)


def guard_schema(engine: Engine, *, auto_migrate: bool | None) -> None:
    """Check the schema when ``engine`` first connects, so building a service opens nothing.

    ``auto_migrate``: ``True`` upgrades, ``None`` creates a fresh SQLite database's schema.
    """
    if isinstance(engine.pool, StaticPool):  # in-memory SQLite: one connection, always fresh
        if auto_migrate is not False:
            upgrade(engine)
        return
    url = engine.url.render_as_string(hide_password=False)

    def check(_dbapi_connection: Any, _record: Any) -> None:
        # On an engine of its own: this pool's first connection is half made.
        checker = open_engine(url)
        try:
            _ensure_schema(checker, auto_migrate)
        finally:
            checker.dispose()

    # SQLAlchemy runs first_connect once, again after a failure, under a lock.
    event.listen(engine, "first_connect", check)


def _ensure_schema(engine: Engine, auto_migrate: bool | None) -> None:
    with mapped_errors(engine), engine.connect() as connection:
        revision = _current(connection)
        fresh = revision is None and not inspect(connection).get_table_names()
    if revision == HEAD:
        return
    if auto_migrate or (auto_migrate is None and fresh and engine.dialect.name == "sqlite"):
        upgrade(engine)
    elif revision is not None and revision not in _known_revisions():
        logger.info("the database schema is at revision %s, newer than %s", revision, HEAD)
    else:
        found = f"is at revision {revision}" if revision else "has no console-auth schema"
        raise BackendUnavailable(
            f"the token store {found}, and this release needs revision {HEAD}: "
            "run `console-auth db upgrade`"
        )


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` before the first upgrade."""
    with mapped_errors(engine), engine.connect() as connection:
        return _current(connection)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(script_config())
    return {script.revision for script in scripts.walk_revisions()}


def upgrade_script(url: str, revision: str = "head") -> str:
    """The DDL of an upgrade as text, for operators; needs ``url``'s dialect, no connection."""
    from alembic import command

    buffer = io.StringIO()
    config = script_config(output_buffer=buffer)
    config.set_main_option("sqlalchemy.url", url)
    with _ALEMBIC:
        command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def script_config(output_buffer: io.StringIO | None = None) -> Config:
    """An Alembic ``Config`` for console-auth's scripts, built in code."""
    from alembic.config import Config

    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


MIGRATION_LOCK_WAIT_MS: Final = 60_000
"""How long a process auto-migrating at start-up waits for another one that
is migrating the same SQLite file (on a loaded host that can take seconds)."""


def _migrate(engine: Engine, direction: Literal["upgrade", "downgrade"], revision: str) -> None:
    """One transaction around the whole run, handed to ``env.py``; on SQLite
    ``BEGIN IMMEDIATE``, else its driver autocommits each DDL statement."""
    from alembic import command
    from alembic.util import CommandError

    if not revision.strip():  # Alembic would fail an assertion
        raise InvalidRequest("a target revision is required, such as head or base")
    with _ALEMBIC, mapped_errors(engine), transaction(engine) as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a whole migration may hold the lock longer than one write
            usual_wait = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            connection.exec_driver_sql(f"PRAGMA busy_timeout={MIGRATION_LOCK_WAIT_MS}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            config = script_config()
            config.attributes["connection"] = connection
            current = _current(connection)
            if current is not None and current not in _known_revisions():
                # a schema written by a newer release: refuse to guess how to move it
                raise UnsupportedVersion(
                    f"the database schema is at revision {current}, newer than this release "
                    f"of console-auth knows (its head is {HEAD})"
                )
            try:
                getattr(command, direction)(config, revision)
            except CommandError as exc:  # e.g. an unknown target revision
                raise InvalidRequest(f"cannot migrate the console-auth schema: {exc}") from exc
        finally:
            if sqlite:  # the pooled connection goes back with the usual wait
                connection.exec_driver_sql(f"PRAGMA busy_timeout={int(usual_wait or 0)}")


def _current(connection: Connection) -> str | None:
    """What Alembic's ``MigrationContext.get_current_revision`` reads, in plain SQL."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    query = select(column("version_num", String)).select_from(table(VERSION_TABLE))
    revisions = list(connection.execute(query).scalars())
    if len(revisions) > 1:
        raise InvalidRequest(f"the database schema has several heads: {', '.join(revisions)}")
    return revisions[0] if revisions else None
