"""The SQL adapter on real PostgreSQL and MariaDB servers: exact text
comparison, index use, concurrency across threads and processes, deadlock
retry, and faults (restart, stop, hang, a connection lost mid-transaction)
staged by a TCP proxy, so the shared servers themselves are never touched.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final, NamedTuple

import pytest
from sqlalchemy import Engine, create_engine, delete, event, func, select, text
from sqlalchemy.engine import make_url

from console_auth.adapters.sql import SqlConsoleConnectionRepository, Statements, open_engine
from console_auth.adapters.sql.repository import oldest_expired
from console_auth.adapters.sql.statements import is_retryable
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService, ServicePolicy
from console_auth.domain import (
    BackendUnavailable,
    InvalidToken,
    InvalidTokenReason,
    hash_token,
)
from console_auth.domain.types import to_microseconds
from tests.backends.sql_servers import SERVER_NAMES, database
from tests.builders import a_connection
from tests.fakes import T0
from tests.integration.tcp_proxy import TcpProxy

T: Final = CONSOLE_CONNECTIONS
BOUND_S: Final = 10.0
"""A stopped or hung server must be reported within this."""


@pytest.fixture(scope="module", params=SERVER_NAMES)
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated private database on each server, shared by this module."""
    with database(request.param) as db_url:
        engine = open_engine(db_url, auto_migrate=True)
        engine.dispose()
        yield db_url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(T))
    yield engine
    engine.dispose()


@pytest.fixture
def repository(engine: Engine) -> SqlConsoleConnectionRepository:
    return SqlConsoleConnectionRepository(Statements(engine))


@pytest.fixture
def proxy(url: str) -> Iterator[TcpProxy]:
    parsed = make_url(url)
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or _default_port(url))) as running:
        yield running


def _default_port(url: str) -> int:
    return 5432 if make_url(url).get_backend_name() == "postgresql" else 3306


def _through(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


def _service(engine: Engine, batch: int = 1000) -> ConsoleAuthService:
    repository = SqlConsoleConnectionRepository(Statements(engine))
    policy = ServicePolicy(purge_batch_size=batch, purge_grace=timedelta(0))  # purge all expired
    return ConsoleAuthService(repository, SystemClock(), SecretsTokenSource(), policy)


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(T)) or 0)


# --- schema: exact comparison and index use ----------------------------------------------------


def test_text_compares_exactly_as_in_memory(repository: SqlConsoleConnectionRepository) -> None:
    """MariaDB's default collation would find ``Compute-1`` for ``compute-1``."""
    lower = a_connection(host="compute-1", expires_at=T0)
    upper = a_connection(host="Compute-1", expires_at=T0)
    for connection in (lower, upper):
        repository.add(connection)
    assert repository.get_by_hash(lower.token_hash.upper()) is None
    assert repository.delete_expired(T0, "COMPUTE-1", 10) == 0
    assert repository.delete_expired(T0, "Compute-1", 10) == 1
    assert repository.get_by_hash(lower.token_hash) == lower


def test_ids_are_64_bit(repository: SqlConsoleConnectionRepository, engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('console_connections_id_seq', 1099511627776)"))
        else:
            conn.execute(text("ALTER TABLE console_connections AUTO_INCREMENT = 1099511627777"))
    repository.add(a_connection())
    with engine.connect() as conn:
        assert int(conn.scalar(select(T.c.id)) or 0) > 2**40


def test_mariadb_columns_are_binary_collated_innodb(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL's deterministic collations compare exactly already")
    with engine.connect() as conn:
        collations: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT column_name, collation_name FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = 'console_connections' "
                    "AND collation_name IS NOT NULL"
                )
            ).all()
        )
        engine_name = conn.scalar(
            text(
                "SELECT engine FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = 'console_connections'"
            )
        )
    assert engine_name == "InnoDB"
    assert collations == {
        "token_hash": "ascii_bin",
        "instance_uuid": "ascii_bin",
        "host": "utf8mb4_bin",
        "console_type": "utf8mb4_bin",
        "options": "utf8mb4_bin",
        "access_url_base": "utf8mb4_bin",
        "mac": "ascii_bin",
    }


@pytest.mark.parametrize(
    ("host", "index"),
    [
        (None, "ix_console_connections_expires_at_us"),
        ("compute-7", "ix_console_connections_host_expires_at_us"),
    ],
    ids=["global", "per-host"],
)
def test_purge_finds_its_rows_through_an_index(
    engine: Engine, host: str | None, index: str
) -> None:
    """20,000 rows on 50 hosts, 2% expired: the purge's select reads the
    expiry index (or the host's), never the whole table."""
    now_us = to_microseconds(T0)
    if engine.dialect.name == "postgresql":
        numbers, number, host_number = (
            "generate_series(1, 20000) AS n",
            "n::text",
            "(n % 50)::text",
        )
        analyze = "ANALYZE"
    else:
        numbers, number, host_number = "(SELECT seq AS n FROM seq_1_to_20000) AS s", "n", "n % 50"
        analyze = "ANALYZE TABLE"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO console_connections (token_hash, instance_uuid, host, port, "
                "console_type, options, expires_at_us) "
                f"SELECT LPAD({number}, 64, '0'), '{uuid.UUID(int=0)}', "
                f"CONCAT('compute-', {host_number}), 5900, 'novnc', '{{}}', "
                f"CASE WHEN n % 50 = 0 THEN {now_us} - n ELSE {now_us} + n END FROM {numbers}"
            )
        )
        conn.execute(text(f"{analyze} console_connections"))
    query = oldest_expired(T0, host, 1000)  # the very statement of a purge batch
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = "\n".join(str(row) for row in conn.execute(text(f"EXPLAIN {sql}")))
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan


# --- the hot path leaves nothing behind ----------------------------------------------------------


def test_a_thousand_validates_leave_no_transaction_and_no_checked_out_connection(
    engine: Engine, url: str
) -> None:
    service = _service(engine)
    instance = uuid.uuid4()
    token = service.authorize(instance, "compute-1", 5900, "novnc").token.get_secret_value()
    for _ in range(1000):
        service.validate(token, instance)
    with pytest.raises(InvalidToken):
        service.validate("A" * 43)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    observer = open_engine(url)
    try:
        with observer.connect() as conn:
            if engine.dialect.name == "postgresql":
                states = conn.execute(
                    text(
                        "SELECT state FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            else:
                states = conn.execute(
                    text(
                        "SELECT t.trx_state FROM information_schema.innodb_trx t "
                        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                        "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
                    )
                ).scalars()
            found = list(states)
    finally:
        observer.dispose()
    if engine.dialect.name == "postgresql":
        assert found  # the pool's idle connection is there, and idle
        assert set(found) == {"idle"}
    else:
        assert found == []  # no open InnoDB transaction on any of our connections


# --- faults, staged by the proxy -----------------------------------------------------------------


def test_a_restarted_server_costs_no_call(url: str, proxy: TcpProxy) -> None:
    """Every pooled connection dies at once; the next calls notice it at
    checkout (the socket is readable), reconnect, and succeed."""
    engine = open_engine(_through(url, proxy))
    try:
        service = _service(engine)
        instance = uuid.uuid4()
        issued = [service.authorize(instance, "compute-1", 5900, "novnc") for _ in range(3)]
        with ThreadPoolExecutor(4) as pool:  # more than one pooled connection
            list(pool.map(lambda i: service.validate(i.token.get_secret_value()), issued * 4))
        proxy.drop_all()
        time.sleep(0.05)  # the FIN arrives
        for console in issued:
            assert service.validate(console.token.get_secret_value()) == console.connection
        proxy.drop_all()
        assert service.purge_expired() == 0  # the Core path too
        proxy.drop_all()
        assert service.revoke_instance(instance) == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["refuse", "blackhole"])
def test_a_stopped_server_is_backend_unavailable_in_bounded_time(
    url: str, proxy: TcpProxy, how: Any
) -> None:
    engine = open_engine(_through(url, proxy))
    try:
        service = _service(engine)
        token = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
        secret = token.token.get_secret_value()
        proxy.set_mode(how)
        proxy.drop_all()
        calls: list[Callable[[], object]] = [
            lambda: service.validate(secret),
            lambda: service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc"),
            service.purge_expired,
        ]
        # a blackhole costs the whole connect timeout per call: the hot path's one is enough
        for call in calls if how == "refuse" else calls[:1]:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as caught:
                call()
            assert time.monotonic() - started < BOUND_S
            assert caught.value.__cause__ is not None
            assert secret not in str(caught.value)
        proxy.set_mode("forward")
        assert service.validate(secret) == token.connection  # and back, without a restart
    finally:
        engine.dispose()


def test_a_hung_server_is_backend_unavailable_in_bounded_time(url: str, proxy: TcpProxy) -> None:
    """The connection stays open but nothing comes back: PyMySQL's read
    timeout ends the wait; on PostgreSQL, whose libpq has none, the
    engine's watchdog cuts the connection off (see ``engine``)."""
    engine = open_engine(_through(url, proxy), io_timeout=2)
    try:
        service = _service(engine)
        issued = service.authorize(uuid.uuid4(), "compute-1", 5900, "novnc")
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            service.validate(issued.token.get_secret_value())
        assert time.monotonic() - started < BOUND_S
        proxy.set_mode("forward")
        proxy.drop_all()
        assert service.validate(issued.token.get_secret_value()) == issued.connection
    finally:
        engine.dispose()


def test_an_exhausted_pool_is_backend_unavailable_after_pool_timeout(url: str) -> None:
    engine = open_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        repository = SqlConsoleConnectionRepository(Statements(engine))
        held = engine.raw_connection()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="TimeoutError"):
                repository.get_by_hash("0" * 64)
            assert time.monotonic() - started < 2
        finally:
            held.close()
        assert repository.get_by_hash("0" * 64) is None
    finally:
        engine.dispose()


def test_a_purge_batch_cut_off_mid_transaction_deletes_nothing(
    url: str, proxy: TcpProxy, engine: Engine
) -> None:
    """1,200 expired rows, one batch, three ``DELETE ... IN`` chunks: the
    connection dies before the second chunk, so the first must not stay."""
    with engine.begin() as conn:
        conn.execute(
            T.insert(),
            [
                {
                    "token_hash": hash_token(f"t{n}"),
                    "instance_uuid": str(uuid.UUID(int=n)),
                    "host": "compute-1",
                    "port": 5900,
                    "console_type": "novnc",
                    "options": "{}",
                    "expires_at_us": to_microseconds(T0) - n,
                }
                for n in range(1, 1201)
            ],
        )
    proxied = open_engine(_through(url, proxy))
    deletes = 0

    def cut_before_second_delete(*args: Any) -> None:
        nonlocal deletes
        if str(args[2]).lstrip().upper().startswith("DELETE"):
            deletes += 1
            if deletes == 2:
                proxy.drop_all()

    event.listen(proxied, "before_cursor_execute", cut_before_second_delete)
    try:
        repository = SqlConsoleConnectionRepository(Statements(proxied))
        with pytest.raises(BackendUnavailable):
            repository.delete_expired(T0, None, 1200)
        assert deletes == 2
        assert _count(engine) == 1200  # all of the batch, or (here) none
        event.remove(proxied, "before_cursor_execute", cut_before_second_delete)
        assert repository.delete_expired(T0, None, 1200) == 1200
    finally:
        proxied.dispose()
    assert _count(engine) == 0


# --- deadlocks are retried -----------------------------------------------------------------------


def test_a_deadlock_victim_purge_is_retried(
    engine: Engine, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A purge and another transaction lock two rows in opposite orders. The
    server rolls the purge back (PostgreSQL: it waited first, so its deadlock
    check runs first; MariaDB: it has written less), and the repository runs
    it again once the other transaction is gone."""
    repository = SqlConsoleConnectionRepository(Statements(engine))
    first, second = (a_connection(expires_at=T0 - timedelta(seconds=1)) for _ in range(2))
    repository.add(first)
    repository.add(second)
    with engine.connect() as conn:
        id_a, id_b = conn.scalars(select(T.c.id).order_by(T.c.id)).all()
    other = create_engine(url)
    caplog.set_level(logging.WARNING, logger="console_auth.adapters.sql.repository")
    result: list[int | BaseException] = []
    try:
        with other.connect() as blocker:
            tx = blocker.begin()
            if engine.dialect.name != "postgresql":  # make it the heavier transaction
                blocker.execute(
                    T.insert(),
                    [
                        {
                            "token_hash": hash_token(f"heavy{n}"),
                            "instance_uuid": str(uuid.uuid4()),
                            "host": "elsewhere",
                            "port": 1,
                            "console_type": "novnc",
                            "options": "{}",
                            "expires_at_us": to_microseconds(T0) + 10**12,
                        }
                        for n in range(50)
                    ],
                )
            blocker.execute(T.update().where(T.c.id == id_b).values(port=T.c.port + 1))

            def purge() -> None:
                try:
                    result.append(repository.delete_expired(T0, None, 10))
                except BaseException as exc:
                    result.append(exc)

            purger = threading.Thread(target=purge)
            purger.start()
            _wait_until_blocked(other, purger)
            blocker.execute(T.update().where(T.c.id == id_a).values(port=T.c.port + 1))
            tx.rollback()
            purger.join(timeout=30)
    finally:
        other.dispose()
    assert result == [2]
    assert any("rolled a write back" in r.getMessage() for r in caplog.records)


def _wait_until_blocked(observer: Engine, purger: threading.Thread) -> None:
    """Until some session of the database waits for a row lock."""
    if observer.dialect.name == "postgresql":
        probe = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
    else:
        probe = "SELECT count(*) FROM information_schema.innodb_lock_waits"
    deadline = time.monotonic() + 10
    with observer.connect() as conn:
        while time.monotonic() < deadline and purger.is_alive():
            if conn.execute(text(probe)).scalar():
                return
            time.sleep(0.02)
    raise AssertionError("the purge never waited for the locked row")


def test_only_rollback_faults_count_as_retryable() -> None:
    import psycopg
    import pymysql

    assert is_retryable(pymysql.err.OperationalError(1213, "Deadlock found"))
    assert not is_retryable(pymysql.err.OperationalError(1205, "Lock wait timeout"))
    assert not is_retryable(pymysql.err.OperationalError(2013, "Lost connection"))
    assert not is_retryable(pymysql.err.IntegrityError(1062, "Duplicate entry"))
    assert is_retryable(psycopg.errors.DeadlockDetected())
    assert is_retryable(psycopg.errors.SerializationFailure())
    assert not is_retryable(psycopg.errors.UniqueViolation())
    assert not is_retryable(psycopg.OperationalError("server closed the connection"))
    assert not is_retryable(None)


# --- concurrency: threads and processes on one database ------------------------------------------

ROUNDS: Final = 40
LONG_TTL: Final = timedelta(minutes=10)
SHORT_TTL: Final = timedelta(microseconds=1)


class Issued(NamedTuple):
    token: str
    instance: str
    revoked: bool


def work(url: str | None, engine: Engine | None, worker: int) -> list[Issued]:
    """One client's share: authorize (long and short lived), validate at
    once, revoke its own instances now and then (and check the revoked
    token is refused at once), purge everybody's expired tokens now and then.

    Module level so that a spawned process can import and run it."""
    own = engine if engine is not None else open_engine(url or "")
    try:
        service = _service(own, batch=7)
        issued: list[Issued] = []
        for n in range(ROUNDS):
            instance = uuid.uuid4()
            long = service.authorize(instance, f"compute-{worker}", 5900, "novnc", ttl=LONG_TTL)
            service.authorize(instance, f"compute-{worker}", 5901, "spice-html5", ttl=SHORT_TTL)
            token = long.token.get_secret_value()
            assert service.validate(token, instance) == long.connection
            revoked = n % 5 == 4
            if revoked:
                # the short-lived one may already be gone: anybody's purge may take it
                assert service.revoke_instance(instance) in (1, 2)
                with pytest.raises(InvalidToken) as refused:
                    service.validate(token, instance)
                assert refused.value.reason is InvalidTokenReason.UNKNOWN
            if n % 7 == 3:
                service.purge_expired()
            if n % 11 == 5:
                service.purge_expired(f"compute-{(worker + 1) % 10}")
            issued.append(Issued(token, str(instance), revoked))
        return issued
    finally:
        if engine is None:
            own.dispose()


def _spawned(args: tuple[str, int]) -> list[Issued]:
    return work(args[0], None, args[1])


@pytest.mark.slow
def test_threads_and_processes_lose_nothing_and_validate_nothing_revoked(
    url: str, engine: Engine
) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as processes, ThreadPoolExecutor(8) as threads:
        remote = processes.map_async(_spawned, [(url, 8), (url, 9)])
        local = list(threads.map(lambda w: work(None, engine, w), range(8)))
        everything = [i for batch in local for i in batch] + [
            i for batch in remote.get(timeout=240) for i in batch
        ]
    assert len(everything) == 10 * ROUNDS
    service = _service(engine)
    for issued in everything:
        if issued.revoked:
            with pytest.raises(InvalidToken):
                service.validate(issued.token)
        else:
            assert service.validate(issued.token, issued.instance).instance_uuid == uuid.UUID(
                issued.instance
            )
    service.purge_expired()
    assert _count(engine) == sum(not i.revoked for i in everything)
