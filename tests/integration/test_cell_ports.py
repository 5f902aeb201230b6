"""Serial ports of a deployment split into cells, through the real container
on two SQLite cells: a lease and a reservation land in their compute host's
cell database, never in the other cell nor in ``database.url``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from console_auth.adapters.container import build_container
from console_auth.adapters.settings import Settings
from console_auth.adapters.sql.tables import PORT_LEASES, PORT_RESERVATIONS
from console_auth.application.cell_ports import CellRoutedPortLeaseRepository
from console_auth.domain import UnknownCell
from console_auth.domain.leases import LeaseKind

IN_A, IN_B = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)


def _rows(engine: Engine, table: str) -> list[tuple[str, int]]:
    columns = {"leases": PORT_LEASES, "reservations": PORT_RESERVATIONS}[table].c
    with engine.connect() as conn:
        return [(row.host, row.port) for row in conn.execute(select(columns.host, columns.port))]


def test_the_container_keeps_serial_ports_in_the_hosts_cell(tmp_path: Path) -> None:
    map_file = tmp_path / "cells.toml"
    map_file.write_text(
        f'[a]\nhosts = ["compute-a"]\ninstances = ["{IN_A}"]\n'
        f'[b]\nhosts = ["compute-b"]\ninstances = ["{IN_B}"]\n',
        encoding="utf-8",
    )
    single = tmp_path / "single.sqlite3"
    settings = Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{single}"},
            "cells": {
                name: {"database": {"url": f"sqlite:///{tmp_path}/cell-{name}.sqlite3"}}
                for name in ("a", "b")
            },
            "cell_map_file": map_file,
        }
    )
    container = build_container(settings)
    try:
        ports = container.ports()
        assert isinstance(container.database().leases, CellRoutedPortLeaseRepository)
        issued = ports.authorize_serial(IN_A, "compute-a", [10000, 10001])
        lease = ports.connect(issued.token.get_secret_value(), IN_A, "proxy-1")
        assert lease.kind is LeaseKind.CONNECTED
        assert ports.allocate_port("compute-b", range(20000, 20010)) == 20000

        engines = container.migration_engines()
        assert _rows(engines["a"], "leases") == [("compute-a", 10000)]
        assert _rows(engines["b"], "leases") == []
        assert _rows(engines["b"], "reservations") == [("compute-b", 20000)]
        assert _rows(engines["a"], "reservations") == []
        assert ports.leases() == [lease]
        assert ports.release_instance(IN_A) == 1

        with pytest.raises(UnknownCell, match="compute-x"):
            ports.allocate_port("compute-x", range(20000, 20010))
        assert _rows(engines["a"], "reservations") == []
        assert _rows(engines["b"], "reservations") == [("compute-b", 20000)]
        assert not single.exists()  # no single database besides the cells
    finally:
        container.shutdown_resources()
