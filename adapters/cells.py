"""``FileCellLocator``: which cell holds each instance and compute host,
read from a TOML file that the deployment keeps current.

::

    # one table per cell; every name must be a configured cell
    [cell1]
    hosts = ["compute-1", "compute-2"]
    instances = ["6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"]

    [cell2]
    hosts = ["compute-3"]
    instances = ["0f1e2d3c-4b5a-4697-8877-665544332211"]

Why a file: the cloud already knows these facts (Nova keeps them in its API
database, ``instance_mappings`` and ``host_mappings``), and console-auth
must not reach into another service's schema. A small exporter (a cron job,
a deployment tool, a notification consumer) writes them here; a fixed test
cloud writes them by hand. Hosts are fixed when a compute node is enrolled,
so they route per-host purges; instances come and go, so the file is read
again whenever it changes (its modification time, size or inode, looked at
no more than once per ``reload_interval``). Write a new file and rename it
over the old one, so a reader never sees half of it. A file that cannot be
read or is invalid fails the first load with ``InvalidRequest``; on a later
reload it is logged and the previous map stays in use, so a bad export
cannot take validation down.

A deployment with its own source of truth (an API, a database) implements
``CellLocator``'s three methods instead; the in-memory one is in
``adapters/memory.py``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import UUID

from console_auth.adapters.toml_files import DEFAULT_RELOAD_INTERVAL, ReloadingTomlFile
from console_auth.domain import InvalidRequest, UnknownCell
from console_auth.domain.model import parse_host, parse_instance_uuid

logger = logging.getLogger(__name__)
_K = TypeVar("_K", str, UUID)

_KEYS: Final = frozenset({"hosts", "instances"})
MAX_CELL_MAP_BYTES: Final = 64 << 20
"""About 1.5 million instances; a larger file is refused rather than read."""


@dataclass(frozen=True)
class _CellMap:
    instances: Mapping[UUID, str]
    hosts: Mapping[str, str]


class FileCellLocator:
    """A ``CellLocator`` over a TOML file; see the module docstring.

    ``cells`` are the configured cells, in order; the file may name no
    other. Thread-safe: a reload builds a new map and swaps it in whole.
    """

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
    instances: dict[UUID, str] = {}
    hosts: dict[str, str] = {}
    for cell, entry in data.items():
        if cell not in cells:
            raise InvalidRequest(f"[{cell}] is not a configured cell")
        if not isinstance(entry, dict) or not set(entry) <= _KEYS:
            raise InvalidRequest(f"[{cell}] must be a table of hosts and instances")
        for host in _listed(entry, "hosts", cell):
            _place(hosts, parse_host(host), cell)
        for instance in _listed(entry, "instances", cell):
            _place(instances, parse_instance_uuid(instance), cell)
    return _CellMap(instances, hosts)


def _listed(entry: Mapping[str, Any], key: str, cell: str) -> list[Any]:
    values = entry.get(key, [])
    if not isinstance(values, list):
        raise InvalidRequest(f"[{cell}] {key} must be a list")
    return values


def _place(found: dict[_K, str], name: _K, cell: str) -> None:
    if found.setdefault(name, cell) != cell:
        raise InvalidRequest(f"{name} is in cells {found[name]} and {cell}")
