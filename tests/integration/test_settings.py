"""Settings come from the environment over an optional TOML file, and every
mistake is an ``InvalidRequest`` that names the setting but not its value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from console_auth.adapters.settings import (
    CONFIG_FILE_ENV,
    DatabaseSettings,
    MemcachedSettings,
    Settings,
    load_settings,
    resolve_auto_migrate,
)
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


def test_defaults_run_a_single_host_on_sqlite() -> None:
    settings = load_settings()

    assert settings == Settings(
        console_tokens_backend="database",
        token_ttl=600,
        require_instance_uuid=False,
        purge_batch_size=1000,
        database=DatabaseSettings(url="sqlite:///console-auth.sqlite3", auto_migrate=None),
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


@pytest.mark.parametrize(
    ("url", "auto_migrate", "expected"),
    [
        ("sqlite:///console-auth.sqlite3", None, True),
        ("sqlite+pysqlite:///:memory:", None, True),
        ("postgresql+psycopg://db/console", None, False),
        ("mysql+pymysql://db/console", None, False),
        ("sqlite:///console-auth.sqlite3", False, False),
        ("postgresql+psycopg://db/console", True, True),
    ],
)
def test_only_sqlite_migrates_itself_unless_told(
    url: str, auto_migrate: bool | None, expected: bool
) -> None:
    assert resolve_auto_migrate(url, auto_migrate) is expected
