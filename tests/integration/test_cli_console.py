"""``console-auth console``: the configured console driver finds the
endpoint, the command prints the access URL, and ``validate`` gives back
exactly that endpoint. On a temporary SQLite file, with the static driver
and libvirt's in-process ``test:///default``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from console_auth.domain import ConsoleOptions, ConsoleType, SerialMode
from console_auth.domain.endpoints import ConsoleEndpoint
from tests.console_drivers import (
    SERIAL_HOST,
    SPICE_HOST,
    VNC_HOST,
    LibvirtTestDriver,
    new_instance,
    serial_tcp,
    spice,
    vnc,
    write_console_map,
)
from tests.integration.test_cli import (  # the autouse fixture: a private SQLite file
    database,  # noqa: F401
    run,
    run_json,
)

BASE = "https://console.example.com/vnc_lite.html"
INSTANCE = UUID("6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f")


@pytest.fixture
def static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "consoles.toml"
    write_console_map(
        path,
        {
            INSTANCE: {
                ConsoleType.NOVNC: ConsoleEndpoint(host="compute-1", port=5900),
                ConsoleType.SPICE_HTML5: ConsoleEndpoint(
                    host="compute-1", port=5901, options=ConsoleOptions(tls_port=5902)
                ),
            }
        },
    )
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_DRIVER", "static")
    monkeypatch.setenv("CONSOLE_AUTH_STATIC_CONSOLES_FILE", str(path))
    return path


@pytest.fixture
def libvirt(
    libvirt_test_driver: LibvirtTestDriver, monkeypatch: pytest.MonkeyPatch
) -> LibvirtTestDriver:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_DRIVER", "libvirt")
    monkeypatch.setenv("CONSOLE_AUTH_LIBVIRT__URI", "test:///default")
    monkeypatch.setenv("CONSOLE_AUTH_LIBVIRT__VNC_PROXYCLIENT_ADDRESS", VNC_HOST)
    monkeypatch.setenv("CONSOLE_AUTH_LIBVIRT__SPICE_PROXYCLIENT_ADDRESS", SPICE_HOST)
    monkeypatch.setenv("CONSOLE_AUTH_LIBVIRT__SERIAL_PROXYCLIENT_ADDRESS", SERIAL_HOST)
    return libvirt_test_driver


def console(instance: UUID, kind: str) -> list[str]:
    return ["console", "--instance", str(instance), "--type", kind, "--base", BASE]


def test_static_driver_prints_the_access_url_as_authorize_does(
    capsys: pytest.CaptureFixture[str], static: Path
) -> None:
    code, out, err = run(capsys, *console(INSTANCE, "spice-html5"))

    assert (code, err) == (0, "")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["access_url"].startswith(BASE)
    assert lines["token"] in lines["access_url"]
    validated = run_json(capsys, "validate", lines["access_url"])["connection"]
    assert (validated["host"], validated["port"], validated["options"]["tls_port"]) == (
        "compute-1",
        5901,
        5902,
    )
    assert validated["console_type"] == "spice-html5"


def test_libvirt_driver_end_to_end(
    capsys: pytest.CaptureFixture[str], libvirt: LibvirtTestDriver
) -> None:
    instance = new_instance()
    libvirt.define(instance, vnc(5970) + spice(5971, 5972), start=True)

    issued = run_json(capsys, *console(instance, "novnc"))
    validated = run_json(capsys, "validate", issued["access_url"])

    assert validated == {"connection": issued["connection"]}
    connection = validated["connection"]
    assert (connection["host"], connection["port"], connection["instance_uuid"]) == (
        VNC_HOST,
        5970,
        str(instance),
    )


def test_libvirt_serial_claims_its_port_in_the_store(
    capsys: pytest.CaptureFixture[str], libvirt: LibvirtTestDriver
) -> None:
    instance = new_instance()
    libvirt.define(instance, serial_tcp(10040), start=True)

    issued = run_json(capsys, *console(instance, "serial"))
    code, _, err = run(capsys, *console(instance, "serial"))

    assert issued["connection"]["port"] == 10040
    assert issued["connection"]["options"]["mode"] == SerialMode.BIND.value
    assert code == 1
    assert "every defined serial port" in err
    held = run_json(capsys, "ports", "--instance", str(instance))["ports"]
    assert [(lease["host"], lease["port"], lease["kind"]) for lease in held] == [
        (SERIAL_HOST, 10040, "held")
    ]


@pytest.mark.parametrize(
    ("devices", "start", "message"),
    [
        (None, True, "libvirt has no domain"),
        (vnc(5980), False, "is not running"),
        ("<graphics type='vnc' autoport='yes'/>", True, "no port allocated yet"),
        (spice(5981), True, "has no vnc graphics"),
    ],
    ids=["unknown", "stopped", "autoport", "no-device"],
)
def test_libvirt_refusals_are_one_error_line(
    capsys: pytest.CaptureFixture[str],
    libvirt: LibvirtTestDriver,
    devices: str | None,
    start: bool,
    message: str,
) -> None:
    instance = new_instance()
    if devices is not None:
        libvirt.define(instance, devices, start=start)

    code, out, err = run(capsys, *console(instance, "novnc"))

    assert (code, out) == (1, "")
    assert err.startswith("console-auth: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_libvirt_out_of_reach_is_an_error_not_a_missing_console(
    capsys: pytest.CaptureFixture[str],
    libvirt: LibvirtTestDriver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CONSOLE_AUTH_LIBVIRT__URI", "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    )

    code, _, err = run(capsys, *console(new_instance(), "novnc"))

    assert code == 1
    assert "cannot be reached" in err


def test_without_a_driver_the_command_says_which_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, *console(INSTANCE, "novnc"))

    assert code == 1
    assert "console_driver" in err


def test_static_driver_needs_its_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_DRIVER", "static")

    code, _, err = run(capsys, *console(INSTANCE, "novnc"))

    assert code == 1
    assert "static_consoles_file (CONSOLE_AUTH_STATIC_CONSOLES_FILE)" in err


def test_the_installed_console_script(static: Path) -> None:
    script = Path(sys.executable).parent / "console-auth"
    argv = [str(script), "--json", *console(INSTANCE, "novnc")]
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["access_url"].startswith(BASE)


def test_each_kind_takes_its_access_url_base_from_settings(
    capsys: pytest.CaptureFixture[str], static: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's command, with no ``--base``: Nova's ``novncproxy_base_url``
    and ``html5proxy_base_url`` are settings too."""
    monkeypatch.setenv(
        "CONSOLE_AUTH_ACCESS_URL_BASES",
        json.dumps({"novnc": BASE, "spice-html5": "https://spice.example.com/spice_auto.html"}),
    )
    for kind, base in (("novnc", BASE), ("spice-html5", "https://spice.example.com/")):
        issued = run_json(capsys, "console", "--instance", str(INSTANCE), "--type", kind)
        assert issued["access_url"].startswith(base)
    given = run_json(capsys, *console(INSTANCE, "spice-html5"))
    assert given["access_url"].startswith(BASE)  # --base wins


def test_a_bad_access_url_base_setting_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], static: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_ACCESS_URL_BASES", json.dumps({"novnc": "javascript:x"}))
    code, out, err = run(capsys, "console", "--instance", str(INSTANCE), "--type", "novnc")
    assert (code, out) == (1, "")
    assert "access_url_bases.novnc" in err
    assert "scheme must be one of" in err
