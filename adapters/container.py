"""The object graph, declared once: which adapter fills which port.

Replaces bootstrap code. Providers are lazy, and an engine connects on its
first statement, so nothing connects until a service is first used: the
``memory`` backend never opens an engine, nor does ``memcached`` unless the
database is its ``fallback``. The engines a service uses check the schema on
their first connection (``guard_schema``); ``engine`` and ``cell_engines``
themselves do not, for ``console-auth db``. The memcached adapter
is imported only when chosen, so deployments without the ``memcached`` extra
(pymemcache) run the others.
Tests swap one provider with ``container.repository.override(...)`` used as a
context manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from dependency_injector import containers, providers
from sqlalchemy import Engine

from console_auth.adapters.cells import FileCellLocator
from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.adapters.settings import (
    Settings,
    default_database_path,
    default_database_url,
    load_settings,
)
from console_auth.adapters.sql import (
    SqlConsoleConnectionRepository,
    SqlPortLeaseRepository,
    SqlPortReservationRepository,
    guard_schema,
    open_engine,
)
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource, SystemClock
from console_auth.application import (
    CellLocator,
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsolePortService,
    FallbackConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.application.cell_ports import (
    CellRoutedPortLeaseRepository,
    CellRoutedPortReservationRepository,
)
from console_auth.domain import BackendUnavailable, InvalidRequest

if TYPE_CHECKING:
    from console_auth.adapters.memcached import (
        MemcachedClient,
        MemcachedConsoleConnectionRepository,
    )


logger = logging.getLogger(__name__)

SERIAL_NEEDS_DATABASE: Final = (
    'serial consoles need the database backend (console_tokens_backend = "database"): '
    "memcached may evict a port lease"
)


def _open(url: str) -> Engine:
    """``open_engine``, creating the default SQLite file's directory (0700:
    it holds the token store), and with every bad URL option typed."""
    if url == default_database_url():
        default_database_path().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        engine = open_engine(url)
    except (ValueError, TypeError):  # a driver argument create_engine cannot convert
        raise InvalidRequest("database URL has an invalid option in its query") from None
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        logger.info("token store: SQLite file %s", Path(engine.url.database).absolute())
    return engine


def _engine(url: str) -> Iterator[Engine]:
    """One pooled engine per container, disposed by ``shutdown_resources()``."""
    engine = _open(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _cell_engines(cells: Mapping[str, Mapping[str, Any]]) -> Iterator[dict[str, Engine]]:
    """One pooled engine per cell, opened together and disposed together by
    ``shutdown_resources()``; a cell that fails to open disposes the rest."""
    with ExitStack() as stack:
        engines: dict[str, Engine] = {}
        for name, cell in cells.items():
            try:
                engine = _open(cell["database"]["url"])
            except (BackendUnavailable, InvalidRequest) as exc:  # say which cell
                raise type(exc)(f"cell {name}: {exc}") from (exc.__cause__ or exc)
            stack.callback(engine.dispose)
            engines[name] = engine
        yield engines


def _guarded(engine: Engine, auto_migrate: bool | None) -> Iterator[Engine]:
    """``engine``, checking (or creating) its schema when it first connects;
    a resource so that ``shutdown_resources()`` forgets it with the engine."""
    guard_schema(engine, auto_migrate=auto_migrate)
    yield engine


def _guarded_cells(
    engines: Mapping[str, Engine], cells: Mapping[str, Mapping[str, Any]]
) -> Iterator[dict[str, Engine]]:
    for name, engine in engines.items():
        guard_schema(engine, auto_migrate=cells[name]["database"]["auto_migrate"])
    yield dict(engines)


def _cell_repository(
    engines: Mapping[str, Engine], locator: CellLocator, search_timeout: float
) -> Iterator[CellRoutedConsoleConnectionRepository]:
    """Tokens routed over the cells' databases; its search threads stop on
    ``shutdown_resources()``."""
    repository = CellRoutedConsoleConnectionRepository(
        {name: SqlConsoleConnectionRepository(engine) for name, engine in engines.items()},
        locator,
        search_timeout=search_timeout,
    )
    try:
        yield repository
    finally:
        repository.close()


def _cell_port_leases(
    engines: Mapping[str, Engine], locator: CellLocator
) -> CellRoutedPortLeaseRepository:
    """Serial-port leases routed over the cells' databases, by compute host."""
    return CellRoutedPortLeaseRepository(
        {name: SqlPortLeaseRepository(engine) for name, engine in engines.items()}, locator
    )


def _cell_port_reservations(
    engines: Mapping[str, Engine], locator: CellLocator
) -> CellRoutedPortReservationRepository:
    return CellRoutedPortReservationRepository(
        {name: SqlPortReservationRepository(engine) for name, engine in engines.items()}, locator
    )


def _database_layout(cells: Mapping[str, Any]) -> str:
    """``cells`` when the settings split the database backend, else ``single``."""
    return "cells" if cells else "single"


def _memcached_client(
    servers: list[str],
    connect_timeout: float,
    timeout: float,
    max_idle: int,
    retry_attempts: int,
    retry_timeout: float,
    dead_timeout: float,
) -> Iterator[MemcachedClient]:
    """One client (a connection pool per server) per container, closed by
    ``shutdown_resources()``; it connects on its first command."""
    try:
        from console_auth.adapters.memcached import MemcachedClient
    except ImportError as exc:
        raise InvalidRequest(
            "the memcached backend needs pymemcache: install console-auth[memcached]"
        ) from exc
    client = MemcachedClient(
        servers,
        connect_timeout=connect_timeout,
        timeout=timeout,
        max_idle=max_idle,
        retry_attempts=retry_attempts,
        retry_timeout=retry_timeout,
        dead_timeout=dead_timeout,
    )
    try:
        yield client
    finally:
        client.close()


def _memcached_repository(
    client: MemcachedClient, key_prefix: str, expired_retention: int
) -> MemcachedConsoleConnectionRepository:
    from console_auth.adapters.memcached import MemcachedConsoleConnectionRepository

    return MemcachedConsoleConnectionRepository(
        client, key_prefix=key_prefix, expired_retention=expired_retention
    )


def _policy(
    token_ttl: int,
    require_instance_uuid: bool,
    require_token_mac: bool,
    purge_batch_size: int,
    purge_grace: int,
    serial_lease_ttl: int,
) -> ServicePolicy:
    return ServicePolicy(
        default_ttl=timedelta(seconds=token_ttl),
        require_instance_uuid=require_instance_uuid,
        require_token_mac=require_token_mac,
        purge_batch_size=purge_batch_size,
        purge_grace=timedelta(seconds=purge_grace),
        lease_ttl=timedelta(seconds=serial_lease_ttl),
    )


def _no_serial_ports() -> NoReturn:
    """memcached keeps no port leases: an evicted lease would let a second
    client onto a port (Nova bug 1425640)."""
    raise InvalidRequest(SERIAL_NEEDS_DATABASE)


class Container(containers.DeclarativeContainer):
    """Feed ``config`` with ``config.from_pydantic(settings)`` (``build_container`` does)."""

    config = providers.Configuration(strict=True)

    clock = providers.Singleton(SystemClock)
    tokens = providers.Singleton(SecretsTokenSource)
    lease_ids = providers.Singleton(SecretsLeaseIdSource)
    engine = providers.Resource(_engine, url=config.database.url)
    # What the services use: the same engine, its schema checked on first use.
    store_engine = providers.Resource(
        _guarded, engine=engine, auto_migrate=config.database.auto_migrate
    )
    memcached_client = providers.Resource(
        _memcached_client,
        servers=config.memcached.servers,
        connect_timeout=config.memcached.connect_timeout,
        timeout=config.memcached.timeout,
        max_idle=config.memcached.max_idle,
        retry_attempts=config.memcached.retry_attempts,
        retry_timeout=config.memcached.retry_timeout,
        dead_timeout=config.memcached.dead_timeout,
    )
    # With ``cells`` configured, the database backend is one database per cell.
    cell_engines = providers.Resource(_cell_engines, cells=config.cells)
    cell_store_engines = providers.Resource(
        _guarded_cells, engines=cell_engines, cells=config.cells
    )
    cell_locator = providers.Singleton(
        FileCellLocator, path=config.cell_map_file, cells=config.cells.as_(list)
    )
    cell_repository = providers.Resource(
        _cell_repository,
        engines=cell_store_engines,
        locator=cell_locator,
        search_timeout=config.cell_search_timeout,
    )
    database_repository = providers.Selector(
        providers.Callable(_database_layout, cells=config.cells),
        single=providers.Singleton(SqlConsoleConnectionRepository, engine=store_engine),
        cells=cell_repository,
    )
    memcached_repository = providers.Singleton(
        _memcached_repository,
        client=memcached_client,
        key_prefix=config.memcached.key_prefix,
        expired_retention=config.memcached.expired_retention,
    )
    primary_repository = providers.Selector(
        config.console_tokens_backend,
        database=database_repository,
        memcached=memcached_repository,
        memory=providers.Singleton(InMemoryConsoleConnectionRepository),
    )
    # ``fallback`` other than "none" only while switching backends.
    repository = providers.Selector(
        config.fallback,
        none=primary_repository,
        database=providers.Singleton(
            FallbackConsoleConnectionRepository,
            primary=primary_repository,
            secondary=database_repository,
        ),
        memcached=providers.Singleton(
            FallbackConsoleConnectionRepository,
            primary=primary_repository,
            secondary=memcached_repository,
        ),
    )
    policy = providers.Singleton(
        _policy,
        token_ttl=config.token_ttl,
        require_instance_uuid=config.require_instance_uuid,
        require_token_mac=config.require_token_mac,
        purge_batch_size=config.purge_batch_size,
        purge_grace=config.purge_grace,
        serial_lease_ttl=config.serial_lease_ttl,
    )
    # A factory, so an override of any collaborator shows in the next service.
    service = providers.Factory(
        ConsoleAuthService, repository=repository, clock=clock, tokens=tokens, policy=policy
    )
    # Serial-port leases live in the primary backend, beside its tokens: with
    # cells, in the compute host's cell, never in the unused ``database.url``.
    # A memcached primary refuses them, when ``ports`` is asked for.
    database_port_leases = providers.Selector(
        providers.Callable(_database_layout, cells=config.cells),
        single=providers.Singleton(SqlPortLeaseRepository, engine=store_engine),
        cells=providers.Singleton(
            _cell_port_leases, engines=cell_store_engines, locator=cell_locator
        ),
    )
    database_port_reservations = providers.Selector(
        providers.Callable(_database_layout, cells=config.cells),
        single=providers.Singleton(SqlPortReservationRepository, engine=store_engine),
        cells=providers.Singleton(
            _cell_port_reservations, engines=cell_store_engines, locator=cell_locator
        ),
    )
    port_leases = providers.Selector(
        config.console_tokens_backend,
        database=database_port_leases,
        memcached=providers.Callable(_no_serial_ports),
        memory=providers.Singleton(InMemoryPortLeaseRepository),
    )
    port_reservations = providers.Selector(
        config.console_tokens_backend,
        database=database_port_reservations,
        memcached=providers.Callable(_no_serial_ports),
        memory=providers.Singleton(InMemoryPortReservationRepository),
    )
    ports = providers.Factory(
        ConsolePortService,
        consoles=service,
        leases=port_leases,
        reservations=port_reservations,
        lease_ids=lease_ids,
    )


def build_container(settings: Settings | None = None) -> Container:
    """A container for ``settings`` (default: ``load_settings()``).

    Call ``container.shutdown_resources()`` when done: it disposes the
    database engine and closes the memcached client, if they were opened.
    """
    container = Container()
    container.config.from_pydantic(load_settings() if settings is None else settings)
    return container


def create_service(settings: Settings | None = None) -> ConsoleAuthService:
    """The one call a host service makes to get a ready ``ConsoleAuthService``.

    Its engine lives as long as the process; a caller that must release it
    earlier (tests, a CLI) uses ``build_container`` and
    ``container.shutdown_resources()`` instead.
    """
    return build_container(settings).service()
