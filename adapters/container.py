"""The object graph, declared once: which adapter fills which port.

Replaces bootstrap code. Providers are lazy, so nothing connects until a
service is asked for, and the ``memory`` backend never opens an engine.
Tests swap one provider with ``container.repository.override(...)`` used as a
context manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from dependency_injector import containers, providers
from sqlalchemy import Engine

from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.settings import Settings, load_settings, resolve_auto_migrate
from console_auth.adapters.sql import SqlConsoleConnectionRepository, open_engine
from console_auth.adapters.system import SecretsTokenSource, SystemClock
from console_auth.application import ConsoleAuthService, ServicePolicy


def _engine(url: str, auto_migrate: bool | None) -> Iterator[Engine]:
    """One pooled engine per container, disposed by ``shutdown_resources()``."""
    engine = open_engine(url, auto_migrate=resolve_auto_migrate(url, auto_migrate))
    try:
        yield engine
    finally:
        engine.dispose()


def _policy(token_ttl: int, require_instance_uuid: bool, purge_batch_size: int) -> ServicePolicy:
    return ServicePolicy(
        default_ttl=timedelta(seconds=token_ttl),
        require_instance_uuid=require_instance_uuid,
        purge_batch_size=purge_batch_size,
    )


class Container(containers.DeclarativeContainer):
    """Feed ``config`` with ``config.from_pydantic(settings)`` (``build_container`` does)."""

    config = providers.Configuration(strict=True)

    clock = providers.Singleton(SystemClock)
    tokens = providers.Singleton(SecretsTokenSource)
    engine = providers.Resource(
        _engine, url=config.database.url, auto_migrate=config.database.auto_migrate
    )
    repository = providers.Selector(
        config.console_tokens_backend,
        database=providers.Singleton(SqlConsoleConnectionRepository, engine=engine),
        memory=providers.Singleton(InMemoryConsoleConnectionRepository),
    )
    policy = providers.Singleton(
        _policy,
        token_ttl=config.token_ttl,
        require_instance_uuid=config.require_instance_uuid,
        purge_batch_size=config.purge_batch_size,
    )
    # A factory, so an override of any collaborator shows in the next service.
    service = providers.Factory(
        ConsoleAuthService, repository=repository, clock=clock, tokens=tokens, policy=policy
    )


def build_container(settings: Settings | None = None) -> Container:
    """A container for ``settings`` (default: ``load_settings()``).

    Call ``container.shutdown_resources()`` when done: it disposes the
    database engine, if one was opened.
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
