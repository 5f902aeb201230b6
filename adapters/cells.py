"""``FileCellLocator``: which cell holds each instance and compute host, read from a TOML
file that an exporter of Nova's mappings keeps current (the format: README.md, "Cells"; why a
file: ARCHITECTURE.md, "Where a cell is, is the deployment's fact")."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from console_auth.adapters.toml_files import DEFAULT_RELOAD_INTERVAL, ReloadingTomlFile
from console_auth.domain import InvalidRequest, UnknownCell
from console_auth.domain.model import parse_host, parse_instance_uuid

logger = logging.getLogger(__name__)

_KEYS: Final = {"hosts": parse_host, "instances": parse_instance_uuid}
MAX_CELL_MAP_BYTES: Final = 64 << 20
"""About 1.5 million instances; a larger file is refused rather than read."""


@dataclass(frozen=True)
class _CellMap:
    instances: Mapping[UUID, str]
    hosts: Mapping[str, str]


class FileCellLocator:
    """``cells`` are the configured cells, in order; the file may name no other."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        cells: Sequence[str],
        *,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        self._cells = tuple(cells)
        self._file = ReloadingTomlFile(
            path,
            "cell map",
            functools.partial(_parse, cells=self._cells),
            max_bytes=MAX_CELL_MAP_BYTES,
            log=logger,
            describe=lambda m: f": {len(m.instances)} instances, {len(m.hosts)} hosts",
            reload_interval=reload_interval,
        )

    def cell_of(self, instance_uuid: UUID) -> str:
        cell = self._file.current().instances.get(instance_uuid)
        if cell is None:
            raise UnknownCell(f"no cell is known to hold instance {instance_uuid}")
        return cell

    def cell_of_host(self, host: str) -> str | None:
        return self._file.current().hosts.get(host)

    def cells(self) -> Sequence[str]:
        return self._cells

    def reload(self) -> bool:
        """Read the file now if it changed; ``True`` if a new map is in use."""
        return self._file.reload()


def _parse(data: Mapping[str, Any], cells: Sequence[str]) -> _CellMap:
    found: dict[str, dict[Any, str]] = {key: {} for key in _KEYS}
    for cell, entry in data.items():
        if cell not in cells:
            raise InvalidRequest(f"[{cell}] is not a configured cell")
        if not isinstance(entry, dict) or not entry.keys() <= _KEYS.keys():
            raise InvalidRequest(f"[{cell}] must be a table of hosts and instances")
        for key, parse in _KEYS.items():
            names = entry.get(key, [])
            if not isinstance(names, list):
                raise InvalidRequest(f"[{cell}] {key} must be a list")
            for name in map(parse, names):
                if found[key].setdefault(name, cell) != cell:
                    raise InvalidRequest(f"{name} is in cells {found[key][name]} and {cell}")
    return _CellMap(found["instances"], found["hosts"])
