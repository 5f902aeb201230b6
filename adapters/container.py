"""The object graph, declared once: which adapter fills which port.

Providers are lazy, so nothing connects until a service is first used, and an adapter
of an extra (memcached, libvirt, metrics, tracing) is imported only when chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from dependency_injector import containers, providers
from sqlalchemy import Engine

from console_auth.adapters.audit import LoggingConsoleEvents
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
    Statements,
    guard_schema,
    open_engine,
)
from console_auth.adapters.static_consoles import StaticConsoleEndpoints
from console_auth.adapters.system import SecretsLeaseIdSource, SecretsTokenSource, SystemClock
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ConsoleConnectionRepository,
    ConsolePortService,
    FallbackConsoleConnectionRepository,
    ServicePolicy,
)
from console_auth.application.cell_ports import (
    CellRoutedPortLeaseRepository,
    CellRoutedPortReservationRepository,
)
from console_auth.application.consoles import InstanceConsoleService
from console_auth.application.events import combined
from console_auth.application.ports import (
    ConsoleEndpoints,
    ConsoleEvents,
    LeaseIdSource,
    PortLeaseRepository,
    PortReservationRepository,
)
from console_auth.domain import BackendUnavailable, ConsoleAuthError, InvalidRequest

logger = logging.getLogger(__name__)

SERIAL_NEEDS_DATABASE: Final = (
    'serial consoles need the database backend (console_tokens_backend = "database"): '
    "memcached may evict a port lease"
)
NO_CONSOLE_DRIVER: Final = (
    'no console driver is configured: set console_driver to "libvirt" or "static"'
)


@contextmanager
def _extra(needs: str, extra: str) -> Iterator[None]:
    """Around the import of an extra's adapter: if it is missing, say what to install."""
    try:
        yield
    except ImportError as exc:
        raise InvalidRequest(f"{needs}: install console-auth[{extra}]") from exc


@dataclass(frozen=True)
class Store:
    """One backend's adapters: its tokens and, where it keeps them, its
    serial-port leases and reservations (``None``: it refuses serial ports)."""

    tokens: ConsoleConnectionRepository
    leases: PortLeaseRepository | None = None
    reservations: PortReservationRepository | None = None
    evictions: Callable[[], Mapping[str, int]] | None = None
    """Items the store's servers evicted, by server (memcached), for metrics."""


def _databases(
    database: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """The database settings by cell (``""``: the one database, without cells)."""
    return {name: cell["database"] for name, cell in cells.items()} if cells else {"": database}


def _database_store(
    database: Mapping[str, Any],
    cells: Mapping[str, Mapping[str, Any]],
    cell_map_file: Path,
    search_timeout: float,
) -> Iterator[Store]:
    """The ``database`` backend: one database, or one per cell routed by the cell map; each
    engine checks its schema on first connection, and it and its statements close at shutdown."""
    with ExitStack() as stack:
        databases: dict[str, Statements] = {}
        for name, settings in _databases(database, cells).items():
            engine = _opened(stack, settings["url"], name)
            guard_schema(engine, auto_migrate=settings["auto_migrate"])
            databases[name] = stack.enter_context(closing(Statements(engine)))
        if not cells:
            db = databases[""]
            yield Store(
                SqlConsoleConnectionRepository(db),
                SqlPortLeaseRepository(db),
                SqlPortReservationRepository(db),
            )
            return
        locator = FileCellLocator(cell_map_file, list(cells))
        tokens = CellRoutedConsoleConnectionRepository(
            {name: SqlConsoleConnectionRepository(db) for name, db in databases.items()},
            locator,
            search_timeout=search_timeout,
        )
        stack.callback(tokens.close)
        yield Store(
            tokens,
            CellRoutedPortLeaseRepository(
                {name: SqlPortLeaseRepository(db) for name, db in databases.items()}, locator
            ),
            CellRoutedPortReservationRepository(
                {name: SqlPortReservationRepository(db) for name, db in databases.items()},
                locator,
            ),
        )


def _opened(stack: ExitStack, url: str, cell: str) -> Engine:
    """``open_engine``, disposed with ``stack``, every bad URL option typed and an error
    naming the cell, if any; the default SQLite file's directory made 0700 (the token store)."""
    if url == default_database_url():
        default_database_path().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        engine = open_engine(url)
    except (BackendUnavailable, ValueError, TypeError) as exc:
        if not isinstance(exc, ConsoleAuthError):  # a driver argument create_engine cannot convert
            exc = InvalidRequest("database URL has an invalid option in its query")
        if cell:
            raise type(exc)(f"cell {cell}: {exc}") from (exc.__cause__ or exc)
        raise exc from exc.__cause__
    stack.callback(engine.dispose)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        logger.info("token store: SQLite file %s", Path(engine.url.database).absolute())
    return engine


def _migration_engines(
    database: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]]
) -> Iterator[dict[str, Engine]]:
    """The databases ``console-auth db`` migrates, by cell, with no schema
    check, so that it can fix a schema."""
    with ExitStack() as stack:
        yield {
            name: _opened(stack, db["url"], name)
            for name, db in _databases(database, cells).items()
        }


def _memcached_store(memcached: Mapping[str, Any]) -> Iterator[Store]:
    """The ``memcached`` backend: tokens only, on one client (a connection pool per server)."""
    with _extra("the memcached backend needs pymemcache", "memcached"):
        from console_auth.adapters.memcached import (
            MemcachedClient,
            MemcachedConsoleConnectionRepository,
        )
    # The section's fields are the client's arguments, but for the repository's two.
    client_settings = dict(memcached)
    repository = {k: client_settings.pop(k) for k in ("key_prefix", "expired_retention")}
    client = MemcachedClient(**client_settings)
    with closing(client):
        tokens = MemcachedConsoleConnectionRepository(client, **repository)
        yield Store(tokens, evictions=client.evictions)


def _tokens(primary: Store, fallback: Store | None) -> ConsoleConnectionRepository:
    """The primary's tokens, paired with the ``fallback`` backend's while switching."""
    if fallback is None:
        return primary.tokens
    return FallbackConsoleConnectionRepository(primary.tokens, fallback.tokens)


def _policy(settings: Mapping[str, Any]) -> ServicePolicy:
    return ServicePolicy(
        default_ttl=timedelta(seconds=settings["token_ttl"]),
        require_instance_uuid=settings["require_instance_uuid"],
        require_token_mac=settings["require_token_mac"],
        purge_batch_size=settings["purge_batch_size"],
        purge_grace=timedelta(seconds=settings["purge_grace"]),
        lease_ttl=timedelta(seconds=settings["serial_lease_ttl"]),
    )


def _ports(
    consoles: ConsoleAuthService, store: Store, lease_ids: LeaseIdSource
) -> ConsolePortService:
    """Serial ports beside the primary's tokens; memcached keeps none (Nova bug 1425640)."""
    if store.leases is None or store.reservations is None:
        raise InvalidRequest(SERIAL_NEEDS_DATABASE)
    return ConsolePortService(consoles, store.leases, store.reservations, lease_ids)


def _console_endpoints(
    driver: str, libvirt: Mapping[str, Any], static_consoles_file: Path
) -> Iterator[ConsoleEndpoints]:
    """The configured driver's ``ConsoleEndpoints``."""
    if driver == "none":
        raise InvalidRequest(NO_CONSOLE_DRIVER)
    if driver == "static":
        yield StaticConsoleEndpoints(static_consoles_file)
        return
    with _extra("the libvirt console driver needs libvirt-python", "libvirt"):
        from console_auth.adapters.libvirt import LibvirtConsoleEndpoints
    endpoints = LibvirtConsoleEndpoints(
        libvirt["uri"],
        vnc_host=libvirt["vnc_proxyclient_address"],
        spice_host=libvirt["spice_proxyclient_address"],
        serial_host=libvirt["serial_proxyclient_address"],
    )
    with closing(endpoints):
        yield endpoints


def _metrics_registry() -> Any:
    """The container's own; a host service may override it with prometheus ``REGISTRY``."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _metrics(
    enabled: bool | None, backend: str, registry: Callable[[], Any], store: Callable[[], Store]
) -> Any:
    """A ``PrometheusConsoleEvents`` if ``enabled``, else ``None`` (the store stays unopened)."""
    if not enabled:
        return None
    with _extra("metrics need prometheus-client", "metrics"):
        from console_auth.adapters.prometheus import PrometheusConsoleEvents
    return PrometheusConsoleEvents(registry(), backend=backend, evictions=store().evictions)


def _audit(enabled: bool) -> ConsoleEvents | None:
    return LoggingConsoleEvents() if enabled else None


def _tracing(enabled: bool) -> ConsoleEvents | None:
    if not enabled:
        return None
    with _extra("tracing needs opentelemetry-api", "tracing"):
        from console_auth.adapters.tracing import OpenTelemetryConsoleEvents
    return OpenTelemetryConsoleEvents()


class Container(containers.DeclarativeContainer):
    """Feed ``config`` with ``config.from_pydantic(settings)`` (``build_container`` does)."""

    config = providers.Configuration(strict=True)

    clock = providers.Singleton(SystemClock)
    tokens = providers.Singleton(SecretsTokenSource)
    lease_ids = providers.Singleton(SecretsLeaseIdSource)
    # One provider per backend, each returning that backend's ``Store``.
    database = providers.Resource(
        _database_store,
        database=config.database,
        cells=config.cells,
        cell_map_file=config.cell_map_file,
        search_timeout=config.cell_search_timeout,
    )
    memcached = providers.Resource(_memcached_store, memcached=config.memcached)
    memory = providers.Singleton(
        Store,
        providers.Factory(InMemoryConsoleConnectionRepository),
        providers.Factory(InMemoryPortLeaseRepository),
        providers.Factory(InMemoryPortReservationRepository),
    )
    store = providers.Selector(
        config.console_tokens_backend, database=database, memcached=memcached, memory=memory
    )
    # ``fallback`` other than "none" only while switching backends: its store opens only then.
    repository = providers.Singleton(
        _tokens,
        primary=store,
        fallback=providers.Selector(
            config.fallback, none=providers.Object(None), database=database, memcached=memcached
        ),
    )
    policy = providers.Singleton(_policy, settings=config)
    metrics_registry = providers.Singleton(_metrics_registry)
    metrics = providers.Singleton(
        _metrics,
        enabled=config.metrics.enabled,
        backend=config.console_tokens_backend,
        registry=metrics_registry.provider,
        store=store.provider,
    )
    audit = providers.Singleton(_audit, enabled=config.audit.enabled)
    tracing = providers.Singleton(_tracing, enabled=config.tracing.enabled)
    events = providers.Singleton(combined, metrics, audit, tracing)
    # A factory, so an override of any collaborator shows in the next service.
    service = providers.Factory(
        ConsoleAuthService,
        repository=repository,
        clock=clock,
        tokens=tokens,
        policy=policy,
        events=events,
    )
    ports = providers.Factory(_ports, consoles=service, store=store, lease_ids=lease_ids)
    # Where instances' consoles listen; tests override it with ``InMemoryConsoleEndpoints``.
    console_endpoints = providers.Resource(
        _console_endpoints,
        driver=config.console_driver,
        libvirt=config.libvirt,
        static_consoles_file=config.static_consoles_file,
    )
    consoles = providers.Factory(
        InstanceConsoleService,
        consoles=service,
        endpoints=console_endpoints,
        serial_ports=ports.provider,
        access_url_bases=config.access_url_bases,
    )
    # ``console-auth db``: the databases without the services' schema check.
    migration_engines = providers.Resource(
        _migration_engines, database=config.database, cells=config.cells
    )


def build_container(settings: Settings | None = None) -> Container:
    """A container for ``settings`` (default: ``load_settings()``); end it with
    ``container.shutdown_resources()``, which closes whatever was opened."""
    container = Container()
    container.config.from_pydantic(load_settings() if settings is None else settings)
    return container


def create_service(settings: Settings | None = None) -> ConsoleAuthService:
    """A ready ``ConsoleAuthService`` whose engine lives as long as the process."""
    return build_container(settings).service()
