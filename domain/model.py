"""``ConsoleConnection``: what a token grants, as stored and as sent between
processes.

Frozen, validated on construction, and free of any storage concern: adapters
convert rows and cache values to and from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import versions
from .errors import InvalidRequest
from .hosts import check_host
from .tokens import is_token_hash
from .types import Port
from .urls import build_access_url, check_base_url

MAX_EXTRA_OPTIONS: Final = 16
MAX_OPTION_TEXT: Final = 255
_OPTION_KEY: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_EXTRA_VALUE_PROBLEM: Final = (
    "extra option values must be booleans, 64-bit integers, finite numbers or printable "
    f"text of at most {MAX_OPTION_TEXT} characters"
)


class ConsoleType(StrEnum):
    """Console kinds Nova's drivers hand out today."""

    NOVNC = "novnc"
    SPICE_HTML5 = "spice-html5"
    SPICE_DIRECT = "spice-direct"
    SERIAL = "serial"
    WEBMKS = "webmks"


class SerialMode(StrEnum):
    """Which side of a serial console's TCP socket listens."""

    CONNECT = "connect"
    BIND = "bind"


def _check_text(value: str) -> str:
    if len(value) > MAX_OPTION_TEXT or not value.isprintable():
        raise ValueError(f"must be printable text of at most {MAX_OPTION_TEXT} characters")
    return value


OptionText = Annotated[str, AfterValidator(_check_text)]
ExtraValue = bool | int | float | OptionText


class ConsoleOptions(BaseModel):
    """Driver-specific connection details the proxy needs.

    Known keys are typed; ``extra`` leaves bounded room for a driver's own
    keys without letting a caller store an arbitrary document per token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    internal_access_path: OptionText | None = None
    use_tls: bool = False
    tls_port: Port | None = None
    mode: SerialMode | None = None
    extra: dict[str, ExtraValue] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _bounded_extra(cls, extra: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        if len(extra) > MAX_EXTRA_OPTIONS:
            raise ValueError(f"at most {MAX_EXTRA_OPTIONS} extra options are allowed")
        for key, value in extra.items():
            # the caller's key is never echoed: it may be anything, a token too
            if _OPTION_KEY.fullmatch(key) is None:
                raise ValueError(f"extra option keys must match {_OPTION_KEY.pattern}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("extra option values must be finite numbers")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                raise ValueError("extra option integers must fit in 64 bits")
        return extra


_OPTION_FIELDS: Final = frozenset(ConsoleOptions.model_fields)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:  # what the service and every adapter build: no conversion
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the supported date range in UTC") from None


def parse_host(host: object) -> str:
    """``check_host`` for callers outside a model: ``InvalidRequest``."""
    if not isinstance(host, str):
        raise InvalidRequest("host must be text")
    try:
        return check_host(host)
    except ValueError as exc:  # raised below, so the chain does not hold the input
        problem = str(exc)
    raise InvalidRequest(f"host {problem}")


def parse_utc(value: object, what: str) -> datetime:
    """``value`` as an aware UTC datetime, for callers outside a model:
    ``InvalidRequest`` naming ``what``. A naive time is refused, never read
    as local time."""
    problem = "must be a datetime"
    if isinstance(value, datetime):
        try:
            return _utc(value)
        except ValueError as exc:
            problem = str(exc)
    raise InvalidRequest(f"{what} {problem}")


def parse_instance_uuid(value: object) -> UUID:
    """A ``UUID``, or text in its canonical 36-character form (any case):
    what Nova puts in URLs. Other spellings are refused, not guessed."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and len(value) == 36:
        try:
            parsed = UUID(value)
        except ValueError:
            pass
        else:
            if str(parsed) == value.lower():
                return parsed
    raise InvalidRequest("instance uuid must be a UUID in its 36-character form")


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ConsoleConnection(BaseModel):
    """Everything a proxy needs to connect a client whose token checked out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_uuid: UUID
    host: Annotated[str, AfterValidator(check_host)]
    port: Port
    console_type: ConsoleType
    options: ConsoleOptions = Field(default_factory=ConsoleOptions)
    access_url_base: str | None = None
    token_hash: str
    expires_at: UtcDatetime
    issued_at: UtcDatetime | None = None
    mac: str | None = None
    """HMAC-SHA256 (hex) of the other fields, keyed by the clean token
    (``integrity.connection_mac``); ``None`` in rows written before 1.2."""

    @field_validator("token_hash", "mac")
    @classmethod
    def _hash_shape(cls, value: str | None) -> str | None:
        if value is not None and not is_token_hash(value):
            raise ValueError("must be 64 lowercase hex characters (a SHA-256)")
        return value

    @field_validator("access_url_base")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_base_url(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _issued_before_expiry(self) -> Self:
        if self.issued_at is not None and self.issued_at > self.expires_at:
            raise ValueError("issued_at must not be after expires_at")
        return self

    def is_expired(self, now: datetime) -> bool:
        """Valid iff ``now < expires_at``: at the expiry instant it is gone."""
        return now >= self.expires_at

    def is_revoked_by(self, revoked_at: datetime) -> bool:
        """Whether revoking its instance at ``revoked_at`` ends what this
        connection opened: it was issued no later (a connection stored
        before 1.1, with no issue time, always is)."""
        return self.issued_at is None or self.issued_at <= revoked_at

    @classmethod
    def build(cls, **fields: Any) -> ConsoleConnection:
        """Construct, turning validation errors into ``InvalidRequest``."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:  # raised below: the chain must not hold the input
            error = invalid_request(exc)
        raise error

    def to_primitive(self, target_version: versions.Version | str | None = None) -> dict[str, Any]:
        """A JSON-safe envelope another process, maybe of an older release, can read."""
        target = (
            versions.CURRENT if target_version is None else versions.parse_version(target_version)
        )
        versions.check_writable(target)
        data = self.model_dump(mode="json")
        versions.backport(data, target)
        return {
            versions.NAME_KEY: versions.NAME,
            versions.VERSION_KEY: f"{target[0]}.{target[1]}",
            versions.DATA_KEY: data,
        }

    @classmethod
    def from_primitive(cls, primitive: Mapping[str, Any]) -> ConsoleConnection:
        """Read any version's envelope: older ones get defaults for later
        fields, newer minor ones lose the fields this release does not know."""
        if not isinstance(primitive, Mapping):
            raise InvalidRequest("primitive must be a mapping")
        if primitive.get(versions.NAME_KEY) != versions.NAME:
            raise InvalidRequest(f"primitive is not a {versions.NAME}")
        version = versions.parse_version(primitive.get(versions.VERSION_KEY))
        versions.check_readable(version)
        data = primitive.get(versions.DATA_KEY)
        if not isinstance(data, Mapping):
            raise InvalidRequest("primitive data must be a mapping")
        fields = {key: value for key, value in data.items() if key in cls.model_fields}
        options = fields.get("options")
        if isinstance(options, Mapping):  # a newer minor may add option keys too
            fields["options"] = {k: v for k, v in options.items() if k in _OPTION_FIELDS}
        return cls.build(**fields)


def invalid_request(exc: ValidationError, what: str = "console connection") -> InvalidRequest:
    """Name each bad field of ``what`` without echoing its value, or a
    caller's option key (either may be hostile, a token even)."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if "extra" in loc[:-1]:  # below it come the caller's keys
            loc = loc[: loc.index("extra") + 1]
            problems.setdefault(".".join(loc), _EXTRA_VALUE_PROBLEM)
        else:
            problems.setdefault(".".join(loc) or "input", error["msg"])
    listed = "; ".join(f"{where}: {problem}" for where, problem in problems.items())
    return InvalidRequest(f"invalid {what}: {listed}")


@dataclass(frozen=True, slots=True)
class IssuedConsole:
    """What ``authorize`` hands back: the clean token, this once.

    ``token`` is a ``SecretStr`` so that printing or logging the object shows
    ``**********``; ``access_url`` is computed on access for the same reason.
    A dataclass, not a model: it is built from a validated connection, and
    validating it again would only cost time.
    """

    token: SecretStr
    connection: ConsoleConnection

    @property
    def access_url(self) -> str | None:
        """The URL to give the user, or ``None`` when no base was configured."""
        base = self.connection.access_url_base
        if base is None:
            return None
        return build_access_url(
            base,
            self.token.get_secret_value(),
            self.connection.instance_uuid,
            nested_in_path=self.connection.console_type is ConsoleType.NOVNC,
        )
