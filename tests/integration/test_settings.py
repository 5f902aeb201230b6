"""Settings come from the environment over an optional TOML file, and every
mistake is an ``InvalidRequest`` that names the setting but not its value."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from console_auth.adapters.settings import (
    CONFIG_FILE_ENV,
    MAX_CONFIG_FILE_BYTES,
    DatabaseSettings,
    MemcachedSettings,
    Settings,
    default_database_url,
    load_settings,
)
from console_auth.application import MAX_PURGE_BATCH_SIZE
from console_auth.domain import InvalidRequest

SECRET = "s3cret-pa55"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's or CI's own CONSOLE_AUTH_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)


def write_toml(directory: Path, text: str) -> Path:
    path = directory / "console-auth.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_run_a_single_host_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = load_settings()

    assert settings == Settings(
        console_tokens_backend="database",
        token_ttl=600,
        require_instance_uuid=False,
        require_token_mac=False,
        purge_batch_size=1000,
        purge_grace=300,
        database=DatabaseSettings(
            url=f"sqlite:///{tmp_path}/state/console-auth/console-auth.sqlite3",
            auto_migrate=None,
        ),
        memcached=MemcachedSettings(
            servers=("127.0.0.1:11211",),
            key_prefix="console_auth",
            connect_timeout=1.0,
            timeout=1.0,
            max_idle=16,
            retry_attempts=1,
            retry_timeout=0.05,
            dead_timeout=2.0,
            expired_retention=3600,
        ),
        fallback="none",
    )


def test_every_setting_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memory")
    monkeypatch.setenv("CONSOLE_AUTH_TOKEN_TTL", "30")
    monkeypatch.setenv("CONSOLE_AUTH_REQUIRE_INSTANCE_UUID", "true")
    monkeypatch.setenv("CONSOLE_AUTH_PURGE_BATCH_SIZE", "7")
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", "postgresql://db.example/console")
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__AUTO_MIGRATE", "false")

    settings = load_settings()

    assert settings.console_tokens_backend == "memory"
    assert settings.token_ttl == 30
    assert settings.require_instance_uuid is True
    assert settings.purge_batch_size == 7
    assert settings.database == DatabaseSettings(
        url="postgresql://db.example/console", auto_migrate=False
    )


def test_a_toml_file_given_by_path(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'console_tokens_backend = "memory"\ntoken_ttl = 45\n'
        '[database]\nurl = "sqlite:////srv/tokens.sqlite3"\nauto_migrate = false\n',
    )

    for given in (path, str(path)):
        settings = load_settings(given)
        assert settings.console_tokens_backend == "memory"
        assert settings.token_ttl == 45
        assert settings.database.url == "sqlite:////srv/tokens.sqlite3"
        assert settings.database.auto_migrate is False


def test_a_toml_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write_toml(tmp_path, "purge_batch_size = 3\n")))

    assert load_settings().purge_batch_size == 3


def test_the_environment_overrides_the_file_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path,
        'token_ttl = 45\n[database]\nurl = "sqlite:////from/file.sqlite3"\nauto_migrate = false\n',
    )
    monkeypatch.setenv("CONSOLE_AUTH_TOKEN_TTL", "90")
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", "sqlite:////from/env.sqlite3")

    settings = load_settings(path)

    assert settings.token_ttl == 90
    assert settings.database.url == "sqlite:////from/env.sqlite3"
    assert settings.database.auto_migrate is False  # the file's, not lost by the env's url


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CONSOLE_AUTH_TOKEN_TTL", "0", "token_ttl"),
        ("CONSOLE_AUTH_TOKEN_TTL", "2592001", "token_ttl"),
        ("CONSOLE_AUTH_TOKEN_TTL", "ten", "token_ttl"),
        ("CONSOLE_AUTH_PURGE_BATCH_SIZE", "0", "purge_batch_size"),
        ("CONSOLE_AUTH_PURGE_BATCH_SIZE", str(MAX_PURGE_BATCH_SIZE + 1), "purge_batch_size"),
        ("CONSOLE_AUTH_PURGE_BATCH_SIZE", str(2**63), "purge_batch_size"),
        ("CONSOLE_AUTH_PURGE_GRACE", "-1", "purge_grace"),
        ("CONSOLE_AUTH_PURGE_GRACE", "86401", "purge_grace"),
        ("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "redis", "console_tokens_backend"),
        ("CONSOLE_AUTH_FALLBACK", "memory", "fallback"),
        ("CONSOLE_AUTH_FALLBACK", "database", "fallback"),  # the primary already
        ("CONSOLE_AUTH_MEMCACHED__SERVERS", "cache-1:eleven", "memcached.servers"),
        ("CONSOLE_AUTH_MEMCACHED__SERVERS", " , ", "memcached.servers"),
        ("CONSOLE_AUTH_MEMCACHED__SERVERS", "a:1,a:1", "memcached.servers"),
        ("CONSOLE_AUTH_MEMCACHED__KEY_PREFIX", "has space", "memcached.key_prefix"),
        ("CONSOLE_AUTH_MEMCACHED__TIMEOUT", "0", "memcached.timeout"),
        ("CONSOLE_AUTH_MEMCACHED__RETRY_ATTEMPTS", "-1", "memcached.retry_attempts"),
        ("CONSOLE_AUTH_MEMCACHED__DEAD_TIMEOUT", "-1", "memcached.dead_timeout"),
        ("CONSOLE_AUTH_MEMCACHED__EXPIRED_RETENTION", "0", "memcached.expired_retention"),
        ("CONSOLE_AUTH_REQUIRE_INSTANCE_UUID", "perhaps", "require_instance_uuid"),
        ("CONSOLE_AUTH_DATABASE__URL", "not a url", "database.url"),
        ("CONSOLE_AUTH_DATABASE__AUTO_MIGRATE", "sometimes", "database.auto_migrate"),
    ],
)
def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidRequest, match="in the environment") as caught:
        load_settings()

    assert named in str(caught.value)
    assert variable in str(caught.value)


def test_memcached_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memcached")
    monkeypatch.setenv("CONSOLE_AUTH_FALLBACK", "database")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__SERVERS", "cache-1:11311, cache-2,[2001:db8::5]:1")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__KEY_PREFIX", "cell1.console")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__DEAD_TIMEOUT", "0")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__EXPIRED_RETENTION", "60")

    settings = load_settings()

    assert settings.console_tokens_backend == "memcached"
    assert settings.fallback == "database"
    assert settings.memcached.servers == ("cache-1:11311", "cache-2:11211", "[2001:db8::5]:1")
    assert settings.memcached.key_prefix == "cell1.console"
    assert settings.memcached.dead_timeout == 0
    assert settings.memcached.expired_retention == 60


def test_memcached_settings_from_a_toml_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'console_tokens_backend = "database"\nfallback = "memcached"\n'
        '[memcached]\nservers = ["10.0.0.7:11211", "::1"]\nretry_attempts = 3\n',
    )

    settings = load_settings(path)

    assert settings.fallback == "memcached"
    assert settings.memcached.servers == ("10.0.0.7:11211", "[::1]:11211")
    assert settings.memcached.retry_attempts == 3


def test_the_longest_ttl_is_thirty_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_TOKEN_TTL", "2592000")

    assert load_settings().token_ttl == 2_592_000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONSOLE_AUTH_TOKEN_TTL", "2592001"),
        ("CONSOLE_AUTH_TOKEN_TTL", "0"),
        ("CONSOLE_AUTH_MEMCACHED__EXPIRED_RETENTION", "2592001"),
        ("CONSOLE_AUTH_MEMCACHED__SERVERS", "cache-1:0"),
        ("CONSOLE_AUTH_MEMCACHED__SERVERS", "cache-1:65536"),
        ("CONSOLE_AUTH_PROXY__PROXY_ID", ""),
        ("CONSOLE_AUTH_PROXY__PROXY_ID", "p" * 256),
        ("CONSOLE_AUTH_PROXY__PROXY_ID", "proxy\tone"),
    ],
)
def test_a_value_past_a_domain_bound_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidRequest, match="in the environment") as caught:
        load_settings()

    assert variable in str(caught.value)


def test_the_domain_bounds_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__SERVERS", "cache-1:1,cache-2:65535")
    monkeypatch.setenv("CONSOLE_AUTH_MEMCACHED__EXPIRED_RETENTION", "2592000")
    monkeypatch.setenv("CONSOLE_AUTH_PROXY__PROXY_ID", "p" * 255)

    settings = load_settings()

    assert settings.memcached.servers == ("cache-1:1", "cache-2:65535")
    assert settings.memcached.expired_retention == 2_592_000
    assert settings.proxy.proxy_id == "p" * 255


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 1\n", "colour"),
        ("[database]\npool_size = 5\n", "database.pool_size"),
        ('token_ttl = "soon"\n', "token_ttl"),
        ('console_tokens_backend = "redis"\n', "console_tokens_backend"),
        ("[memcached]\nservers = []\n", "memcached.servers"),
        ("[memcached]\nweight = 2\n", "memcached.weight"),
        ('console_tokens_backend = "memcached"\nfallback = "memcached"\n', "fallback"),
    ],
)
def test_an_unknown_key_or_bad_value_in_the_file_is_named(
    tmp_path: Path, text: str, named: str
) -> None:
    path = write_toml(tmp_path, text)

    with pytest.raises(InvalidRequest, match=f"in {path}") as caught:
        load_settings(path)

    assert named in str(caught.value)


def test_a_missing_or_malformed_file_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot be read"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        load_settings(write_toml(tmp_path, "token_ttl = = 3\n"))


def test_a_database_password_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = f"postgresql://console:{SECRET}@db.example:notaport/console"
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", bad)
    with pytest.raises(InvalidRequest) as from_env:
        load_settings()
    monkeypatch.delenv("CONSOLE_AUTH_DATABASE__URL")
    with pytest.raises(InvalidRequest) as from_file:
        load_settings(write_toml(tmp_path, f'[database]\nurl = "{bad}"\n'))

    good = f"postgresql://console:{SECRET}@db.example/console"
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", good)
    settings = load_settings()

    for text in (str(from_env.value), str(from_file.value), repr(settings), str(settings)):
        assert SECRET not in text
    assert settings.database.url == good  # masked only where it is shown


def test_purge_settings_at_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_PURGE_BATCH_SIZE", str(MAX_PURGE_BATCH_SIZE))
    monkeypatch.setenv("CONSOLE_AUTH_PURGE_GRACE", "0")

    settings = load_settings()

    assert (settings.purge_batch_size, settings.purge_grace) == (MAX_PURGE_BATCH_SIZE, 0)


def test_the_default_store_is_under_the_users_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_database_url() == (
        f"sqlite:///{tmp_path}/home/.local/state/console-auth/console-auth.sqlite3"
    )
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")  # as the XDG rule says
    assert load_settings().database.url == default_database_url()
    assert "/home/.local/state/" in default_database_url()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_settings().database.url == (
        f"sqlite:///{tmp_path}/state/console-auth/console-auth.sqlite3"
    )
    assert not (tmp_path / "state").exists()  # settings create nothing


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("CONSOLE_AUTH_DATABASE_URL", "CONSOLE_AUTH_DATABASE__URL"),
        ("CONSOLE_AUTH_TOKEN_TL", "CONSOLE_AUTH_TOKEN_TTL"),
        ("console_auth_cell_map", "CONSOLE_AUTH_CELL_MAP_FILE"),
        ("CONSOLE_AUTH_TOKEN_TTL__X", "CONSOLE_AUTH_TOKEN_TTL"),
        ("CONSOLE_AUTH_XYZZY", None),
    ],
)
def test_an_unknown_variable_is_warned_about_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    hint: str | None,
) -> None:
    monkeypatch.setenv(variable, SECRET)

    with caplog.at_level(logging.WARNING, logger="console_auth.adapters.settings"):
        load_settings()

    [record] = caplog.records
    assert variable in record.getMessage()
    assert SECRET not in record.getMessage()
    if hint is not None:
        assert f"did you mean {hint}?" in record.getMessage()


def test_known_variables_raise_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    map_file = tmp_path / "cells.toml"
    map_file.write_text("")
    for name, value in {
        "CONSOLE_AUTH_TOKEN_TTL": "30",
        "CONSOLE_AUTH_DATABASE__AUTO_MIGRATE": "false",
        "CONSOLE_AUTH_MEMCACHED": '{"timeout": 2}',  # a nested model whole, as JSON
        "CONSOLE_AUTH_CELLS__CELL1__DATABASE__URL": "sqlite://",
        "CONSOLE_AUTH_CELL_MAP_FILE": str(map_file),
        "console_auth_purge_grace": "10",  # names are case-insensitive
        "CONSOLE_AUTH_TEST_POSTGRESQL_URL": "postgresql://x",  # the test suite's own
        CONFIG_FILE_ENV: "",
    }.items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.WARNING, logger="console_auth.adapters.settings"):
        settings = load_settings()

    assert caplog.records == []
    assert settings.purge_grace == 10
    assert list(settings.cells) == ["cell1"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"token_ttl = 3\n\xff\n", "not UTF-8"),
        (b"token_ttl = " + b"9" * 5000 + b"\n", "too long"),
        (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
        (b"x = " + b"{a=" * 100_000 + b"1" + b"}" * 100_000 + b"\n", "nested too deeply"),
    ],
)
def test_an_unreadable_file_is_an_invalid_request(
    tmp_path: Path, content: bytes, problem: str | None
) -> None:
    path = tmp_path / "console-auth.toml"
    path.write_bytes(content)

    with pytest.raises(InvalidRequest, match=str(path)) as caught:
        load_settings(path)

    if problem is not None:
        assert problem in str(caught.value)


def test_a_fifo_or_directory_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="not a regular file"):
        load_settings(fifo)
    with pytest.raises(InvalidRequest, match=r"not a regular file|cannot be read"):
        load_settings(tmp_path)
    assert time.monotonic() - started < 5


def test_a_file_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "# " + "x" * MAX_CONFIG_FILE_BYTES + "\n")

    with pytest.raises(InvalidRequest, match="larger than"):
        load_settings(path)
