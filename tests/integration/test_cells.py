"""Two cells on two real databases: a SQLite file (cell ``a``) and a private
PostgreSQL database (cell ``b``) reached through a TCP proxy, so that cell
``b`` can be refused or blackholed without touching the shared server.

Rows are checked with raw SQL on each database; "never asked" is shown by
a refusing proxy that would turn any question into an error.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, text
from sqlalchemy.engine import make_url

from console_auth.adapters import cli
from console_auth.adapters.cells import FileCellLocator
from console_auth.adapters.container import build_container
from console_auth.adapters.memory import InMemoryCellLocator
from console_auth.adapters.settings import Settings, load_settings
from console_auth.adapters.sql import (
    HEAD,
    SqlConsoleConnectionRepository,
    Statements,
    current_revision,
    open_engine,
)
from console_auth.adapters.sql.tables import CONSOLE_CONNECTIONS
from console_auth.application import (
    CellRoutedConsoleConnectionRepository,
    ConsoleAuthService,
    ServicePolicy,
)
from console_auth.domain import (
    BackendUnavailable,
    InvalidRequest,
    InvalidToken,
    UnknownCell,
)
from tests.backends.sql_servers import database
from tests.fakes import FakeClock, FixedTokenSource
from tests.integration.tcp_proxy import TcpProxy

IN_A, IN_B, ALSO_IN_B = (uuid.uuid4() for _ in range(3))
BASE = "https://console.example.com/vnc_lite.html"
SEARCH_TIMEOUT = 1.0
BOUND_S = 8.0
"""A refused cell answers in well under this (PostgreSQL's connect timeout is 2 s here)."""


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """Cell ``b``'s database: private, migrated, shared by this module."""
    with database("postgresql") as url:
        open_engine(url, auto_migrate=True).dispose()
        yield url


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    parsed = make_url(pg_url)
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432)) as running:
        yield running


@pytest.fixture
def engine_a(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path}/cell-a.sqlite3", auto_migrate=True)
    yield engine
    engine.dispose()


@pytest.fixture
def engine_b(pg_url: str, proxy: TcpProxy) -> Iterator[Engine]:
    """Cell ``b`` through the proxy, emptied first (directly, not through it)."""
    direct = open_engine(pg_url)
    with direct.begin() as conn:
        conn.execute(delete(CONSOLE_CONNECTIONS))
    direct.dispose()
    engine = open_engine(_through(pg_url, proxy), connect_timeout=2)
    yield engine
    engine.dispose()


@pytest.fixture
def locator() -> InMemoryCellLocator:
    return InMemoryCellLocator(
        {IN_A: "a", IN_B: "b", ALSO_IN_B: "b"},
        hosts={"compute-a": "a", "compute-b": "b"},
        cells=["a", "b"],
    )


@pytest.fixture
def cells(
    engine_a: Engine, engine_b: Engine, locator: InMemoryCellLocator
) -> Iterator[CellRoutedConsoleConnectionRepository]:
    repository = CellRoutedConsoleConnectionRepository(
        {
            "a": SqlConsoleConnectionRepository(Statements(engine_a)),
            "b": SqlConsoleConnectionRepository(Statements(engine_b)),
        },
        locator,
        search_timeout=SEARCH_TIMEOUT,
    )
    yield repository
    repository.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(cells: CellRoutedConsoleConnectionRepository, clock: FakeClock) -> ConsoleAuthService:
    return ConsoleAuthService(
        cells,
        clock,
        FixedTokenSource(),
        ServicePolicy(purge_batch_size=3, purge_grace=timedelta(0)),
    )


def _through(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


def _hashes(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT token_hash FROM console_connections")).scalars())


def _down(proxy: TcpProxy, how: Any = "refuse") -> None:
    proxy.set_mode(how)
    proxy.drop_all()


# --- routing -------------------------------------------------------------------------------------


def test_authorize_stores_each_console_in_its_instances_cell(
    service: ConsoleAuthService, engine_a: Engine, pg_url: str
) -> None:
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc").connection
    in_b = service.authorize(IN_B, "compute-b", 5900, "novnc").connection
    direct_b = open_engine(pg_url)
    try:
        assert _hashes(engine_a) == {in_a.token_hash}
        assert _hashes(direct_b) == {in_b.token_hash}
    finally:
        direct_b.dispose()


def test_a_url_goes_straight_to_its_cell(service: ConsoleAuthService, proxy: TcpProxy) -> None:
    """Cell ``b`` refuses every connection: validating cell ``a``'s URLs never notices."""
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc", access_url_base=BASE)
    in_b = service.authorize(IN_B, "compute-b", 5900, "novnc", access_url_base=BASE)
    assert in_a.access_url is not None
    assert in_b.access_url is not None
    _down(proxy)

    for _ in range(3):
        assert service.validate_url(in_a.access_url) == in_a.connection
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cell b") as caught:
        service.validate_url(in_b.access_url)
    assert time.monotonic() - started < BOUND_S
    assert caught.value.__cause__ is not None  # the driver's error

    proxy.set_mode("forward")
    assert service.validate_url(in_b.access_url) == in_b.connection


def test_a_legacy_token_is_found_in_either_cell(service: ConsoleAuthService) -> None:
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc")
    in_b = service.authorize(IN_B, "compute-b", 5900, "novnc")
    assert service.validate(in_a.token.get_secret_value()) == in_a.connection
    assert service.validate(in_b.token.get_secret_value()) == in_b.connection
    with pytest.raises(InvalidToken):
        service.validate("A" * 43)


@pytest.mark.parametrize("how", ["refuse", "blackhole"])
def test_a_cell_that_is_down_hides_no_token_of_another_and_bounds_the_search(
    service: ConsoleAuthService, proxy: TcpProxy, how: str
) -> None:
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc")
    _down(proxy, how)

    started = time.monotonic()
    assert service.validate(in_a.token.get_secret_value()) == in_a.connection
    assert time.monotonic() - started < SEARCH_TIMEOUT  # the first hit wins

    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cell b") as caught:
        service.validate("A" * 43)  # maybe in cell b: not "unknown"
    assert time.monotonic() - started < SEARCH_TIMEOUT + 0.5
    assert "A" * 43 not in str(caught.value)


def test_a_cell_that_is_down_costs_only_its_own_instances(
    service: ConsoleAuthService, proxy: TcpProxy, engine_a: Engine
) -> None:
    issued = service.authorize(IN_B, "compute-b", 5900, "novnc")
    _down(proxy)
    with pytest.raises(BackendUnavailable, match="cell b"):
        service.authorize(ALSO_IN_B, "compute-b", 5900, "novnc")
    with pytest.raises(BackendUnavailable, match="cell b"):
        service.revoke_instance(IN_B)
    in_a = service.authorize(IN_A, "compute-a", 5900, "novnc")
    with pytest.raises(BackendUnavailable, match=r"^1 console tokens .* cell b"):
        service.revoke_instance(IN_A)  # revoked in cell a, and cell b may hold some too
    assert _hashes(engine_a) == set()
    with pytest.raises(UnknownCell):
        service.validate(in_a.token.get_secret_value(), uuid.uuid4())
    proxy.set_mode("forward")
    assert service.revoke_instance(IN_B) == 1
    with pytest.raises(InvalidToken):
        service.validate(issued.token.get_secret_value(), IN_B)


def test_a_token_left_in_the_old_cell_of_a_moved_instance_is_revoked(
    service: ConsoleAuthService, locator: InMemoryCellLocator, engine_a: Engine, pg_url: str
) -> None:
    """Issue 10: once the map moves an instance, a revoke must still reach the
    cell its older tokens are in, or they validate from a URL without the uuid."""
    old = service.authorize(IN_A, "compute-a", 5900, "novnc", access_url_base=BASE)
    locator.place(IN_A, "b")
    new = service.authorize(IN_A, "compute-b", 5900, "novnc", access_url_base=BASE)
    token = old.token.get_secret_value()
    legacy_url = f"{BASE}?token={token}"
    assert service.validate_url(legacy_url) == old.connection

    revoked = service.revoke_instance(IN_A)
    for issued in (old, new):
        assert issued.access_url is not None
        with pytest.raises(InvalidToken):
            service.validate_url(issued.access_url)
        with pytest.raises(InvalidToken):
            service.validate(issued.token.get_secret_value())
    with pytest.raises(InvalidToken):
        service.validate_url(legacy_url)
    assert revoked == 2
    direct_b = open_engine(pg_url)
    try:
        assert _hashes(engine_a) == _hashes(direct_b) == set()
    finally:
        direct_b.dispose()


def test_purge_by_host_stays_in_its_cell_and_every_cell_is_purged_around_a_down_one(
    service: ConsoleAuthService, clock: FakeClock, proxy: TcpProxy, engine_a: Engine
) -> None:
    for _ in range(4):
        service.authorize(IN_A, "compute-a", 5900, "novnc", ttl=timedelta(seconds=1))
        service.authorize(IN_B, "compute-b", 5900, "novnc", ttl=timedelta(seconds=1))
    clock.advance(timedelta(seconds=1))
    _down(proxy)

    assert service.purge_expired("compute-a") == 4  # cell b is never asked
    for _ in range(2):
        service.authorize(IN_A, "compute-a", 5901, "novnc", ttl=timedelta(seconds=1))
    clock.advance(timedelta(seconds=1))
    with pytest.raises(BackendUnavailable, match=r"purged 2 .*cell b"):
        service.purge_expired()
    assert _hashes(engine_a) == set()  # cell a was purged all the same

    proxy.set_mode("forward")
    assert service.purge_expired() == 4


# --- wiring: settings, cell map file, container, CLI ---------------------------------------------


def _cell_map(path: Path, cells: dict[str, dict[str, list[str]]]) -> Path:
    """Written whole, then renamed over the old one, as the docs ask."""
    lines = []
    for name, entry in cells.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(values)}" for key, values in entry.items()]
    staged = path.with_suffix(".new")
    staged.write_text("\n".join(lines) + "\n", encoding="utf-8")
    staged.replace(path)
    return path


def _settings_file(tmp_path: Path, cell_b_url: str, map_file: Path, **extra: object) -> Path:
    path = tmp_path / "console-auth.toml"
    head = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    path.write_text(
        f'{head}cell_map_file = "{map_file}"\n'
        f'[cells.a.database]\nurl = "sqlite:///{tmp_path}/cell-a.sqlite3"\n'
        f'[cells.b.database]\nurl = "{cell_b_url}"\n',
        encoding="utf-8",
    )
    return path


def test_the_container_routes_by_the_cell_map_file(tmp_path: Path, pg_url: str) -> None:
    map_file = _cell_map(
        tmp_path / "cells.toml", {"a": {"instances": [str(IN_A)]}, "b": {"instances": [str(IN_B)]}}
    )
    direct_b = open_engine(pg_url)
    with direct_b.begin() as conn:
        conn.execute(delete(CONSOLE_CONNECTIONS))
    settings = Settings.model_validate(
        {
            "cells": {
                "a": {"database": {"url": f"sqlite:///{tmp_path}/cell-a.sqlite3"}},
                "b": {"database": {"url": pg_url}},
            },
            "cell_map_file": map_file,
            "cell_search_timeout": 1.5,
        }
    )
    container = build_container(settings)
    try:
        service = container.service()
        assert isinstance(container.repository(), CellRoutedConsoleConnectionRepository)
        in_a = service.authorize(IN_A, "compute-a", 5900, "novnc")
        in_b = service.authorize(IN_B, "compute-b", 5900, "novnc")
        engines = container.migration_engines()
        assert set(engines) == {"a", "b"}  # no single database besides the cells
        assert current_revision(engines["a"]) == HEAD  # SQLite migrates itself
        assert _hashes(engines["a"]) == {in_a.connection.token_hash}
        assert _hashes(direct_b) == {in_b.connection.token_hash}

        with pytest.raises(UnknownCell):
            service.authorize(ALSO_IN_B, "compute-b", 5900, "novnc")
        _cell_map(
            map_file,
            {"a": {"instances": [str(IN_A)]}, "b": {"instances": [str(IN_B), str(ALSO_IN_B)]}},
        )
        repository = container.repository()
        assert isinstance(repository, CellRoutedConsoleConnectionRepository)
        locator = repository.locator
        assert isinstance(locator, FileCellLocator)
        assert locator.reload()
        also = service.authorize(ALSO_IN_B, "compute-b", 5900, "novnc")
        assert service.validate(also.token.get_secret_value(), ALSO_IN_B) == also.connection
    finally:
        container.shutdown_resources()
        direct_b.dispose()
    assert not container.database.initialized


def test_db_commands_migrate_every_cell_or_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    map_file = _cell_map(tmp_path / "cells.toml", {})
    with database("postgresql") as empty_b:
        config = str(_settings_file(tmp_path, empty_b, map_file))

        def db(*argv: str) -> tuple[int, Any]:
            code = cli.main(["--config", config, "--json", "db", *argv])
            out, err = capsys.readouterr()
            return code, (json.loads(out) if code == 0 else err)

        assert db("current") == (0, {"cells": {"a": None, "b": None}})  # opening migrated nothing
        assert db("upgrade") == (0, {"cells": {"a": HEAD, "b": HEAD}})
        assert db("downgrade", "base", "--cell", "b") == (0, {"cells": {"b": None}})
        assert db("current") == (0, {"cells": {"a": HEAD, "b": None}})
        assert db("upgrade", "--cell", "b") == (0, {"cells": {"b": HEAD}})
        code, err = db("current", "--cell", "c")
        assert (code, err) == (1, "console-auth: error: no cell is named 'c'; cells: a, b\n")


def test_db_upgrade_names_the_cell_that_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_url: str, proxy: TcpProxy
) -> None:
    map_file = _cell_map(tmp_path / "cells.toml", {})
    config = str(_settings_file(tmp_path, _through(pg_url, proxy), map_file))
    _down(proxy)
    code = cli.main(["--config", config, "db", "upgrade"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("console-auth: error: cell b: SQL token store unavailable")
    assert err.rstrip().endswith("; done: a")


# --- the cell map file ---------------------------------------------------------------------------


def test_the_cell_map_file_places_instances_and_hosts(tmp_path: Path) -> None:
    path = _cell_map(
        tmp_path / "cells.toml",
        {
            "a": {"hosts": ["compute-1", "0:0::1"], "instances": [str(IN_A)]},
            "b": {"instances": [str(IN_B).upper()]},
        },
    )
    locator = FileCellLocator(path, ["a", "b", "c"])
    assert locator.cells() == ("a", "b", "c")
    assert locator.cell_of(IN_A) == "a"
    assert locator.cell_of(IN_B) == "b"
    assert locator.cell_of_host("compute-1") == "a"
    assert locator.cell_of_host("::1") == "a"  # spelled as the service spells hosts
    assert locator.cell_of_host("Compute-1") is None  # hosts compare exactly
    with pytest.raises(UnknownCell):
        locator.cell_of(ALSO_IN_B)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[z]\n", r"\[z\] is not a configured cell"),
        ("[a]\nhosts = 'compute-1'\n", "hosts must be a list"),
        ("[a]\nvms = []\n", "must be a table of hosts and instances"),
        (f'[a]\ninstances = ["{IN_A}"]\n[b]\ninstances = ["{IN_A}"]\n', "is in cells a and b"),
        ("[a]\ninstances = ['nope']\n", "uuid"),
        ("[a]\nhosts = ['not a host']\n", "host"),
        ("[a\n", "not valid TOML"),
    ],
)
def test_a_bad_cell_map_fails_the_first_load(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "cells.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidRequest, match=problem):
        FileCellLocator(path, ["a", "b"])
    with pytest.raises(InvalidRequest, match="cannot be read"):
        FileCellLocator(tmp_path / "missing.toml", ["a"])


def test_a_bad_reload_keeps_the_previous_map(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _cell_map(tmp_path / "cells.toml", {"a": {"instances": [str(IN_A)]}})
    locator = FileCellLocator(path, ["a", "b"], reload_interval=3600)
    _cell_map(path, {"a": {"instances": [str(IN_A)]}, "b": {"instances": [str(IN_B)]}})
    with pytest.raises(UnknownCell):
        locator.cell_of(IN_B)  # not looked at again within the interval
    assert locator.reload()
    assert locator.cell_of(IN_B) == "b"
    assert not locator.reload()  # unchanged

    (tmp_path / "cells.new").write_text("[zz]\n", encoding="utf-8")
    (tmp_path / "cells.new").replace(path)
    assert not locator.reload()
    assert locator.cell_of(IN_B) == "b"
    assert "keeping the previous cell map" in caplog.text
    path.unlink()
    assert not locator.reload()
    assert locator.cell_of(IN_A) == "a"


def test_the_map_is_looked_at_again_after_the_interval(tmp_path: Path) -> None:
    path = _cell_map(tmp_path / "cells.toml", {})
    locator = FileCellLocator(path, ["a"], reload_interval=0.05)
    _cell_map(path, {"a": {"instances": [str(IN_A)]}})
    time.sleep(0.1)
    assert locator.cell_of(IN_A) == "a"


# --- settings ------------------------------------------------------------------------------------


def test_cells_come_from_the_environment_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _settings_file(tmp_path, "postgresql+psycopg://u:s3cret@db-b/tokens", tmp_path / "m")
    monkeypatch.setenv("CONSOLE_AUTH_CELLS__B__DATABASE__URL", "postgresql+psycopg://u:pw@db-b2/t")
    monkeypatch.setenv("CONSOLE_AUTH_CELLS__C__DATABASE__URL", "sqlite:///c.sqlite3")
    monkeypatch.setenv("CONSOLE_AUTH_CELL_SEARCH_TIMEOUT", "0.5")
    settings = load_settings(config)
    assert list(settings.cells) == ["a", "b", "c"]
    assert settings.cells["b"].database.url == "postgresql+psycopg://u:pw@db-b2/t"
    assert settings.cell_map_file == tmp_path / "m"
    assert settings.cell_search_timeout == 0.5
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        (
            {"CONSOLE_AUTH_CELLS__A__DATABASE__URL": "sqlite:///a.sqlite3"},
            r"cell_map_file \(CONSOLE_AUTH_CELL_MAP_FILE\): is required when cells are configured",
        ),
        (
            {
                "CONSOLE_AUTH_CELLS__A.B__DATABASE__URL": "sqlite://",
                "CONSOLE_AUTH_CELL_MAP_FILE": "m",
            },
            "should match pattern",
        ),
        ({"CONSOLE_AUTH_CELL_SEARCH_TIMEOUT": "0"}, "cell_search_timeout"),
    ],
)
def test_bad_cell_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidRequest, match=problem):
        load_settings()


def test_the_readme_cells_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Cells", 1)[1].split("\n## ", 1)[0]
    settings_toml, map_toml = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    map_file = tmp_path / "cells.toml"
    map_file.write_text(map_toml, encoding="utf-8")
    config = tmp_path / "console-auth.toml"
    config.write_text(
        settings_toml.replace("/etc/console-auth/cells.toml", str(map_file)), encoding="utf-8"
    )

    settings = load_settings(config)
    locator = FileCellLocator(settings.cell_map_file or "", list(settings.cells))
    assert locator.cells() == ("cell1", "cell2")
    assert locator.cell_of(uuid.UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")) == "cell1"
    assert locator.cell_of(uuid.UUID("0f1e2d3c-4b5a-4697-8877-665544332211")) == "cell2"
    assert locator.cell_of_host("compute-3") == "cell2"


def test_a_cells_bad_database_url_is_named_and_keeps_its_cause(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "cells": {
                "a": {"database": {"url": f"sqlite:///{tmp_path}/cell-a.sqlite3"}},
                "b": {"database": {"url": "nosuch:///x"}},
            },
            "cell_map_file": _cell_map(tmp_path / "cells.toml", {}),
        }
    )
    container = build_container(settings)
    try:
        with pytest.raises(
            InvalidRequest, match=r"^cell b: SQLAlchemy has no dialect 'nosuch'$"
        ) as e:
            container.service()
        assert isinstance(e.value.__cause__, InvalidRequest)  # the engine's own error, chained
    finally:
        container.shutdown_resources()
