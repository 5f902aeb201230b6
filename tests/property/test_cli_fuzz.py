"""Hostile settings and command lines: ``load_settings`` raises nothing but
``ConsoleAuthError``, and the CLI always ends with status 0, 1 or 2, at most
one error line and no traceback. Sized by the hypothesis profile (``ci``:
well under a minute)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from console_auth.adapters import cli
from console_auth.adapters.settings import Settings, load_settings
from console_auth.domain import ConsoleAuthError

INSTANCE = "6c8f9e4e-2b1a-4c57-9f1e-0a1b2c3d4e5f"
TOKEN = "A" * 43
WORDS = [
    *("authorize", "validate", "revoke", "purge", "ports", "db", "upgrade", "downgrade"),
    *("current", "--instance", "--host", "--port", "--type", "--base", "--ttl", "--option"),
    *("--revision", "--cell", "--json", "--config", "-v", "--", "-", "novnc", "serial"),
    *(INSTANCE, TOKEN, "compute-1", "5900", "head", "base", "0001", "", "1e20", str(2**64)),
    *(f"https://c.example/?token={TOKEN}&instance_uuid={INSTANCE}", "use_tls=true", "a=[1]"),
]
ARGV = st.lists(
    st.one_of(st.sampled_from(WORDS), st.text(max_size=30).filter(lambda w: "\0" not in w)),
    max_size=10,
)
TOML_ATOMS = [
    *(b"token_ttl", b"purge_batch_size", b"purge_grace", b"[database]", b"[memcached]"),
    *(b"[cells.a.database]", b"url", b"servers", b"cells", b"=", b"\n", b'"', b"'", b"[", b"]"),
    *(b"{", b"}", b",", b"1", b"-1", b"9" * 5000, b"1e999", b"true", b"\xff", b"\\u0000", b"."),
    *(b"sqlite://", b"1979-05-27T07:32:00Z", b"nan", b"inf", b"[" * 2000, b"0x7f", b" "),
]
ENV_NAMES = [
    *(f"CONSOLE_AUTH_{name.upper()}" for name in Settings.model_fields),
    *("CONSOLE_AUTH_DATABASE__URL", "CONSOLE_AUTH_MEMCACHED__SERVERS", "CONSOLE_AUTH_CELLS"),
    *("CONSOLE_AUTH_MEMCACHED__TIMEOUT", "CONSOLE_AUTH_CELLS__A__DATABASE__URL", "CONSOLE_AUTH_X"),
]
ENV_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"))
WORKDIR = Path(tempfile.mkdtemp(prefix="console-auth-fuzz-"))


@contextlib.contextmanager
def clean_environment(**variables: str) -> Iterator[None]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_AUTH_")}
    with mock.patch.dict(os.environ, {**kept, **variables}, clear=True):
        yield


@given(
    content=st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(TOML_ATOMS)).map(b"".join))
)
def test_any_settings_file_is_loaded_or_refused_typed(content: bytes) -> None:
    path = WORKDIR / "settings.toml"
    path.write_bytes(content)
    with clean_environment(), contextlib.suppress(ConsoleAuthError):
        load_settings(path)


@given(variables=st.dictionaries(st.sampled_from(ENV_NAMES), ENV_TEXT, max_size=3))
def test_any_environment_is_loaded_or_refused_typed(variables: dict[str, str]) -> None:
    with clean_environment(**variables), contextlib.suppress(ConsoleAuthError):
        load_settings()


@given(argv=ARGV, stdin=st.binary(max_size=100))
def test_any_command_line_ends_with_a_status_and_at_most_one_line(
    argv: list[str], stdin: bytes
) -> None:
    out, err = io.StringIO(), io.StringIO()
    environment = {
        "CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND": "memory",
        "CONSOLE_AUTH_DATABASE__URL": f"sqlite:///{WORKDIR}/fuzz.sqlite3",
    }
    stdin_stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    with (
        clean_environment(**environment),
        mock.patch.object(sys, "stdin", stdin_stream),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        status = cli.main(argv)

    assert status in (0, 1, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert len([line for line in err.getvalue().splitlines() if "error:" in line]) <= 1


def test_hostile_argv_and_stdin_in_a_real_process() -> None:
    script = Path(sys.executable).parent / "console-auth"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_AUTH_")},
        "CONSOLE_AUTH_CONSOLE_TOKENS_BACKEND": "memory",
        "PYTHONIOENCODING": "utf-8",
    }
    for argv, stdin in (
        ([b"validate", b"\xff\xfe"], b""),
        ([b"validate", b"-"], b"\xc3\x28" * 1000),
        ([b"authorize", b"--port", b"9" * 5000], b""),
        ([b"--config", b"/dev/zero", b"purge"], b""),
        ([b"revoke", b"\x80" * 43], b""),
    ):
        done = subprocess.run(
            [os.fsencode(script), *argv],
            input=stdin,
            capture_output=True,
            env=environment,
            timeout=60,
        )
        assert done.returncode in (1, 2), done.stderr
        assert b"Traceback" not in done.stderr
        assert done.stderr.count(b"error:") == 1
