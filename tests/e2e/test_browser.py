"""A person's path, in headless Chromium: ``authorize`` prints an access URL,
the browser opens it on ``console-auth proxy --web``, noVNC reaches x11vnc
through the proxy and draws the X screen; an expired link's page says why
(``proxy.rfb_refusals``) instead of noVNC's bare "code 1006".

Two noVNC clients: Debian's full ``vnc.html`` app, and noVNC 1.7.0's RFB
client from npm (which ships no ``vnc.html``) on a one-file page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_proxy_x11vnc import HEIGHT, WIDTH

INSTANCE = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
SCRIPT = str(Path(sys.executable).parent / "console-auth")
WAIT_MS = 15_000


@dataclass(frozen=True)
class Client:
    """Where a noVNC page keeps what the test reads."""

    page: str
    query: str
    connected: str
    canvas: str
    status: str
    refusal: str


CLIENTS = {
    "vnc.html (Debian novnc)": Client(
        page="vnc.html",
        query="autoconnect=true",
        connected="html.noVNC_connected",
        canvas="#noVNC_container canvas",
        status="#noVNC_status",
        refusal="New connection has been rejected with reason: ",
    ),
    "noVNC 1.7.0 RFB client (npm)": Client(
        page="rfb_page.html",
        query="",
        connected="body.connected",
        canvas="#screen canvas",
        status="#status",
        refusal="refused: ",
    ),
}

WHITE_SHARE = """canvas => {
    if (canvas.width === 0) return 0;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let white = 0;
    for (let i = 0; i < data.length; i += 4)
        if (data[i] === 255 && data[i + 1] === 255 && data[i + 2] === 255) white++;
    return white / (data.length / 4);
}"""


@dataclass
class Proxy:
    port: int
    env: dict[str, str]

    def authorize(self, vnc_port: int, client: Client, ttl: int = 600) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.port}/{client.page}"
        issued = subprocess.run(
            [SCRIPT, "authorize", "--json", "--instance", INSTANCE, "--type", "novnc",
             "--host", "127.0.0.1", "--port", str(vnc_port), "--ttl", str(ttl),
             "--base", f"{base}?{client.query}" if client.query else base],
            env=self.env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        found: dict[str, Any] = json.loads(issued.stdout)
        return found


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> Client:
    return CLIENTS[request.param]


@pytest.fixture
def web_dir(client: Client, request: pytest.FixtureRequest) -> Path:
    fixture = "novnc_app" if client.page == "vnc.html" else "novnc_client"
    found: Path = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def proxy(web_dir: Path, tmp_path: Path) -> Iterator[Proxy]:
    """``console-auth proxy --web`` on a SQLite file, refusing in RFB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_AUTH_")}
    env |= {
        "CONSOLE_AUTH_DATABASE__URL": f"sqlite:///{tmp_path / 'console-auth.sqlite3'}",
        "CONSOLE_AUTH_PROXY__RFB_REFUSALS": "true",
        "CONSOLE_AUTH_PROXY__CONSOLE_TYPES": "novnc",
        "CONSOLE_AUTH_PROXY__DRAIN_TIMEOUT": "0",
    }
    server = subprocess.Popen(
        [SCRIPT, "proxy", "--listen", "127.0.0.1:0", "--web", str(web_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()  # EOF, not a hang, if it dies
        assert ready.startswith("listening: 127.0.0.1:"), server.communicate(timeout=10)[1]
        yield Proxy(int(ready.rsplit(":", 1)[1]), env)
    finally:
        server.terminate()
        _, log = server.communicate(timeout=10)
    assert server.returncode == 0, log


def test_novnc_shows_the_x_screen_then_why_an_expired_link_is_refused(
    client: Client, proxy: Proxy, vnc_port: int, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    good = proxy.authorize(vnc_port, client)
    expiring = proxy.authorize(vnc_port, client, ttl=1)
    context = browser.new_context(viewport={"width": 800, "height": 600})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(good["access_url"])
        page.wait_for_selector(client.connected)
        canvas = page.locator(client.canvas)
        # the first framebuffer update lands after "connected": wait for the white screen
        page.wait_for_function(
            f"() => ({WHITE_SHARE})(document.querySelector({client.canvas!r})) > 0.95",
            timeout=WAIT_MS,
        )
        size = canvas.evaluate("c => [c.width, c.height]")
        canvas.screenshot(path=tmp_path / "console.png")
        page.screenshot(path=tmp_path / "page.png")
        assert size == [WIDTH, HEIGHT]

        expires_at = datetime.fromisoformat(expiring["connection"]["expires_at"])
        time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds() + 0.1))
        refused = context.new_page()
        refused.set_default_timeout(WAIT_MS)
        refused.goto(expiring["access_url"])
        expect(refused.locator(client.status)).to_contain_text(
            client.refusal + "the console link has expired; ask for a new console link",
            timeout=WAIT_MS,
        )
        # vnc.html slides its status bar in: on screen, for a person to read
        expect(refused.locator(client.status)).to_be_in_viewport(ratio=0.9, timeout=WAIT_MS)
        refused.screenshot(path=tmp_path / "refused.png")
        assert expiring["token"] not in refused.content()
        assert refused.locator(client.connected).count() == 0
    finally:
        context.close()
