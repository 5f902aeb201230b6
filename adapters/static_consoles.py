"""``StaticConsoleEndpoints``: where each instance's consoles listen, from a TOML file of
``["<uuid>".<kind>]`` tables of ``ConsoleEndpoint`` fields, for deployments without libvirt
(README.md, "Console drivers"); re-read when it changes, as the cell map is."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final
from uuid import UUID

from console_auth.adapters.toml_files import DEFAULT_RELOAD_INTERVAL, ReloadingTomlFile
from console_auth.domain import ConsoleType, InvalidRequest
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import ConsoleTypeUnavailable, InstanceNotFound
from console_auth.domain.model import parse_instance_uuid

logger = logging.getLogger(__name__)

MAX_CONSOLE_MAP_BYTES: Final = 64 << 20
"""Some hundred thousand instances; a larger file is refused rather than read."""
_KINDS: Final = [kind.value for kind in ConsoleType]

_ConsoleMap = Mapping[UUID, Mapping[ConsoleType, ConsoleEndpoint]]


class StaticConsoleEndpoints:
    def __init__(
        self, path: str | os.PathLike[str], *, reload_interval: float = DEFAULT_RELOAD_INTERVAL
    ) -> None:
        self._file = ReloadingTomlFile(
            path,
            "console map",
            _parse,
            max_bytes=MAX_CONSOLE_MAP_BYTES,
            log=logger,
            describe=lambda consoles: f": {len(consoles)} instances",
            reload_interval=reload_interval,
        )

    def endpoint(self, instance_uuid: UUID, console_type: ConsoleType) -> ConsoleEndpoint:
        consoles = self._file.current().get(instance_uuid)
        if consoles is None:
            raise InstanceNotFound(f"the console map names no instance {instance_uuid}")
        endpoint = consoles.get(console_type)
        if endpoint is None:
            raise ConsoleTypeUnavailable(
                f"the console map lists no {console_type.value} console for instance "
                f"{instance_uuid}"
            )
        return endpoint

    def reload(self) -> bool:
        """Read the file now if it changed; ``True`` if a new map is in use."""
        return self._file.reload()


def _parse(data: Mapping[str, Any]) -> _ConsoleMap:
    found: dict[UUID, dict[ConsoleType, ConsoleEndpoint]] = {}
    for name, consoles in data.items():
        instance = parse_instance_uuid(name)
        if instance in found:
            raise InvalidRequest(f"instance {instance} is named twice")
        if not isinstance(consoles, dict):
            raise InvalidRequest(f"[{instance}] must be a table of console kinds")
        found[instance] = {}
        for kind, fields in consoles.items():
            if kind not in _KINDS:  # the key is not echoed: a file may hold anything
                raise InvalidRequest(
                    f"[{instance}] console kinds must be among {', '.join(_KINDS)}"
                )
            if not isinstance(fields, dict):
                raise InvalidRequest(f'["{instance}".{kind}] must be a table')
            try:
                found[instance][ConsoleType(kind)] = ConsoleEndpoint.build(**fields)
            except InvalidRequest as exc:
                raise InvalidRequest(f'["{instance}".{kind}]: {exc}') from None
    return found
