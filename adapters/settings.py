"""Deployment settings: ``CONSOLE_AUTH_*`` variables (nesting ``__``) over an optional TOML file.

``load_settings`` names a bad setting, never its value: a database URL may carry a password.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import typing
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from console_auth.adapters.toml_files import read_toml
from console_auth.application import DEFAULT_PURGE_GRACE, MAX_PURGE_BATCH_SIZE
from console_auth.domain import ConsoleType, InvalidRequest
from console_auth.domain.hosts import (
    DEFAULT_MEMCACHED_PORT,
    check_host,
    join_address,
    split_address,
)
from console_auth.domain.types import ProxyId, TtlSeconds
from console_auth.domain.urls import check_base_url

logger = logging.getLogger(__name__)

ENV_PREFIX: Final = "CONSOLE_AUTH_"
CONFIG_FILE_ENV: Final = f"{ENV_PREFIX}CONFIG_FILE"
TEST_ENV_PREFIX: Final = f"{ENV_PREFIX}TEST_"
"""The test suite's own variables (server URLs), never settings."""
MAX_CONFIG_FILE_BYTES: Final = 1 << 20
DEFAULT_DATABASE_FILE: Final = "console-auth.sqlite3"

_T = TypeVar("_T")


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


CommaSeparated = Annotated[tuple[_T, ...], NoDecode, BeforeValidator(_comma_list)]
"""A list, which the environment gives as one comma-separated string."""


class _Section(BaseModel):
    """A table of settings: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def default_database_path() -> Path:
    """Under the XDG state directory (for root too), so every process of a user finds one store."""
    state = os.environ.get("XDG_STATE_HOME", "")
    try:
        base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    except RuntimeError:  # no home directory at all: the working directory, absolute
        return Path(DEFAULT_DATABASE_FILE).absolute()
    return base / "console-auth" / DEFAULT_DATABASE_FILE


def default_database_url() -> str:
    return f"sqlite:///{default_database_path()}"


class DatabaseSettings(_Section):
    """Where the ``database`` backend keeps tokens."""

    url: str = Field(default_factory=default_database_url, repr=False)
    auto_migrate: bool | None = None
    """``None``: a fresh SQLite file's only; else ``console-auth db upgrade``, once per release."""

    @field_validator("url")
    @classmethod
    def _parseable(cls, url: str) -> str:
        try:
            make_url(url)
        except (ArgumentError, ValueError):
            # SQLAlchemy's message quotes the URL, password and all.
            raise ValueError(
                "must be a SQLAlchemy URL such as dialect+driver://user:password@host/db"
            ) from None
        return url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", safe_url(self.url)
        yield from super().__repr_args__()


CELL_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""Lower case: environment variable names are case-insensitive, so they arrive lower-cased."""


class CellSettings(_Section):
    """One cell of a deployment split into cells: its own token database."""

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)


class MemcachedSettings(_Section):
    """Where the ``memcached`` backend keeps tokens; several servers are shards."""

    servers: CommaSeparated[str] = ("127.0.0.1:11211",)
    """``host:port`` each."""
    key_prefix: str = Field(default="console_auth", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    """Namespace of every key, so deployments (or cells) can share servers."""
    connect_timeout: float = Field(default=1.0, gt=0, le=60)
    timeout: float = Field(default=1.0, gt=0, le=60)
    """Seconds a command may wait for its reply."""
    max_idle: int = Field(default=16, ge=0, le=1024)
    """Idle connections kept per server (more open under load, then close)."""
    retry_attempts: int = Field(default=1, ge=0, le=10)
    """Retries of a command on a fresh connection after a connection error."""
    retry_timeout: float = Field(default=0.05, ge=0, le=10)
    """Seconds before such a retry."""
    dead_timeout: float = Field(default=2.0, ge=0, le=300)
    """Seconds a failed server's shard fails fast before it is tried again."""
    expired_retention: TtlSeconds = 3600
    """Seconds an expired token stays readable and purgeable before memcached drops it."""

    @field_validator("servers")
    @classmethod
    def _addresses(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        if not servers:
            raise ValueError("must name at least one server")
        # ``host:port``, default port filled in; here, so settings need no ``memcached`` extra
        names = [join_address(*split_address(text, DEFAULT_MEMCACHED_PORT)) for text in servers]
        if len(set(names)) != len(names):
            raise ValueError("must not name a server twice")
        return tuple(names)


class ProxySettings(_Section):
    """The console proxy (``console-auth proxy``): who may connect, and for how long."""

    allowed_origins: CommaSeparated[str] = ()
    """As Nova's ``console_allowed_origins``; checked when the proxy starts."""
    trusted_proxies: CommaSeparated[IPv4Network | IPv6Network] = ()
    """Networks whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed."""
    console_types: CommaSeparated[ConsoleType] = tuple(ConsoleType)
    """Console kinds this proxy serves; tokens of other kinds are refused (403)."""
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds to reach the console: TCP, CONNECT and TLS together (504 past it)."""
    tls_ca_file: FilePath | None = None
    """CA certificates (PEM) of ``use_tls`` consoles; none: the system's."""
    tls_cert_file: FilePath | None = None
    """A client certificate (PEM) the proxy shows consoles that ask for one."""
    tls_key_file: FilePath | None = None
    """Its private key, unencrypted (PEM); none: it is in ``tls_cert_file``."""
    tls_verify_hostname: bool = True
    """A console's certificate must name its ``host``."""
    session_max: float | None = Field(default=None, gt=0)
    """Seconds a live session may last; the token TTL is only the window to connect."""
    idle_timeout: float | None = Field(default=None, gt=0)
    """Seconds without a byte either way before a session is closed; ``None``: never."""
    session_recheck: float = Field(default=5.0, ge=0.05, le=3600)
    """Seconds a live session of a revoked instance may run on."""
    drain_timeout: float = Field(default=10.0, ge=0, le=3600)
    """Seconds live sessions get to end by themselves after SIGTERM."""
    ping_interval: float | None = Field(default=30.0, gt=0, le=3600)
    """Seconds between WebSocket pings, so a vanished browser is noticed."""
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest WebSocket message accepted from a client."""
    store_threads: int = Field(default=8, ge=1, le=256)
    """Threads that run the blocking store calls (validate, serial leases)."""
    proxy_id: ProxyId = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """Names this process in serial-port leases (``console-auth ports``): ``host:pid``."""
    rfb_refusals: bool = False
    """Refuse inside RFB, so noVNC shows why (it cannot see an HTTP status)."""

    @field_validator("tls_key_file")
    @classmethod
    def _key_with_cert(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if key is not None and info.data.get("tls_cert_file") is None:
            raise ValueError("needs proxy.tls_cert_file")
        return key

    @field_validator("console_types")
    @classmethod
    def _some_types(cls, types: tuple[ConsoleType, ...]) -> tuple[ConsoleType, ...]:
        if not types:
            raise ValueError("must name at least one console type")
        return tuple(dict.fromkeys(types))


ProxyClientAddress = Annotated[str, AfterValidator(check_host)]


class LibvirtSettings(_Section):
    """The ``libvirt`` console driver: which libvirt, and the address the proxy dials per kind."""

    uri: str = Field(default="qemu:///system", min_length=1, max_length=1024)
    """``test:///default`` is libvirt's in-process test driver."""
    vnc_proxyclient_address: ProxyClientAddress = "127.0.0.1"
    spice_proxyclient_address: ProxyClientAddress = "127.0.0.1"
    """For spice-html5 and spice-direct consoles."""
    serial_proxyclient_address: ProxyClientAddress = "127.0.0.1"

    @field_validator("uri")
    @classmethod
    def _printable(cls, uri: str) -> str:
        if not uri.isprintable() or " " in uri:
            raise ValueError("must be a libvirt URI such as qemu:///system")
        return uri


class MetricsSettings(_Section):
    """Prometheus metrics (the ``metrics`` extra, prometheus-client)."""

    enabled: bool | None = None
    """``None``: on in ``console-auth proxy`` if prometheus-client is installed, else off."""
    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9._~/-]{0,200}$")
    """Where ``console-auth proxy`` answers scrapes, on its console listener."""
    allowed_networks: CommaSeparated[IPv4Network | IPv6Network] = (
        IPv4Network("127.0.0.0/8"),
        IPv6Network("::1/128"),
    )
    """Clients that may scrape ``path``; anyone else gets a 404, as if it did not exist."""


class AuditSettings(_Section):
    """Audit records on the logger ``console_auth.audit``."""

    enabled: bool = False
    """One record per use case; routing them is the logging configuration's job."""


class TracingSettings(_Section):
    """OpenTelemetry spans (the ``tracing`` extra, opentelemetry-api)."""

    enabled: bool = False
    """One span per use case, through the process's tracer provider (none: a no-op)."""


class Settings(BaseSettings):
    """Everything a deployment chooses; defaults run a single host on SQLite."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    console_tokens_backend: Literal["database", "memcached", "memory"] = "database"
    token_ttl: TtlSeconds = 600
    """Seconds an issued token stays valid unless ``authorize`` is given a ttl."""
    require_instance_uuid: bool = False
    require_token_mac: bool = False
    """Refuse stored connections without a MAC (written before tamper evidence)."""
    purge_batch_size: int = Field(default=1000, ge=1, le=MAX_PURGE_BATCH_SIZE)
    purge_grace: int = Field(default=int(DEFAULT_PURGE_GRACE.total_seconds()), ge=0, le=86_400)
    """So a purger whose clock runs ahead deletes no live token."""
    serial_lease_ttl: int = Field(default=60, ge=1, le=86_400)
    """Seconds until a dead proxy's serial port is free again."""
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    memcached: MemcachedSettings = Field(default_factory=MemcachedSettings)
    fallback: Literal["none", "database", "memcached"] = "none"
    """While switching backends: the old store, asked when the primary does not know a token."""
    cells: dict[Annotated[str, Field(pattern=CELL_NAME_PATTERN)], CellSettings] = Field(
        default_factory=dict
    )
    """With cells, ``database`` is used neither for tokens nor for serial-port leases."""
    cell_map_file: Path | None = Field(default=None, validate_default=True)
    """Which cell holds each instance and compute host (``adapters/cells.py``)."""
    cell_search_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds to search every cell for a token presented without its instance uuid."""
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    console_driver: Literal["none", "libvirt", "static"] = "none"
    """Where ``InstanceConsoleService`` finds an instance's console."""
    libvirt: LibvirtSettings = Field(default_factory=LibvirtSettings)
    access_url_bases: dict[ConsoleType, Annotated[str, AfterValidator(check_base_url)]] = Field(
        default_factory=dict
    )
    """For an ``authorize_console`` given none (Nova's ``novncproxy_base_url``, ...)."""
    static_consoles_file: Path | None = Field(default=None, validate_default=True)
    """Console endpoints by instance and kind (``adapters/static_consoles.py``)."""

    @field_validator("static_consoles_file")
    @classmethod
    def _file_with_static(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None and info.data.get("console_driver") == "static":
            raise ValueError('is required when console_driver is "static"')
        return path

    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("fallback")
    @classmethod
    def _fallback_differs(cls, fallback: str, info: ValidationInfo) -> str:
        if fallback == info.data.get("console_tokens_backend"):
            raise ValueError("must name another backend than console_tokens_backend")
        return fallback

    @field_validator("cell_map_file")
    @classmethod
    def _map_with_cells(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None and info.data.get("cells"):
            raise ValueError("is required when cells are configured")
        return path


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Settings from the environment over ``config_file`` (or the file named
    by ``CONSOLE_AUTH_CONFIG_FILE``), checked whole before anything uses them."""
    if config_file is None:
        config_file = os.environ.get(CONFIG_FILE_ENV) or None
    path = None if config_file is None else Path(config_file)
    _warn_unknown_variables(os.environ)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path, "config file", MAX_CONFIG_FILE_BYTES)[1]
        try:  # alone first, so unknown keys and bad values are blamed on the file
            _sourced(data, with_env=False)()
        except ValidationError as exc:
            raise _invalid(exc, f" in {path}") from None
    try:
        layered = _sourced(data, with_env=True)()
    except ValidationError as exc:
        raise _invalid(exc, " in the environment") from None
    except SettingsError as exc:  # e.g. a nested variable holding malformed JSON
        raise InvalidRequest(f"invalid configuration in the environment: {exc}") from None
    return Settings.model_construct(layered.model_fields_set, **dict(layered))


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and ``repr``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def _sourced(file_data: Mapping[str, Any], *, with_env: bool) -> type[Settings]:
    """``Settings`` reading the file's data, under the environment if asked: pydantic-settings
    picks sources per class, so the data rides on a throwaway subclass, not global state."""

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            file = InitSettingsSource(settings_cls, dict(file_data))
            return (init_settings, env_settings, file) if with_env else (init_settings, file)

    return _Sourced


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """A mistyped variable (``CONSOLE_AUTH_DATABASE_URL``, one underscore) is
    otherwise ignored in silence; its value is never logged."""
    known = sorted(_variable_names(Settings, ENV_PREFIX))
    tables = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}.difference(known)
    named = {CONFIG_FILE_ENV, *known, *tables}
    # below a table (nested model or dict), pydantic-settings refuses an unknown key itself
    below = (TEST_ENV_PREFIX, *(f"{table}__" for table in tables))
    for name in environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in named and not upper.startswith(below):
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("ignoring %s: no setting has that name%s", name, hint)


def _variable_names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every leaf variable, ``CELLS__<NAME>__...`` left out (its name is free)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _variable_names(annotation, f"{prefix}{name.upper()}__")
        elif typing.get_origin(annotation) is not dict:
            yield f"{prefix}{name.upper()}"


def _invalid(exc: ValidationError, where: str) -> InvalidRequest:
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        unknown = error["type"] == "extra_forbidden"
        message = "unknown setting" if unknown else error["msg"].removeprefix("Value error, ")
        problems.append(f"{_describe(error['loc'])}: {message}")
    return InvalidRequest(f"invalid configuration{where}: {'; '.join(problems)}")


def _describe(loc: tuple[int | str, ...]) -> str:
    """``database.url (CONSOLE_AUTH_DATABASE__URL)``: both names an operator may have used."""
    parts = [str(part) for part in loc]
    return f"{'.'.join(parts)} ({ENV_PREFIX}{'__'.join(parts).upper()})" if parts else "settings"
