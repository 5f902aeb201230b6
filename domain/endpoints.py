"""``ConsoleEndpoint``: where one console of an instance listens, as a
hypervisor driver finds it.

The typed answer to what Nova's drivers return untyped (``console/type.py``:
``ConsoleVNC``, ``ConsoleSpice`` with ``tlsPort``, ``ConsoleSerial``), whose
fields the compute manager then copies by hand. Here the endpoint's
``options`` are the very ``ConsoleOptions`` a connection stores, so
``authorize`` takes them as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .hosts import check_host
from .model import ConsoleOptions, invalid_request
from .types import Port

MAX_SERIAL_PORTS: Final = 64
"""Ports one endpoint may offer; ``ConsolePortService`` takes as many."""


class ConsoleEndpoint(BaseModel):
    """Where a console listens: the host the proxy dials, the port, and the
    options a connection to it needs (``tls_port`` for SPICE's ``tlsPort``,
    ``mode`` for a serial device, ``internal_access_path``).

    A serial instance may have several tcp serial devices, one client each:
    ``other_ports`` are the further ones, on the same host, and
    ``ConsolePortService`` hands out the first of ``ports`` that is free.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Annotated[str, AfterValidator(check_host)]
    port: Port
    options: ConsoleOptions = Field(default_factory=ConsoleOptions)
    other_ports: tuple[Port, ...] = Field(default=(), max_length=MAX_SERIAL_PORTS - 1)

    @model_validator(mode="after")
    def _distinct_ports(self) -> ConsoleEndpoint:
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("port and other_ports must not repeat")
        return self

    @property
    def ports(self) -> tuple[int, ...]:
        """``port``, then ``other_ports``: every port that serves this console."""
        return (self.port, *self.other_ports)

    @classmethod
    def build(cls, **fields: Any) -> ConsoleEndpoint:
        """Construct, turning validation errors into ``InvalidRequest``."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:  # raised below: the chain must not hold the input
            error = invalid_request(exc, "console endpoint")
        raise error
