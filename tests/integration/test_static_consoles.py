"""The static console driver's TOML file: read again when it changes, a bad
version logged and the previous map kept, a bad first load refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from uuid import UUID

import pytest

from console_auth.adapters.static_consoles import StaticConsoleEndpoints
from console_auth.domain import ConsoleType, InvalidRequest
from console_auth.domain.endpoints import ConsoleEndpoint
from console_auth.domain.errors import ConsoleTypeUnavailable, InstanceNotFound

INSTANCE = UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")
GOOD = f'["{INSTANCE}".novnc]\nhost = "compute-1"\nport = 5900\n'


def replace(path: Path, content: str) -> None:
    """As the module docstring asks: write a new file, rename it over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(content)
    os.replace(fresh, path)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "consoles.toml"
    path.write_text(GOOD)
    return path


def test_the_file_is_read_again_when_it_changes(path: Path) -> None:
    consoles = StaticConsoleEndpoints(path, reload_interval=0)
    assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC) == ConsoleEndpoint(
        host="compute-1", port=5900
    )

    replace(path, GOOD.replace("5900", "5907").replace("compute-1", "compute-2"))

    assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC) == ConsoleEndpoint(
        host="compute-2", port=5907
    )
    replace(path, "")
    with pytest.raises(InstanceNotFound):
        consoles.endpoint(INSTANCE, ConsoleType.NOVNC)


def test_within_the_interval_the_file_is_not_looked_at(path: Path) -> None:
    consoles = StaticConsoleEndpoints(path, reload_interval=3600)
    replace(path, GOOD.replace("5900", "5907"))

    assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC).port == 5900
    assert consoles.reload()
    assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC).port == 5907
    assert not consoles.reload()  # unchanged


def test_a_bad_version_is_logged_once_and_the_map_kept(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    consoles = StaticConsoleEndpoints(path, reload_interval=0)
    replace(path, GOOD.replace("5900", "-1"))

    with caplog.at_level(logging.ERROR, logger="console_auth.adapters.static_consoles"):
        for _ in range(3):
            assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC).port == 5900

    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"keeping the previous console map: console map {path}: "
        f'["{INSTANCE}".novnc]: invalid console endpoint: port: '
        "Input should be greater than or equal to 1"
    ]
    replace(path, GOOD.replace("5900", "5901"))
    assert consoles.endpoint(INSTANCE, ConsoleType.NOVNC).port == 5901


BAD = {
    "not a uuid": ('["instance-1".novnc]\nhost = "h"\nport = 1\n', "instance uuid"),
    "an unknown kind": (f'["{INSTANCE}".rdp-secret-token]\nhost = "h"\nport = 1\n', "kinds"),
    "an unknown key": (f'["{INSTANCE}".novnc]\nhost = "h"\nport = 1\nsecret = 2\n', "secret"),
    "a bad host": (f'["{INSTANCE}".novnc]\nhost = "no such host"\nport = 1\n', "host"),
    "a repeated port": (
        f'["{INSTANCE}".serial]\nhost = "h"\nport = 1\nother_ports = [1]\n',
        "must not repeat",
    ),
    "a kind that is no table": (f'["{INSTANCE}"]\nnovnc = 5900\n', "must be a table"),
    "an instance that is no table": (f'"{INSTANCE}" = 1\n', "table of console kinds"),
    "not TOML": ("[[[", "not valid TOML"),
}


@pytest.mark.parametrize(("content", "problem"), BAD.values(), ids=BAD.keys())
def test_a_bad_first_load_is_an_invalid_request(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "consoles.toml"
    path.write_text(content)

    with pytest.raises(InvalidRequest, match="console map") as caught:
        StaticConsoleEndpoints(path)

    assert problem in str(caught.value)
    assert "rdp-secret-token" not in str(caught.value)  # a key is not echoed


def test_a_missing_file_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot be read"):
        StaticConsoleEndpoints(tmp_path / "nowhere.toml")


def test_kinds_and_instances_are_told_apart(path: Path) -> None:
    consoles = StaticConsoleEndpoints(path)

    with pytest.raises(ConsoleTypeUnavailable, match="spice-direct"):
        consoles.endpoint(INSTANCE, ConsoleType.SPICE_DIRECT)
    with pytest.raises(InstanceNotFound):
        consoles.endpoint(UUID(int=0), ConsoleType.NOVNC)
