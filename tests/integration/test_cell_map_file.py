"""A cell-map file that cannot be read as TOML fails the first load with
``InvalidRequest`` and, on a reload, is logged once while the previous map
stays in use: never an untyped error, never a hang on a FIFO."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from uuid import UUID

import pytest

from console_auth.adapters.cells import FileCellLocator
from console_auth.domain import InvalidRequest

INSTANCE = UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")
GOOD = f'[a]\nhosts = ["compute-a"]\ninstances = ["{INSTANCE}"]\n'.encode()
BAD = {
    "invalid UTF-8": b'[a]\nhosts = ["compute-\xff"]\n',
    "a huge integer": b"[a]\nhosts = [" + b"9" * 5000 + b"]\n",
    "deep nesting": b"[a]\nhosts = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "an inline table nested deeply": b"a = " + b"{b=" * 100_000 + b"1" + b"}" * 100_000 + b"\n",
}


def replace(path: Path, content: bytes) -> None:
    """As the module docstring asks: write a new file, rename it over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(content)
    os.replace(fresh, path)


@pytest.mark.parametrize("content", BAD.values(), ids=BAD.keys())
def test_a_bad_first_load_is_an_invalid_request(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cells.toml"
    path.write_bytes(content)

    with pytest.raises(InvalidRequest, match="cell map"):
        FileCellLocator(path, ["a", "b"])


@pytest.mark.parametrize("content", BAD.values(), ids=BAD.keys())
def test_a_bad_reload_keeps_the_map_and_is_logged_once(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cells.toml"
    path.write_bytes(GOOD)
    locator = FileCellLocator(path, ["a", "b"], reload_interval=0)
    replace(path, content)

    with caplog.at_level(logging.ERROR, logger="console_auth.adapters.cells"):
        for _ in range(3):
            assert locator.cell_of(INSTANCE) == "a"
            assert locator.cell_of_host("compute-a") == "a"

    assert len(caplog.records) == 1
    assert "keeping the previous cell map" in caplog.records[0].getMessage()
    replace(path, GOOD.replace(b"[a]", b"[b]"))
    assert locator.cell_of(INSTANCE) == "b"  # a good file again is read at once


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "cells.toml"
    os.mkfifo(fifo)
    started = time.monotonic()

    with pytest.raises(InvalidRequest, match="not a regular file"):
        FileCellLocator(fifo, ["a"])

    assert time.monotonic() - started < 5
