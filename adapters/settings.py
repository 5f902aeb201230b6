"""Deployment settings: environment variables over an optional TOML file.

A setting's name is its environment suffix (``token_ttl`` reads
``CONSOLE_AUTH_TOKEN_TTL``; nesting uses ``__``), so the table in the README,
the TOML keys and the variables are one vocabulary. ``load_settings`` is the
way in: it turns every mistake into ``InvalidRequest`` naming the setting,
never its value, because a database URL may carry a password.
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
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
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
from console_auth.domain.hosts import DEFAULT_MEMCACHED_PORT, check_host, split_address
from console_auth.domain.types import ProxyId, TtlSeconds
from console_auth.domain.urls import check_base_url

logger = logging.getLogger(__name__)

ENV_PREFIX: Final = "CONSOLE_AUTH_"
CONFIG_FILE_ENV: Final = f"{ENV_PREFIX}CONFIG_FILE"
TEST_ENV_PREFIX: Final = f"{ENV_PREFIX}TEST_"
"""The test suite's own variables (server URLs), never settings."""
MAX_CONFIG_FILE_BYTES: Final = 1 << 20
DEFAULT_DATABASE_FILE: Final = "console-auth.sqlite3"


def default_database_path() -> Path:
    """Where the default SQLite file lives: ``$XDG_STATE_HOME/console-auth/``,
    else ``~/.local/state/console-auth/`` (the XDG base directory rule, for
    root too), so every process of a user finds the same store whatever its
    working directory. The container creates the ``console-auth`` directory
    (mode 0700) when it first opens the default store."""
    state = os.environ.get("XDG_STATE_HOME", "")
    try:
        base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    except RuntimeError:  # no home directory at all: the working directory, absolute
        return Path(DEFAULT_DATABASE_FILE).absolute()
    return base / "console-auth" / DEFAULT_DATABASE_FILE


def default_database_url() -> str:
    return f"sqlite:///{default_database_path()}"


class DatabaseSettings(BaseModel):
    """Where the ``database`` backend keeps tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default_factory=default_database_url, repr=False)
    auto_migrate: bool | None = None
    """``None``: create the schema in a fresh SQLite file (one that has no
    tables), and otherwise leave the schema to ``console-auth db upgrade``,
    run by an operator once per release rather than by every process racing
    at start-up. ``True``: upgrade on first use. ``False``: never."""

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
"""Lower case: environment variable names are case-insensitive, so a cell
named in ``CONSOLE_AUTH_CELLS__<NAME>__DATABASE__URL`` arrives in lower case."""


class CellSettings(BaseModel):
    """One cell of a deployment split into cells: its own token database."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)


class MemcachedSettings(BaseModel):
    """Where the ``memcached`` backend keeps tokens, and how it treats failures.

    Several servers are shards (rendezvous hashing, as pymemcache's
    ``HashClient`` places keys); a server that fails makes only its own
    shard's tokens fail, with ``BackendUnavailable``, never re-hashed and
    never a silent miss.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1:11211",)
    """``host:port`` each; from the environment, comma-separated."""
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
    """Seconds an expired token stays readable and purgeable before memcached
    drops it by itself."""

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("servers")
    @classmethod
    def _addresses(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        if not servers:
            raise ValueError("must name at least one server")
        names = [_server_name(server) for server in servers]
        if len(set(names)) != len(names):
            raise ValueError("must not name a server twice")
        return tuple(names)


def _comma_list(value: object) -> object:
    """A list from the environment arrives as one comma-separated string."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _server_name(text: str) -> str:
    """``host:port`` with the default port filled in, or a ``ValueError``;
    parsed here rather than by the adapter so that checking settings never
    needs the ``memcached`` extra installed."""
    host, port = split_address(text, DEFAULT_MEMCACHED_PORT)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_proxy_id() -> str:
    """``host:pid``: tells an operator which proxy process holds a serial port."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ProxySettings(BaseModel):
    """The console proxy (``console-auth proxy``): who may connect, and for how long.

    Times are seconds. Lists come from the environment comma-separated.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Origins (``https://console.example.com``) allowed besides the request's
    own host, as Nova's ``console_allowed_origins``; checked when the proxy starts."""
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Networks (``10.0.0.0/8``, ``127.0.0.1``) whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed; from anyone else they are ignored."""
    console_types: Annotated[tuple[ConsoleType, ...], NoDecode] = tuple(ConsoleType)
    """Console kinds this proxy serves; tokens of other kinds are refused (403)."""
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds to reach the console: TCP, the CONNECT handshake for an
    ``internal_access_path`` and TLS for ``use_tls``, together (504 past it)."""
    tls_ca_file: FilePath | None = None
    """CA certificates (PEM) the certificates of ``use_tls`` consoles must
    chain to; none: the system's."""
    tls_cert_file: FilePath | None = None
    """A client certificate (PEM) the proxy shows consoles that ask for one."""
    tls_key_file: FilePath | None = None
    """Its private key, unencrypted (PEM); none: it is in ``tls_cert_file``."""
    tls_verify_hostname: bool = True
    """A console's certificate must name its ``host``. Off is weaker: any
    certificate the CAs signed, for any host, is accepted."""
    session_max: float | None = Field(default=None, gt=0)
    """Seconds a live session may last; ``None``: unlimited. Independent of
    the token TTL, which is only the window to connect."""
    idle_timeout: float | None = Field(default=None, gt=0)
    """Seconds without a byte either way before a session is closed; ``None``: never."""
    session_recheck: float = Field(default=5.0, ge=0.05, le=3600)
    """Seconds between asks of the store whether a live session's instance
    was revoked (``revoke_instance``): the bound on how long it runs on."""
    drain_timeout: float = Field(default=10.0, ge=0, le=3600)
    """Seconds live sessions get to end by themselves after SIGTERM before
    they are closed."""
    ping_interval: float | None = Field(default=30.0, gt=0, le=3600)
    """Seconds between WebSocket pings, so a vanished browser is noticed."""
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest WebSocket message accepted from a client."""
    store_threads: int = Field(default=8, ge=1, le=256)
    """Threads that run the blocking store calls (validate, serial leases)."""
    proxy_id: ProxyId = Field(default_factory=default_proxy_id)
    """Names this process in serial-port leases (``console-auth ports``)."""
    rfb_refusals: bool = False
    """Refuse a WebSocket request inside RFB, after the upgrade, so noVNC shows
    why (it cannot see an HTTP status); needs ``console_types`` = novnc only."""

    @field_validator("allowed_origins", "trusted_proxies", "console_types", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

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


class LibvirtSettings(BaseModel):
    """The ``libvirt`` console driver: which libvirt to ask, and the address
    the console proxy dials for each device (Nova's
    ``server_proxyclient_address`` per console kind): the compute host as
    the proxy reaches it, not QEMU's ``listen`` address in the domain XML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


class MetricsSettings(BaseModel):
    """Prometheus metrics (the ``metrics`` extra, prometheus-client)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    """``None``: on in ``console-auth proxy`` when prometheus-client is
    installed, off in a service the library builds (``create_service``)."""
    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9._~/-]{0,200}$")
    """Where ``console-auth proxy`` answers scrapes, on its console listener."""
    allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = (
        IPv4Network("127.0.0.0/8"),
        IPv6Network("::1/128"),
    )
    """Clients that may scrape ``path`` (the client as the proxy resolves it,
    through ``proxy.trusted_proxies``); anyone else gets a 404 there, as if
    it did not exist. Empty: nobody (metrics are then only in-process)."""

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)


class AuditSettings(BaseModel):
    """Audit records on the logger ``console_auth.audit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    """One record per issue, validate, refusal, revoke, purge, port claim and
    proxy session; routing them is the logging configuration's job."""


class TracingSettings(BaseModel):
    """OpenTelemetry spans (the ``tracing`` extra, opentelemetry-api)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    """One span per use case, through the process's tracer provider (none
    set up: the API's no-op)."""


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
    """Refuse stored connections written before tamper evidence (no MAC);
    set once every token issued before the upgrade has expired."""
    purge_batch_size: int = Field(default=1000, ge=1, le=MAX_PURGE_BATCH_SIZE)
    purge_grace: int = Field(default=int(DEFAULT_PURGE_GRACE.total_seconds()), ge=0, le=86_400)
    """Seconds after expiry before purge deletes a token: validity is decided
    at ``validate``, so a purger whose clock runs ahead deletes no live token."""
    serial_lease_ttl: int = Field(default=60, ge=1, le=86_400)
    """Seconds a proxy's serial-port lease lasts without a heartbeat: a dead
    proxy's port is free again after this long."""
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    memcached: MemcachedSettings = Field(default_factory=MemcachedSettings)
    fallback: Literal["none", "database", "memcached"] = "none"
    """During a backend switch, the store validation asks when the primary
    (``console_tokens_backend``) does not know a token; authorize writes only
    to the primary, revoke and purge apply to both."""
    cells: dict[Annotated[str, Field(pattern=CELL_NAME_PATTERN)], CellSettings] = Field(
        default_factory=dict
    )
    """Empty: one database, ``database``. Otherwise the ``database`` backend
    is split over these cells, each with its own database; ``database`` is
    then used neither for tokens nor for serial-port leases."""
    cell_map_file: Path | None = Field(default=None, validate_default=True)
    """TOML file saying which cell holds each instance and compute host
    (``adapters/cells.py``); required with ``cells``, re-read when it changes."""
    cell_search_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds a token presented without its instance uuid may take to be
    searched for in every cell (``require_instance_uuid = false``)."""
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    console_driver: Literal["none", "libvirt", "static"] = "none"
    """Where ``console-auth console`` (``InstanceConsoleService``) finds an
    instance's console: nowhere, the domain XML of ``libvirt``, or
    ``static_consoles_file``."""
    libvirt: LibvirtSettings = Field(default_factory=LibvirtSettings)
    access_url_bases: dict[ConsoleType, Annotated[str, AfterValidator(check_base_url)]] = Field(
        default_factory=dict
    )
    """The access URL base of each console kind, for an ``authorize_console``
    given none (Nova's ``novncproxy_base_url``, ``html5proxy_base_url``, ...)."""
    static_consoles_file: Path | None = Field(default=None, validate_default=True)
    """TOML file of console endpoints by instance and kind
    (``adapters/static_consoles.py``); required by the ``static`` driver,
    re-read when it changes."""

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
    path = _config_path(config_file)
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


def _config_path(config_file: str | Path | None) -> Path | None:
    if config_file is None:
        config_file = os.environ.get(CONFIG_FILE_ENV) or None
    return None if config_file is None else Path(config_file)


def _sourced(file_data: Mapping[str, Any], *, with_env: bool) -> type[Settings]:
    """``Settings`` reading the file's data, under the environment if asked.

    pydantic-settings chooses sources per class (``model_validate`` reads the
    environment too), so the data rides on a throwaway subclass rather than
    on global state; ``load_settings`` hands back a plain ``Settings``.
    """

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
    for name in environ:
        upper = name.upper()
        if (
            upper.startswith(ENV_PREFIX)
            and not upper.startswith(TEST_ENV_PREFIX)
            and upper != CONFIG_FILE_ENV
            and not _is_setting(upper.removeprefix(ENV_PREFIX).split("__"))
        ):
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("ignoring %s: no setting has that name%s", name, hint)


def _is_setting(parts: list[str]) -> bool:
    """Whether ``parts`` (``DATABASE``, ``URL``) name a setting; below a
    nested model or dict, pydantic-settings refuses an unknown key itself."""
    field = Settings.model_fields.get(parts[0].lower())
    if field is None:
        return False
    annotation = field.annotation
    nested = typing.get_origin(annotation) is dict or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )
    return nested or len(parts) == 1


def _variable_names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every leaf variable, ``CELLS__<NAME>__...`` left out (its name is free)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _variable_names(annotation, f"{prefix}{name.upper()}__")
        elif typing.get_origin(annotation) is not dict:
            yield f"{prefix}{name.upper()}"


def _invalid(exc: ValidationError, where: str) -> InvalidRequest:
    problems = "; ".join(
        f"{_describe(error['loc'])}: "
        + ("unknown setting" if error["type"] == "extra_forbidden" else _message(error["msg"]))
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )
    return InvalidRequest(f"invalid configuration{where}: {problems}")


def _describe(loc: tuple[int | str, ...]) -> str:
    """``database.url (CONSOLE_AUTH_DATABASE__URL)``: both names an operator may have used."""
    parts = [str(part) for part in loc]
    if not parts:
        return "settings"
    return f"{'.'.join(parts)} ({ENV_PREFIX}{'__'.join(parts).upper()})"


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")
