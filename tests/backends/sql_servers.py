"""PostgreSQL and MariaDB: a private database per session on a real server.

The server is found or started once per process:

1. ``CONSOLE_AUTH_TEST_POSTGRESQL_URL`` / ``CONSOLE_AUTH_TEST_MARIADB_URL``,
   a SQLAlchemy URL of a database the tests may connect to and whose user
   may create databases (CI points them at the machine's running servers);
2. otherwise a throwaway server from the binaries on ``PATH``, started in a
   temporary directory on a free loopback port by pytest-postgresql's or
   pytest-mysql's executor, and stopped when the process exits (initdb and
   mysql_install_db refuse to run as root: there, set the URLs);
3. otherwise the tests that need it fail when
   ``CONSOLE_AUTH_TEST_REQUIRE_SERVERS=1`` (CI sets it) and are skipped,
   with the reason, when not. A URL that is set but does not answer always
   fails: it was asked for.

Each user of a server gets its own database, ``console_auth_test_<random>``,
dropped at the end, so parallel runs and other users of the server never
see each other's rows.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import pytest
from sqlalchemy import Engine, create_engine, delete, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS, REVOCATIONS
from console_auth.application import ConsoleConnectionRepository
from console_auth.application.ports import PortLeaseRepository, PortReservationRepository
from tests.backends.sql_ports import fresh_sql_ports

SERVER_NAMES: Final = ("postgresql", "mariadb")
URL_ENV: Final = {
    "postgresql": "CONSOLE_AUTH_TEST_POSTGRESQL_URL",
    "mariadb": "CONSOLE_AUTH_TEST_MARIADB_URL",
}
REQUIRE_ENV: Final = "CONSOLE_AUTH_TEST_REQUIRE_SERVERS"
DATABASE_PREFIX: Final = "console_auth_test_"
START_TIMEOUT_S: Final = 60


@dataclass(frozen=True)
class Server:
    """A reachable server: ``url`` names a database that already exists."""

    name: str
    url: URL
    origin: str
    """Where it came from, for messages: the variable or ``started``."""


_servers: dict[str, Server | str] = {}
"""Per process: the server, or why there is none (so a failed start is not retried)."""
_lock = threading.Lock()


def server(name: str) -> Server:
    """The server for ``name``, found or started; fails or skips if none."""
    with _lock:
        found = _servers.get(name)
        if found is None:
            try:
                found = _find(name)
            except _Unavailable as exc:
                found = str(exc)
            _servers[name] = found
    if isinstance(found, str):
        _unavailable(name, found)
    return found


@contextmanager
def database(name: str) -> Iterator[str]:
    """A new empty database on the ``name`` server, dropped afterwards; yields its URL."""
    found = server(name)
    db_name = f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
    admin = _admin_engine(found.url)
    try:
        with admin.connect() as conn:
            if name == "postgresql":
                conn.execute(text(f'CREATE DATABASE "{db_name}"'))
            else:  # the server's case-insensitive default: the table must override it
                conn.execute(
                    text(
                        f"CREATE DATABASE `{db_name}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                    )
                )
        try:
            yield found.url.set(database=db_name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                if name == "postgresql":
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                else:
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{db_name}`"))
    finally:
        admin.dispose()


class SqlServerBackend:
    """One migrated private database per session; ``fresh()`` deletes the
    rows, which on a table of a few rows costs one short round trip, far
    less than a new database or migration per test or hypothesis example."""

    def __init__(self, name: str) -> None:
        self.name = name
        with ExitStack() as stack:
            self.url = stack.enter_context(database(name))
            self.engine: Engine = open_engine(self.url, auto_migrate=True)
            stack.callback(self.engine.dispose)
            self.statements = Statements(self.engine)  # one per engine, as the container keeps
            self._resources = stack.pop_all()  # kept until close()

    @contextmanager
    def fresh(self) -> Iterator[ConsoleConnectionRepository]:
        with self.engine.begin() as conn:
            conn.execute(delete(CONSOLE_CONNECTIONS))
            conn.execute(delete(REVOCATIONS))
        yield SqlConsoleConnectionRepository(self.statements)

    def fresh_ports(
        self,
    ) -> AbstractContextManager[tuple[PortLeaseRepository, PortReservationRepository]]:
        return fresh_sql_ports(self.statements)

    def close(self) -> None:
        self._resources.close()  # dispose the engine, then drop the database


def open_backend(name: str, workdir: str) -> SqlServerBackend:
    return SqlServerBackend(name)


# --- finding or starting a server --------------------------------------------------------------


class _Unavailable(Exception):
    """No server: the message says what was tried."""


def _unavailable(name: str, reason: str) -> NoReturn:
    message = f"no {name} server for the tests: {reason}"
    if os.environ.get(URL_ENV[name]) or os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(f"{message} (set {URL_ENV[name]}, or {REQUIRE_ENV}=1 to fail instead)")


def _find(name: str) -> Server:
    variable = URL_ENV[name]
    configured = os.environ.get(variable)
    if configured:
        try:
            url = make_url(configured)
        except Exception:
            raise _Unavailable(f"{variable} is not a SQLAlchemy URL") from None
        _check(url, variable)
        return Server(name, url, variable)
    try:
        url = _start(name)
    except _Unavailable as exc:
        raise _Unavailable(f"{variable} is not set, and {exc}") from None
    _check(url, "the started server")
    return Server(name, url, "started")


def _check(url: URL, origin: str) -> None:
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise _Unavailable(f"{origin} does not answer ({type(exc).__name__})") from None
    finally:
        engine.dispose()


def _admin_engine(url: URL) -> Engine:
    args = {"connect_timeout": 5}
    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args=args)


def _start(name: str) -> URL:
    starter = _start_postgresql if name == "postgresql" else _start_mariadb
    workdir = Path(tempfile.mkdtemp(prefix=f"console-auth-{name}-server-"))
    try:
        url, stop = starter(workdir)
    except _Unavailable:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise _Unavailable(f"starting a throwaway server failed: {exc}") from None

    def stop_and_clean() -> None:
        try:
            stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop_and_clean)
    return url


def _which(*names: str, patterns: tuple[str, ...] = ()) -> str:
    for candidate in names:
        found = shutil.which(candidate)
        if found:
            return found
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise _Unavailable(f"none of {', '.join(names)} is on PATH")


def _free_port() -> int:
    from port_for import select_random

    return int(select_random())


def _start_postgresql(workdir: Path) -> tuple[URL, Callable[[], None]]:
    from pytest_postgresql.executors import PostgreSQLExecutor

    pg_ctl = _which("pg_ctl", patterns=("/usr/lib/postgresql/*/bin/pg_ctl",))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        raise _Unavailable("initdb refuses to run as root")
    port = _free_port()
    executor = PostgreSQLExecutor(
        executable=pg_ctl,
        host="127.0.0.1",
        port=port,
        datadir=str(workdir / "data"),
        unixsocketdir=str(workdir),
        logfile=str(workdir / "postgresql.log"),
        startparams="-w",
        dbname="postgres",
        user="postgres",
        timeout=START_TIMEOUT_S,
    )
    executor.start()
    executor.wait_for_postgres()
    url = URL.create("postgresql+psycopg", "postgres", None, "127.0.0.1", port, "postgres")

    def stop() -> None:
        executor.stop()

    return url, stop


def _start_mariadb(workdir: Path) -> tuple[URL, Callable[[], None]]:
    from pytest_mysql.executor import MySQLExecutor

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        raise _Unavailable("mysql_install_db refuses to run as root")
    mysqld = _which("mariadbd", "mysqld", patterns=("/usr/sbin/mariadbd", "/usr/sbin/mysqld"))
    user = pwd.getpwuid(os.geteuid()).pw_name  # the install runs as, and grants, this user
    port = _free_port()
    executor = MySQLExecutor(
        mysqld_safe=Path(_which("mariadbd-safe", "mysqld_safe")),
        mysqld=Path(mysqld),
        admin_exec=_which("mariadb-admin", "mysqladmin"),
        logfile_path=str(workdir / "mariadb.log"),
        params="",
        base_directory=workdir,
        user=user,
        host="127.0.0.1",
        port=port,
        timeout=START_TIMEOUT_S,
        install_db=_which("mariadb-install-db", "mysql_install_db"),
    )
    executor.start()
    # The install grants this OS user over the unix socket only; the tests
    # (and their TCP proxy) connect over TCP, so give them an account there.
    grant = (
        "CREATE USER IF NOT EXISTS 'console_auth'@'127.0.0.1'; "
        "GRANT ALL ON *.* TO 'console_auth'@'127.0.0.1' WITH GRANT OPTION"
    )
    client = _which("mariadb", "mysql")
    subprocess.run(
        [client, f"--socket={executor.unixsocket}", f"--user={user}", "-e", grant],
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_S,
    )
    url = URL.create("mysql+pymysql", "console_auth", None, "127.0.0.1", port, "mysql")

    def stop() -> None:
        executor.stop()

    return url, stop
