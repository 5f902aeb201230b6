"""The CLI refuses bad input with one line and a status, never a traceback,
never echoes a token, leaves the schema alone outside ``db``, and imports
Alembic only for ``db``. Real processes where the shell's view matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from console_auth.adapters import cli
from console_auth.adapters.sql import current_revision, open_engine
from tests.integration.test_cli import AUTHORIZE, INSTANCE, database

__all__ = ["database"]  # the autouse fixture: a private SQLite file, no outside variables

SCRIPT = str(Path(sys.executable).parent / "console-auth")


def run(*argv: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [SCRIPT, *argv],
        input=stdin,
        capture_output=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], status: int = 1) -> None:
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:]


def a_token() -> str:
    issued = run("--json", *AUTHORIZE, "--type", "novnc")
    assert issued.returncode == 0, issued.stderr
    token: str = json.loads(issued.stdout)["token"]
    return token


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "downgrade", ""],
        ["db", "upgrade", "--revision", " "],
        [*AUTHORIZE, "--type", "novnc", "--ttl", str(10**20)],
        [*AUTHORIZE, "--type", "novnc", "--ttl", str(-(10**20))],
        [*AUTHORIZE[:-1], str(10**30), "--type", "novnc"],
        [*AUTHORIZE[:-1], "-5900", "--type", "novnc"],
    ],
)
def test_out_of_range_arguments_are_one_error_line(argv: list[str]) -> None:
    done = run(*argv)

    assert_one_error_line(done)
    assert done.stderr.startswith("console-auth: error: ")


def test_non_utf8_stdin_is_refused_without_a_traceback() -> None:
    done = run("validate", "-", stdin=b"\xff\xfe" + b"A" * 41 + b"\n", PYTHONIOENCODING="utf-8")

    assert_one_error_line(done)
    assert "not UTF-8" in done.stderr


def test_a_token_on_stdin_validates() -> None:
    token = a_token()

    done = run("--json", "validate", "--instance", INSTANCE, "-", stdin=token.encode() + b"\n")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["connection"]["instance_uuid"] == INSTANCE


@pytest.mark.parametrize("argv", [["--help"], ["--json", *AUTHORIZE, "--type", "novnc"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as with `| head -0`
    try:
        done = subprocess.run(
            [SCRIPT, *argv], stdout=write_end, stderr=subprocess.PIPE, timeout=60, text=True
        )
    finally:
        os.close(write_end)

    assert done.stderr == ""
    # argparse drops a failed write of its help itself; our own output reports it
    assert done.returncode == (0 if argv == ["--help"] else cli.BROKEN_PIPE_STATUS)


def test_usage_errors_never_echo_a_token() -> None:
    token = a_token()
    while token.startswith("-"):  # alone, it would be an unknown option, which is never echoed
        token = a_token()
    url = f"https://console.example.com/?token={token[:20]}"
    for argv in (
        ["revoke", INSTANCE, token],  # unrecognized arguments
        [*AUTHORIZE, f"--type={token}"],  # invalid choice (`=`: a token may start with -)
        [*AUTHORIZE, "--type", "novnc", f"--option={token}"],  # expected KEY=VALUE
        ["validate", url, url],  # a partial token after token=
        [token],  # invalid command
    ):
        done = run(*argv)
        assert_one_error_line(done, status=2)
        assert token not in done.stderr
        assert token[:20] not in done.stderr
        assert "<redacted>" in done.stderr


def test_no_command_but_db_moves_the_schema(database: Path) -> None:
    a_token()
    assert run("db", "downgrade", "0001").returncode == 0

    for argv in (["revoke", INSTANCE], ["purge"], ["validate", "A" * 43], ["ports"]):
        done = run(*argv)
        assert_one_error_line(done)
        assert "console-auth db upgrade" in done.stderr
    engine = open_engine(f"sqlite:///{database}")
    assert current_revision(engine) == "0001"  # the deliberate downgrade stands
    engine.dispose()
    assert run("db", "upgrade").returncode == 0
    assert run("revoke", INSTANCE).stdout == "count: 1\n"


def test_alembic_is_imported_only_for_db() -> None:
    a_token()  # an existing file at the head revision
    check = (
        "import sys; from console_auth.adapters.cli import main; "
        "status = main(sys.argv[1:]); print(status, 'alembic' in sys.modules)"
    )

    def imports_alembic(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", check, *argv], capture_output=True, text=True, timeout=60
        )
        return done.stdout.split()[-1]

    assert imports_alembic("validate", "garbage") == "False"
    assert imports_alembic("validate", "A" * 43) == "False"  # opened, schema checked
    assert imports_alembic("revoke", INSTANCE) == "False"
    assert imports_alembic("db", "upgrade") == "True"


def test_an_unknown_variable_is_a_warning_on_stderr(tmp_path: Path) -> None:
    done = run("purge", CONSOLE_AUTH_TOKEN_TL="30")

    assert done.returncode == 0
    assert done.stderr == (
        "console-auth: warning: ignoring CONSOLE_AUTH_TOKEN_TL: no setting has that name; "
        "did you mean CONSOLE_AUTH_TOKEN_TTL?\n"
    )


def test_a_fifo_as_config_file_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)

    done = run("--config", str(fifo), "purge")

    assert_one_error_line(done)
    assert "not a regular file" in done.stderr
