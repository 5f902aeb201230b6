"""The container wires what the settings choose, opens a database only for
the ``database`` backend (or fallback), and lets a test swap any one provider."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dependency_injector import providers

from console_auth.adapters.container import build_container, create_service
from console_auth.adapters.memcached import MemcachedConsoleConnectionRepository
from console_auth.adapters.memory import InMemoryConsoleConnectionRepository
from console_auth.adapters.settings import DatabaseSettings, Settings
from console_auth.adapters.sql import (
    HEAD,
    SqlConsoleConnectionRepository,
    current_revision,
    downgrade,
    open_engine,
    upgrade,
)
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    FallbackConsoleConnectionRepository,
)
from console_auth.domain import BackendUnavailable, InstanceMismatch, InvalidRequest
from tests.backends.memcached import fresh_prefix, session_servers
from tests.fakes import T0, FakeClock, FixedTokenSource

INSTANCE = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
SERIAL_NEEDS_DATABASE = (
    'serial consoles need the database backend (console_tokens_backend = "database"): '
    "memcached may evict a port lease"
)


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.sqlite3"


@pytest.fixture(scope="module")
def memcached_servers() -> Iterator[list[str]]:
    servers, process = session_servers()
    try:
        yield servers
    finally:
        if process is not None:
            process.stop()


def settings_for(
    backend: str, db_file: Path, *, auto_migrate: bool | None = None, **fields: object
) -> Settings:
    database = DatabaseSettings(url=f"sqlite:///{db_file}", auto_migrate=auto_migrate)
    return Settings.model_validate(
        {"console_tokens_backend": backend, "database": database, **fields}
    )


def test_memory_backend_opens_no_engine(db_file: Path) -> None:
    container = build_container(settings_for("memory", db_file))

    service = container.service()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value()) == issued.connection

    assert isinstance(container.repository(), InMemoryConsoleConnectionRepository)
    assert not container.database.initialized
    assert not db_file.exists()


def test_database_backend_migrates_sqlite_and_disposes_on_shutdown(db_file: Path) -> None:
    container = build_container(settings_for("database", db_file))

    service = container.service()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value()) == issued.connection

    assert isinstance(container.repository(), SqlConsoleConnectionRepository)
    assert container.database.initialized
    assert current_revision(container.migration_engines()[""]) == HEAD
    container.shutdown_resources()
    assert not container.database.initialized


def test_memcached_backend_opens_no_engine_and_closes_its_client(
    db_file: Path, memcached_servers: list[str]
) -> None:
    memcached = {"servers": memcached_servers, "key_prefix": fresh_prefix()}
    container = build_container(settings_for("memcached", db_file, memcached=memcached))

    service = container.service()
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    assert service.validate(issued.token.get_secret_value()) == issued.connection

    repository = container.repository()
    assert isinstance(repository, MemcachedConsoleConnectionRepository)
    assert repository.key_prefix == memcached["key_prefix"]
    assert container.memcached.initialized
    assert not container.database.initialized
    assert not db_file.exists()
    container.shutdown_resources()
    assert not container.memcached.initialized


def test_memcached_with_the_database_as_fallback_opens_both(
    db_file: Path, memcached_servers: list[str]
) -> None:
    memcached = {"servers": memcached_servers, "key_prefix": fresh_prefix()}
    settings = settings_for("memcached", db_file, memcached=memcached, fallback="database")
    container = build_container(settings)

    repository = container.repository()

    assert isinstance(repository, FallbackConsoleConnectionRepository)
    assert isinstance(repository.primary, MemcachedConsoleConnectionRepository)
    assert isinstance(repository.secondary, SqlConsoleConnectionRepository)
    assert container.database.initialized
    container.shutdown_resources()


def test_a_fallback_to_a_database_split_over_cells_keeps_its_routing(tmp_path: Path) -> None:
    map_file = tmp_path / "cells.toml"
    map_file.write_text('[a]\nhosts = ["compute-a"]\n[b]\nhosts = ["compute-b"]\n')
    settings = Settings.model_validate(
        {
            "console_tokens_backend": "memory",
            "fallback": "database",
            "cells": {
                name: {"database": {"url": f"sqlite:///{tmp_path}/cell-{name}.sqlite3"}}
                for name in ("a", "b")
            },
            "cell_map_file": map_file,
        }
    )
    container = build_container(settings)
    try:
        repository = container.repository()
        assert isinstance(repository, FallbackConsoleConnectionRepository)
        assert repository.secondary is container.database().tokens
        assert isinstance(repository.secondary, CellRoutedConsoleConnectionRepository)
        assert repository.secondary.cell_names == ("a", "b")
    finally:
        container.shutdown_resources()


def test_the_database_with_memcached_as_fallback(
    db_file: Path, memcached_servers: list[str]
) -> None:
    memcached = {"servers": memcached_servers, "key_prefix": fresh_prefix()}
    container = build_container(
        settings_for("database", db_file, memcached=memcached, fallback="memcached")
    )

    repository = container.repository()

    assert isinstance(repository, FallbackConsoleConnectionRepository)
    assert isinstance(repository.primary, SqlConsoleConnectionRepository)
    assert isinstance(repository.secondary, MemcachedConsoleConnectionRepository)
    assert repository.primary is container.database().tokens
    container.shutdown_resources()


@pytest.mark.parametrize("fallback", ["none", "database"])
def test_serial_ports_on_memcached_are_refused_and_its_tokens_still_work(
    db_file: Path, memcached_servers: list[str], fallback: str
) -> None:
    """memcached may evict a port lease (Nova bug 1425640): asking for serial
    ports names the database backend; the same container still issues and
    validates tokens."""
    memcached = {"servers": memcached_servers, "key_prefix": fresh_prefix()}
    settings = settings_for("memcached", db_file, memcached=memcached, fallback=fallback)
    container = build_container(settings)
    try:
        with pytest.raises(InvalidRequest) as refused:
            container.ports()
        assert str(refused.value) == SERIAL_NEEDS_DATABASE
        service = container.service()
        issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
        assert service.validate(issued.token.get_secret_value()) == issued.connection
        assert service.revoke_instance(INSTANCE) == 1
    finally:
        container.shutdown_resources()


def test_the_database_with_memcached_as_fallback_keeps_serial_ports(
    db_file: Path, memcached_servers: list[str]
) -> None:
    """Leases live in the primary backend: here the database."""
    memcached = {"servers": memcached_servers, "key_prefix": fresh_prefix()}
    container = build_container(
        settings_for("database", db_file, memcached=memcached, fallback="memcached")
    )
    try:
        ports = container.ports()
        issued = ports.authorize_serial(INSTANCE, "compute-1", [10000])
        lease = ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
        assert [held.port for held in ports.leases()] == [lease.port] == [10000]
    finally:
        container.shutdown_resources()


def test_an_unreachable_memcached_is_unavailable_on_first_use(db_file: Path) -> None:
    """Building connects to nothing; the first command says what is wrong."""
    memcached = {"servers": ["127.0.0.1:1"], "connect_timeout": 0.5}
    container = build_container(settings_for("memcached", db_file, memcached=memcached))
    service = container.service()
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1\b"):
        service.validate("A" * 43)
    container.shutdown_resources()


def test_an_explicit_auto_migrate_false_leaves_sqlite_alone(db_file: Path) -> None:
    container = build_container(settings_for("database", db_file, auto_migrate=False))
    try:
        assert current_revision(container.migration_engines()[""]) is None
    finally:
        container.shutdown_resources()


def test_the_policy_follows_the_settings(db_file: Path) -> None:
    settings = settings_for(
        "memory", db_file, token_ttl=30, require_instance_uuid=True, purge_batch_size=2
    )
    service = build_container(settings).service()

    assert service.policy.default_ttl == timedelta(seconds=30)
    assert service.policy.purge_batch_size == 2
    issued = service.authorize(INSTANCE, "compute-1", 5900, "novnc")
    with pytest.raises(InstanceMismatch):
        service.validate(issued.token.get_secret_value())
    assert service.validate(issued.token.get_secret_value(), INSTANCE) == issued.connection


def test_overrides_apply_inside_the_block_only(db_file: Path) -> None:
    container = build_container(settings_for("database", db_file))
    repository = InMemoryConsoleConnectionRepository()

    with (
        container.repository.override(providers.Object(repository)),
        container.clock.override(providers.Object(FakeClock(T0))),
        container.tokens.override(providers.Object(FixedTokenSource())),
    ):
        issued = container.service().authorize(INSTANCE, "compute-1", 5900, "novnc")

    assert issued.connection.issued_at == T0
    assert repository.get_by_hash(issued.connection.token_hash) == issued.connection
    assert not container.database.initialized
    assert isinstance(container.repository(), SqlConsoleConnectionRepository)
    container.shutdown_resources()


def test_the_whole_service_can_be_overridden(db_file: Path) -> None:
    container = build_container(settings_for("database", db_file))
    double = ConsoleAuthService(
        InMemoryConsoleConnectionRepository(), FakeClock(), FixedTokenSource()
    )

    with container.service.override(providers.Object(double)):
        assert container.service() is double
    assert container.service() is not double
    container.shutdown_resources()


def test_without_settings_the_environment_is_read(
    db_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memory")
    monkeypatch.setenv("CONSOLE_AUTH_TOKEN_TTL", "42")

    container = build_container()

    assert container.config.console_tokens_backend() == "memory"
    assert container.service().policy.default_ttl == timedelta(seconds=42)


def test_create_service_is_ready_to_use(db_file: Path) -> None:
    service = create_service(settings_for("memory", db_file))

    issued = service.authorize(INSTANCE, "compute-1", 5900, "spice-html5")
    assert service.validate(issued.token.get_secret_value()).console_type == "spice-html5"


def test_importing_reads_no_config_and_connects_nowhere(tmp_path: Path) -> None:
    """Settings that would fail to load or connect are harmless until used."""
    environment = {
        **os.environ,
        "CONSOLE_AUTH_CONFIG_FILE": str(tmp_path / "absent.toml"),
        "CONSOLE_AUTH_DATABASE__URL": f"sqlite:///{tmp_path}/no/such/dir/x.sqlite3",
    }
    script = "import console_auth.adapters.container, console_auth.adapters.cli"

    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "no").exists()


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", f"sqlite:///{tmp_path}/readme.sqlite3")
    namespace: dict[str, object] = {}

    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README

    assert isinstance(namespace["service"], ConsoleAuthService)
    assert namespace["connection"] == namespace["issued"].connection  # type: ignore[attr-defined]
    assert (tmp_path / "readme.sqlite3").exists()


def test_the_readme_serial_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Serial consoles", 1)[1].split("```python\n", 1)[1].split("```")[0]
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", f"sqlite:///{tmp_path}/serial.sqlite3")
    namespace: dict[str, object] = {}

    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README

    assert namespace["issued"].connection.port == 10000  # type: ignore[attr-defined]
    assert namespace["ports"].leases() == []  # type: ignore[attr-defined]  # disconnected
    assert namespace["port"] == 10000


@pytest.mark.parametrize("backend", ["memory", "database"])
def test_serial_ports_share_the_backend_and_follow_the_lease_ttl(
    db_file: Path, backend: str
) -> None:
    container = build_container(settings_for(backend, db_file, serial_lease_ttl=5))
    clock = FakeClock(T0)
    try:
        with container.clock.override(providers.Object(clock)):
            ports = container.ports()
            issued = ports.authorize_serial(INSTANCE, "compute-1", [10000])
            lease = ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-a")
            assert lease.expires_at == T0 + timedelta(seconds=5)
            # the same token store: the console service validates the serial token
            assert container.service().validate(issued.token.get_secret_value()).port == 10000
            clock.advance(timedelta(seconds=5))
            assert ports.leases() == []
        assert container.database.initialized is (backend == "database")
    finally:
        container.shutdown_resources()


def test_require_token_mac_is_wired_from_the_settings(db_file: Path) -> None:
    service = build_container(settings_for("memory", db_file, require_token_mac=True)).service()
    assert service.policy.require_token_mac is True


def test_purge_grace_is_wired_from_the_settings(db_file: Path) -> None:
    service = build_container(settings_for("memory", db_file, purge_grace=7)).service()

    assert service.policy.purge_grace == timedelta(seconds=7)


def test_a_bad_driver_argument_in_the_url_is_an_invalid_request(tmp_path: Path) -> None:
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite:///{tmp_path}/x.sqlite3?timeout=abc")
    )
    container = build_container(settings)

    with pytest.raises(InvalidRequest, match="invalid option"):
        container.service()


def test_building_a_service_creates_no_file_until_first_use(db_file: Path) -> None:
    container = build_container(settings_for("database", db_file))
    try:
        service = container.service()
        assert not db_file.exists()  # the README's "nothing connects until the first call"
        service.revoke_instance(INSTANCE)
        assert (
            current_revision(container.migration_engines()[""]) == HEAD
        )  # a fresh file: migrated
    finally:
        container.shutdown_resources()


@pytest.mark.parametrize(("revision", "found"), [("0001", "at revision 0001"), ("base", "no")])
def test_a_schema_behind_is_refused_and_left_alone(
    db_file: Path, revision: str, found: str
) -> None:
    engine = open_engine(f"sqlite:///{db_file}", auto_migrate=True)
    downgrade(engine, revision)
    engine.dispose()
    container = build_container(settings_for("database", db_file))
    try:
        for _ in range(2):  # checked again: a failure is not remembered as done
            with pytest.raises(BackendUnavailable, match=f"{found}.*console-auth db upgrade"):
                container.service().revoke_instance(INSTANCE)
        operator = open_engine(f"sqlite:///{db_file}")  # as `console-auth db` opens it
        assert current_revision(operator) == (None if revision == "base" else revision)
        upgrade(operator)
        operator.dispose()
        assert container.service().revoke_instance(INSTANCE) == 0
    finally:
        container.shutdown_resources()


def test_auto_migrate_true_upgrades_a_schema_behind(db_file: Path) -> None:
    engine = open_engine(f"sqlite:///{db_file}", auto_migrate=True)
    downgrade(engine, "0001")
    engine.dispose()
    container = build_container(settings_for("database", db_file, auto_migrate=True))
    try:
        assert container.service().revoke_instance(INSTANCE) == 0
        assert current_revision(container.migration_engines()[""]) == HEAD
    finally:
        container.shutdown_resources()


def test_the_default_store_gets_a_private_directory_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    container = build_container(Settings())
    try:
        with caplog.at_level(logging.INFO, logger="console_auth.adapters.container"):
            container.service().revoke_instance(INSTANCE)
            container.service().revoke_instance(INSTANCE)
    finally:
        container.shutdown_resources()

    path = tmp_path / "state" / "console-auth" / "console-auth.sqlite3"
    assert path.exists()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "console-auth.sqlite3").exists()
    assert [r.getMessage() for r in caplog.records] == [f"token store: SQLite file {path}"]
