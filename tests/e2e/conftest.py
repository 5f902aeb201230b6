"""What the browser tests need: noVNC's files, a painted X screen behind
x11vnc, and headless Chromium. Missing is a failure in CI (``CI`` or
``CONSOLE_AUTH_TEST_REQUIRE_SERVERS`` set) and a skip elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.integration.test_proxy_x11vnc import x11vnc

NOVNC_VERSION = "1.7.0"
DEBIAN_NOVNC = Path("/usr/share/novnc")
"""Debian's ``novnc`` package: ``vnc.html`` and its UI (the npm package has only the client)."""
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--headless",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PAGE = Path(__file__).with_name("rfb_page.html")


def missing(what: str) -> NoReturn:
    if os.environ.get("CI") or os.environ.get("CONSOLE_AUTH_TEST_REQUIRE_SERVERS"):
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "console-auth-test" / f"novnc-{NOVNC_VERSION}"


def _fetch_novnc(into: Path) -> None:
    """``npm pack`` the client once; unpacked beside, then renamed in place."""
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed: it fetches @novnc/novnc")
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent) as work:
        packed = subprocess.run(
            [npm, "pack", f"@novnc/novnc@{NOVNC_VERSION}", "--json", "--pack-destination", work],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if packed.returncode != 0:
            missing(f"npm pack @novnc/novnc@{NOVNC_VERSION} failed: {packed.stderr.strip()}")
        (tgz,) = Path(work).glob("*.tgz")
        with tarfile.open(tgz) as archive:
            archive.extractall(work, filter="data")
        with contextlib.suppress(OSError):  # another run may have won the race
            (Path(work) / "package").rename(into)
    manifest = json.loads((into / "package.json").read_text())
    assert manifest["version"] == NOVNC_VERSION, manifest["version"]


@pytest.fixture(scope="session")
def novnc_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A web dir: noVNC 1.7.0's client from npm, and ``rfb_page.html`` on it."""
    cached = _cache()
    if not (cached / "core" / "rfb.js").is_file():
        _fetch_novnc(cached)
    web = tmp_path_factory.mktemp("novnc-client") / "web"
    shutil.copytree(cached, web)
    shutil.copy(PAGE, web / PAGE.name)
    return web


@pytest.fixture(scope="session")
def novnc_app() -> Path:
    """noVNC's full ``vnc.html``, from Debian's ``novnc`` package."""
    if not (DEBIAN_NOVNC / "vnc.html").is_file():
        missing(f"{DEBIAN_NOVNC}/vnc.html is missing (apt-get install novnc)")
    return DEBIAN_NOVNC


@pytest.fixture(scope="session")
def vnc_port() -> Iterator[int]:
    # a white root window (-wr), so a screen that arrived is told from a blank canvas
    with x11vnc("-wr") as port:
        yield port


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (no browser download: none can be had).

    Module-scoped: Playwright's sync API keeps an event loop running while it
    is open, and the asyncio tests after these must find none."""
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (the test extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
