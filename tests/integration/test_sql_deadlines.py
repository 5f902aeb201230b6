"""Every wait on a real PostgreSQL or MariaDB server is bounded, and no
driver exception leaves the adapter.

A table lock held by another session, a server that freezes (a TCP proxy
that stops forwarding while its sockets stay open, as a SIGSTOPped server's
kernel keeps acknowledging), and a session killed in the middle of a
transaction: each is a ``BackendUnavailable`` within ``io_timeout`` plus
a little, and the next call after the fault succeeds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Final

import pytest
from sqlalchemy import Engine, create_engine, delete, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from console_auth.adapters.sql import (
    SqlConsoleConnectionRepository,
    SqlPortLeaseRepository,
    SqlPortReservationRepository,
    Statements,
    open_engine,
)
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS, PORT_LEASES, PORT_RESERVATIONS
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService
from console_auth.domain import BackendUnavailable, LeaseKind, PortLease, hash_token
from tests.backends.sql_servers import SERVER_NAMES, database
from tests.builders import a_connection
from tests.fakes import T0
from tests.integration.tcp_proxy import TcpProxy

IO_TIMEOUT: Final = 1.0
BOUND_S: Final = 4.0
"""``IO_TIMEOUT``, the client's grace, a watchdog tick and a reconnect, with room."""
LOCK_HELD_S: Final = 15.0
"""A lock or a freeze outlives the bound by far, and then ends: an unbounded
call fails its assertion instead of hanging the run."""


@pytest.fixture(scope="module", params=SERVER_NAMES)
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    with database(request.param) as db_url:
        open_engine(db_url, auto_migrate=True).dispose()
        yield db_url


@pytest.fixture
def observer(url: str) -> Iterator[Engine]:
    """An unbounded engine outside the code under test, to stage faults."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        for table in (CONSOLE_CONNECTIONS, PORT_LEASES, PORT_RESERVATIONS):
            conn.execute(delete(table))
    yield engine
    engine.dispose()


@pytest.fixture
def engine(url: str, observer: Engine) -> Iterator[Engine]:
    engine = open_engine(url, io_timeout=IO_TIMEOUT)
    yield engine
    engine.dispose()


def _service(engine: Engine) -> ConsoleAuthService:
    repository = SqlConsoleConnectionRepository(Statements(engine))
    return ConsoleAuthService(repository, SystemClock(), SecretsTokenSource())


def _postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _bounded(call: Callable[[], object]) -> BackendUnavailable:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        call()
    assert time.monotonic() - started < BOUND_S
    return caught.value


# --- a lock held by another session ------------------------------------------------------------


@contextmanager
def _table_locked(observer: Engine) -> Iterator[None]:
    """``console_connections`` locked against readers and writers by another
    session, released on leaving or after ``LOCK_HELD_S``."""
    locker = observer.raw_connection()
    cursor = locker.cursor()
    if _postgresql(observer):
        cursor.execute("BEGIN")
        cursor.execute("LOCK TABLE console_connections IN ACCESS EXCLUSIVE MODE")
        release = "ROLLBACK"
    else:
        cursor.execute("LOCK TABLES console_connections WRITE")
        release = "UNLOCK TABLES"
    released = threading.Lock()

    def unlock() -> None:
        with released:
            if locker.dbapi_connection is not None:
                cursor.execute(release)

    timer = threading.Timer(LOCK_HELD_S, unlock)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        unlock()
        locker.close()


def _lock_waiters(observer: Engine) -> int:
    """Sessions of this database that wait for a lock."""
    if _postgresql(observer):
        probe = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    else:
        probe = (
            "SELECT count(*) FROM information_schema.processlist "
            "WHERE db = DATABASE() AND state LIKE 'Waiting for%lock%'"
        )
    with observer.connect() as conn:
        return int(conn.execute(text(probe)).scalar() or 0)


SERVER_BOUNDS: Final = {"55P03", "57014", 1205, 1969}
"""PostgreSQL's lock_timeout and statement_timeout; MariaDB's lock wait
timeouts (InnoDB's and metadata's) and max_statement_time."""


def _server_bound(cause: BaseException | None) -> bool:
    """Whether the server itself ended the wait (rather than the client
    cutting off a connection whose statement may then still run)."""
    orig = getattr(cause, "orig", cause)
    errno = orig.args[0] if orig is not None and orig.args else None  # MariaDB's first
    return (errno if isinstance(errno, int) else getattr(orig, "sqlstate", None)) in SERVER_BOUNDS


def test_a_table_lock_is_backend_unavailable_within_the_bound(
    engine: Engine, observer: Engine
) -> None:
    """Validate (the held connection), authorize, revoke and purge (Core)
    each give up after ``io_timeout``. The server itself ends the wait (it
    reports its own bound), so no statement of ours is left waiting for the
    lock, to run after its caller gave up."""
    service = _service(engine)
    instance = uuid.uuid4()
    issued = service.authorize(instance, "compute-1", 5900, "novnc")
    secret = issued.token.get_secret_value()
    with _table_locked(observer):
        calls: list[Callable[[], object]] = [
            lambda: service.validate(secret, instance),
            lambda: service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc"),
            lambda: service.revoke_instance(instance),
            service.purge_expired,
        ]
        for call in calls:
            refused = _bounded(call)
            assert secret not in str(refused)
            assert _server_bound(refused.__cause__), refused
        deadline = time.monotonic() + 1
        while _lock_waiters(observer) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _lock_waiters(observer) == 0
    assert service.validate(secret, instance) == issued.connection
    assert service.revoke_instance(instance) == 1


# --- a frozen server ----------------------------------------------------------------------------


@pytest.fixture
def proxy(url: str) -> Iterator[TcpProxy]:
    parsed = make_url(url)
    default_port = 5432 if parsed.get_backend_name() == "postgresql" else 3306
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or default_port)) as running:
        yield running


def test_calls_in_flight_on_a_frozen_server_end_within_the_bound(
    url: str, proxy: TcpProxy
) -> None:
    """Three calls on connections that are already open when the server
    freezes: a validate on the held connection, one on a pooled connection
    (the held one is busy), a purge through Core. Each ends within the
    bound; after the thaw the next calls succeed."""
    proxied = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
    engine = open_engine(proxied, io_timeout=IO_TIMEOUT)
    checkouts: list[object] = []
    try:
        service = _service(engine)
        issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
        secret = issued.token.get_secret_value()
        with engine.connect(), engine.connect():
            pass  # two idle pooled connections, open before the freeze
        event.listen(engine, "checkout", lambda *args: checkouts.append(args))
        outcomes: dict[str, tuple[type[BaseException] | None, float]] = {}

        def run(name: str, call: Callable[[], object]) -> None:
            started = time.monotonic()
            try:
                call()
                outcomes[name] = (None, time.monotonic() - started)
            except BaseException as exc:
                outcomes[name] = (type(exc), time.monotonic() - started)

        proxy.freeze()
        threads = [
            threading.Thread(target=run, args=("held", lambda: service.validate(secret))),
            threading.Thread(target=run, args=("pooled", lambda: service.validate(secret))),
            threading.Thread(target=run, args=("core", service.purge_expired)),
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.2)  # the first takes the held connection
        for thread in threads:
            thread.join(timeout=3 * BOUND_S)
        assert not any(thread.is_alive() for thread in threads)
        assert len(checkouts) >= 2  # the pooled validate and the purge
        for name, (raised, elapsed) in outcomes.items():
            assert raised is BackendUnavailable, name
            assert elapsed < BOUND_S, name
        proxy.set_mode("forward")
        assert service.validate(secret) == issued.connection
        assert service.purge_expired() == 0
    finally:
        engine.dispose()


# --- a session killed mid-transaction -----------------------------------------------------------

WRITES: Final = ("INSERT", "UPDATE", "DELETE")


class KillOurSession:
    """Once armed, has another session kill ours at the next ``moment``:
    ``checkout`` (after the pool's liveness check, as if the server died just
    then) or ``write`` (before an INSERT, UPDATE or DELETE, inside its
    transaction)."""

    def __init__(self, engine: Engine, observer: Engine, moment: str) -> None:
        self.armed = False
        self.killed = 0
        self._observer = observer
        if moment == "checkout":
            event.listen(engine, "checkout", self._at_checkout)
        else:
            event.listen(engine, "before_cursor_execute", self._before_execute)

    def _at_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if self.armed:
            self._kill(dbapi_connection)

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.armed and statement.lstrip().split(None, 1)[0].upper() in WRITES:
            self._kill(conn.connection.dbapi_connection)

    def _kill(self, dbapi_connection: Any) -> None:
        self.armed = False
        postgresql = _postgresql(self._observer)
        session = dbapi_connection.info.backend_pid if postgresql else dbapi_connection.thread_id()
        with self._observer.connect() as observer:
            if postgresql:
                observer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": session})
                probe = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                deadline = time.monotonic() + 5
                while observer.execute(probe, {"pid": session}).scalar():
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            else:
                observer.execute(text(f"KILL {int(session)}"))
        self.killed += 1


def a_lease(port: int, *, expires_in: timedelta = timedelta(minutes=5)) -> PortLease:
    return PortLease(
        host="compute-1",
        port=port,
        instance_uuid=uuid.uuid4(),
        kind=LeaseKind.HELD,
        lease_id=uuid.uuid4().hex,
        token_hash=hash_token(f"token-{port}"),
        since=T0,
        expires_at=T0 + expires_in,
    )


@pytest.mark.parametrize("moment", ["checkout", "write"])
def test_a_session_killed_in_a_transaction_raises_only_backend_unavailable(
    engine: Engine, observer: Engine, moment: str
) -> None:
    """Purge and every serial-port write, their session killed as their
    transaction begins or inside it: ``BackendUnavailable``, never a driver
    or SQLAlchemy error (switching the connection's isolation level for the
    transaction, and back at check-in, ran outside SQLAlchemy's error
    handling); no pooled connection is lost; the same call then succeeds."""
    kill = KillOurSession(engine, observer, moment)
    tokens = SqlConsoleConnectionRepository(Statements(engine))
    leases = SqlPortLeaseRepository(Statements(engine))
    reservations = SqlPortReservationRepository(Statements(engine))
    tokens.add(a_connection(expires_at=T0))
    renewed, released, expired = a_lease(10001), a_lease(10002), a_lease(10003)
    for lease in (renewed, released, expired):
        assert leases.claim(lease, T0) is None
    later = T0 + timedelta(hours=1)
    operations: list[tuple[str, Callable[[], object], object]] = [
        ("purge", lambda: tokens.delete_expired(later, None, 10), 1),
        ("claim", lambda: leases.claim(a_lease(10004), T0), None),
        ("renew", lambda: leases.renew(renewed, T0 + timedelta(minutes=9), T0) is not None, True),
        ("release", lambda: leases.release(released), True),
        ("lease purge", lambda: leases.delete_expired(later, None, 10), 3),
        ("reserve", lambda: reservations.reserve("compute-1", 10005), True),
        ("unreserve", lambda: reservations.release("compute-1", 10005), True),
    ]
    for name, operation, result in operations:
        kill.armed = True
        _bounded(operation)
        assert kill.killed, name
        kill.killed = 0
        assert engine.pool.checkedout() == 0, name  # type: ignore[attr-defined]
        assert operation() == result, name
