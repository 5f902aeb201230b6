"""``console-auth`` end to end on a temporary SQLite file, in-process through
``main`` and once through the installed console script."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers

from console_auth.adapters import cli
from console_auth.adapters.container import Container, build_container
from console_auth.adapters.settings import Settings
from console_auth.adapters.sql import HEAD
from tests.fakes import FakeClock

INSTANCE = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
OTHER_INSTANCE = "0f1e2d3c-4b5a-4697-8877-665544332211"
BASE = "https://console.example.com/vnc_lite.html"
AUTHORIZE = ["authorize", "--instance", INSTANCE, "--host", "compute-1", "--port", "5900"]


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SQLite file, and no CONSOLE_AUTH_* variable from outside."""
    for name in list(os.environ):
        if name.startswith("CONSOLE_AUTH_"):
            monkeypatch.delenv(name)
    path = tmp_path / "cli.sqlite3"
    monkeypatch.setenv("CONSOLE_AUTH_DATABASE__URL", f"sqlite:///{path}")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "--json", *argv)
    assert (code, err) == (0, "")
    result: dict[str, Any] = json.loads(out)
    return result


def authorize(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    return run_json(capsys, *AUTHORIZE, "--type", "novnc", "--base", BASE, *extra)


def later(monkeypatch: pytest.MonkeyPatch, delta: timedelta) -> None:
    """Make the CLI's next containers see the clock ``delta`` from now."""

    def build_later(settings: Settings | None = None) -> Container:
        container = build_container(settings)
        container.clock.override(providers.Object(FakeClock(datetime.now(UTC) + delta)))
        return container

    monkeypatch.setattr(cli, "build_container", build_later)


def test_authorize_then_validate_by_url_and_by_token(capsys: pytest.CaptureFixture[str]) -> None:
    issued = authorize(capsys)

    assert issued.keys() == {"token", "access_url", "connection"}
    assert issued["token"] in issued["access_url"]
    assert issued["access_url"].startswith(BASE)
    assert issued["connection"]["instance_uuid"] == INSTANCE
    by_url = run_json(capsys, "validate", issued["access_url"])
    by_token = run_json(capsys, "validate", "--instance", INSTANCE, "--", issued["token"])
    assert by_url == by_token == {"connection": issued["connection"]}


def test_text_output_shows_token_url_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *AUTHORIZE, "--type", "spice-html5", "--base", BASE)

    assert (code, err) == (0, "")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["console_type"] == "spice-html5"
    assert lines["host"] == "compute-1"
    code, out, _ = run(capsys, "validate", lines["access_url"])
    assert code == 0
    assert f"instance_uuid: {INSTANCE}" in out.splitlines()


def test_options_known_and_extra(capsys: pytest.CaptureFixture[str]) -> None:
    options = ["use_tls=true", "tls_port=5901", "internal_access_path=/x?y=1", "vendor=acme"]
    issued = authorize(capsys, *(arg for option in options for arg in ("--option", option)))

    assert issued["connection"]["options"] == {
        "internal_access_path": "/x?y=1",
        "use_tls": True,
        "tls_port": 5901,
        "mode": None,
        "extra": {"vendor": "acme"},
    }


def test_option_values_are_json_scalars_when_they_parse() -> None:
    assert cli._option("retries=3") == ("retries", 3)
    assert cli._option("ratio=0.5") == ("ratio", 0.5)
    assert cli._option("mode=connect") == ("mode", "connect")
    assert cli._option('label="007"') == ("label", "007")
    assert cli._option("list=[1, 2]") == ("list", "[1, 2]")
    assert cli._option("empty=") == ("empty", "")


def test_validate_reads_stdin_for_a_dash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = authorize(capsys)
    monkeypatch.setattr(sys, "stdin", io.StringIO(issued["access_url"] + "\n"))

    assert run_json(capsys, "validate", "-") == {"connection": issued["connection"]}


def test_revoke_prints_how_many(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = authorize(capsys), authorize(capsys)

    assert run_json(capsys, "revoke", INSTANCE) == {"count": 2}
    assert run_json(capsys, "revoke", INSTANCE) == {"count": 0}
    assert run(capsys, "revoke", INSTANCE)[1] == "count: 0\n"
    for issued in (first, second):
        assert run(capsys, "validate", issued["access_url"])[0] == 1


def test_purge_prints_how_many(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    authorize(capsys, "--ttl", "60")
    authorize(capsys)  # the default ttl, 600 s
    assert run_json(capsys, "purge") == {"count": 0}

    later(monkeypatch, timedelta(minutes=7))  # the 60 s token expired over the grace ago
    assert run_json(capsys, "purge", "--host", "compute-2") == {"count": 0}
    assert run_json(capsys, "purge", "--host", "compute-1") == {"count": 1}
    later(monkeypatch, timedelta(hours=1))
    assert run_json(capsys, "purge") == {"count": 1}


def test_memory_backend_leaves_no_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database: Path
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND", "memory")

    authorize(capsys)

    assert not database.exists()


def test_config_file_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CONSOLE_AUTH_DATABASE__URL")
    config = tmp_path / "settings.toml"
    config.write_text(f'token_ttl = 5\n[database]\nurl = "sqlite:///{tmp_path}/f.sqlite3"\n')

    issued = run_json(capsys, "--config", str(config), *AUTHORIZE, "--type", "serial")

    expires = datetime.fromisoformat(issued["connection"]["expires_at"])
    assert expires - datetime.fromisoformat(issued["connection"]["issued_at"]) == timedelta(
        seconds=5
    )
    assert (tmp_path / "f.sqlite3").exists()


def test_global_options_also_follow_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "purge", "--json")
    assert (code, json.loads(out)) == (0, {"count": 0})
    code, out, _ = run(capsys, "db", "current", "--json")
    assert (code, json.loads(out)) == (0, {"revision": HEAD})  # purge opened and migrated


def test_db_upgrade_current_and_downgrade(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "db", "current") == {"revision": None}  # opening did not migrate
    assert run(capsys, "db", "upgrade") == (0, f"revision: {HEAD}\n", "")
    assert run(capsys, "db", "current") == (0, f"revision: {HEAD}\n", "")
    assert run_json(capsys, "db", "downgrade", "base") == {"revision": None}
    assert run_json(capsys, "db", "upgrade", "--revision", HEAD) == {"revision": HEAD}


def assert_one_error_line(result: tuple[int, str, str], *secrets: str) -> None:
    code, out, err = result
    assert (code, out) == (1, "")
    assert err.startswith("console-auth: error: ")
    assert err.count("\n") == 1
    assert err.endswith("\n")
    for secret in secrets:
        assert secret not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "A" * 43],  # well formed, unknown
        ["validate", "not-a-token"],
        ["validate", f"{BASE}?token={'B' * 43}&instance_uuid={INSTANCE}"],
        [*AUTHORIZE[:2], "nope", *AUTHORIZE[3:], "--type", "novnc"],
        [*AUTHORIZE[:-1], "70000", "--type", "novnc"],
        [*AUTHORIZE, "--type", "novnc", "--base", "javascript:alert(1)"],
        [*AUTHORIZE, "--type", "novnc", "--ttl", "0"],
        [*AUTHORIZE, "--type", "novnc", "--option", "extra_list=[1]", "--option", "x=null"],
        ["purge", "--host", "not a host"],
        ["validate", f"{BASE}?token={'A' * 43}", "--instance", INSTANCE],
        ["--config", "/nonexistent/console-auth.toml", "purge"],
        ["db", "upgrade", "--revision", "bogus"],
    ],
)
def test_errors_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert_one_error_line(run(capsys, *argv), "A" * 43, "B" * 43)


def test_a_token_for_another_instance(capsys: pytest.CaptureFixture[str]) -> None:
    token = authorize(capsys)["token"]

    result = run(capsys, "validate", "--instance", OTHER_INSTANCE, "--", token)

    assert_one_error_line(result, token)
    assert "instance" in result[2]


def test_an_expired_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = authorize(capsys, "--ttl", "1")
    later(monkeypatch, timedelta(seconds=1))  # at expiry: already invalid

    result = run(capsys, "validate", issued["access_url"])

    assert_one_error_line(result, issued["token"])
    assert "expired" in result[2]


def test_a_bad_environment_is_an_error_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_AUTH_TOKEN_TTL", "0")

    code, _, err = run(capsys, "purge")

    assert code == 1
    assert err.startswith("console-auth: error: ")
    assert "CONSOLE_AUTH_TOKEN_TTL" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["authorize"],
        [*AUTHORIZE, "--type", "telnet"],
        [*AUTHORIZE, "--type", "novnc", "--option", "no-equals-sign"],
        [*AUTHORIZE[:-1], "fifty", "--type", "novnc"],
        ["db"],
        ["db", "downgrade"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)

    assert (code, out) == (2, "")
    assert "usage: console-auth" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")

    assert code == 0
    assert all(command in out for command in ("authorize", "validate", "revoke", "purge", "db"))


def console_script(*argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "console-auth"
    return subprocess.run(
        [str(script), *argv], capture_output=True, text=True, env=os.environ.copy(), timeout=60
    )


def test_the_installed_console_script(database: Path) -> None:
    issued = console_script("--json", *AUTHORIZE, "--type", "novnc", "--base", BASE)
    assert issued.returncode == 0, issued.stderr
    url = json.loads(issued.stdout)["access_url"]

    validated = console_script("--json", "validate", url)

    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["connection"]["instance_uuid"] == INSTANCE
    assert database.exists()


def test_verbose_logs_to_stderr_but_never_the_token() -> None:
    done = console_script("--verbose", "--json", *AUTHORIZE, "--type", "novnc")

    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["token"]
    assert "INFO console_auth." in done.stderr  # the service logged the authorization
    assert token not in done.stderr


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "console_auth.adapters.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: console-auth")


def test_ports_lists_who_is_connected_where(capsys: pytest.CaptureFixture[str]) -> None:
    container = build_container()
    try:
        ports = container.ports()
        issued = ports.authorize_serial(INSTANCE, "compute-1", [10000, 10001])
        ports.authorize_serial(OTHER_INSTANCE, "compute-2", [10000])
        ports.connect(issued.token.get_secret_value(), INSTANCE, "proxy-7")
    finally:
        container.shutdown_resources()

    listed = run_json(capsys, "ports", "--instance", INSTANCE)["ports"]
    assert [(p["host"], p["port"], p["kind"], p["proxy_id"]) for p in listed] == [
        ("compute-1", 10000, "connected", "proxy-7")
    ]
    assert "lease_id" not in listed[0]
    assert len(run_json(capsys, "ports")["ports"]) == 2
    code, out, err = run(capsys, "ports", "--host", "compute-1")
    assert (code, err) == (0, "")
    assert out.startswith("compute-1:10000 connected instance=")
    assert "proxy=proxy-7" in out
