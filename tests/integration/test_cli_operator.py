"""The operator's commands end to end on a temporary SQLite file: ``list``,
``explain``, ``revoke --token-hash``, ``purge --instances-from`` in-process,
and ``purge --every`` as a process stopped by SIGTERM or SIGINT."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from console_auth.adapters import cli
from console_auth.domain import hash_token
from tests.integration.test_cli import (  # the autouse fixture: a private SQLite file
    AUTHORIZE,
    BASE,
    INSTANCE,
    OTHER_INSTANCE,
    authorize,
    database,  # noqa: F401
    later,
    run,
    run_json,
)

LIST_KEYS = ["token_hash", "instance", "kind", "target", "issued", "expires", "cell"]


def listed(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "--json", "list", *argv)
    assert (code, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def authorize_other(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """A token for ``OTHER_INSTANCE``; a later ``--host`` in ``extra`` wins."""
    return run_json(capsys, *AUTHORIZE[:2], OTHER_INSTANCE, *AUTHORIZE[3:], *extra)


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_list_walks_every_page_in_hash_order_without_tokens_or_whole_hashes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = [authorize(capsys) for _ in range(3)]
    issued.append(authorize_other(capsys, "--type", "spice-html5", "--host", "compute-2"))
    monkeypatch.setattr(cli, "LIST_PAGE", 1)
    rows = listed(capsys)
    hashes = sorted(hash_token(i["token"]) for i in issued)
    assert [row["token_hash"] for row in rows] == [h[:12] for h in hashes]
    assert all(list(row) == LIST_KEYS for row in rows)
    assert rows[0]["cell"] is None
    code, out, _ = run(capsys, "list")
    assert code == 0
    header, *lines = out.splitlines()
    assert header == "TOKEN_HASH INSTANCE KIND TARGET ISSUED EXPIRES CELL"
    assert [line.split()[0] for line in lines] == [h[:12] for h in hashes]
    for secret in [*(i["token"] for i in issued), *hashes]:
        assert secret not in out
    assert [r["instance"] for r in listed(capsys, "--instance", OTHER_INSTANCE)] == [
        OTHER_INSTANCE
    ]
    assert {r["target"] for r in listed(capsys, "--host", "compute-1")} == {"compute-1:5900"}


def test_list_shows_expired_tokens_only_when_asked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    authorize(capsys, "--ttl", "60")
    later(monkeypatch, timedelta(minutes=2))
    assert listed(capsys) == []
    assert len(listed(capsys, "--expired")) == 1


def test_list_takes_one_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "list", "--instance", INSTANCE, "--host", "compute-1")
    assert code == 2
    assert "not allowed with argument" in err


def test_explain_a_url_from_stdin_and_a_token_for_another_instance(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = authorize(capsys)
    stdin(monkeypatch, issued["access_url"] + "\n")
    good = run_json(capsys, "explain", "-")
    assert good["verdict"] == "valid"
    assert good["stored"]["instance"] == INSTANCE
    assert good["token_hash"] == hash_token(issued["token"])[:12]
    stdin(monkeypatch, issued["token"] + "\n")
    wrong = run_json(capsys, "explain", "--instance", OTHER_INSTANCE, "-")
    assert wrong["verdict"] == "instance_mismatch"
    assert OTHER_INSTANCE in wrong["detail"]
    for answer in (good, wrong):
        text = json.dumps(answer)
        assert issued["token"] not in text
        assert hash_token(issued["token"]) not in text


def test_explain_says_when_a_token_expired_and_that_garbage_is_malformed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = authorize(capsys, "--ttl", "60")
    later(monkeypatch, timedelta(minutes=2))
    expired = run_json(capsys, "explain", issued["access_url"])
    assert expired["verdict"] == "expired"
    assert expired["detail"] == f"expired at {issued['connection']['expires_at']}".replace(
        "Z", "+00:00"
    )
    code, out, err = run(capsys, "explain", "--", "not-a-token")
    assert (code, err) == (0, "")
    assert "verdict: malformed" in out


def test_revoke_one_token_by_its_hash_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    doomed, kept = authorize(capsys), authorize(capsys)
    prefix = hash_token(doomed["token"])[:12]
    revoked = run_json(capsys, "revoke", "--token-hash", prefix.upper())
    assert revoked["token_hash"] == prefix
    code, _, err = run(capsys, "validate", doomed["access_url"])
    assert (code, err.strip()) == (1, "console-auth: error: console token is invalid (unknown)")
    assert run_json(capsys, "validate", kept["access_url"])["connection"]["instance_uuid"]
    code, _, err = run(capsys, "revoke", "--token-hash", prefix)
    assert code == 1
    assert f"no stored console token has a hash starting with {prefix}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["revoke"], "an instance uuid or --token-hash"),
        (["revoke", INSTANCE, "--token-hash", "a" * 12], "an instance uuid or --token-hash"),
        (["revoke", "--token-hash", "abc"], "12 to 64 hexadecimal digits"),
    ],
)
def test_revoke_takes_an_instance_or_a_hash_prefix(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in err


def test_purge_the_instances_a_file_lists(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = authorize(capsys, "--ttl", "60")
    theirs = authorize_other(capsys, "--type", "novnc", "--ttl", "60")
    instances = tmp_path / "instances"
    instances.write_text(f"# the guests this node runs\n\n{INSTANCE}  # vm-1\n")
    later(monkeypatch, timedelta(minutes=10))
    assert run_json(capsys, "purge", "--instances-from", str(instances)) == {"count": 1}
    assert (
        listed(capsys, "--expired", "--instance", OTHER_INSTANCE)[0]["token_hash"]
        == (hash_token(theirs["token"])[:12])
    )
    assert listed(capsys, "--expired", "--instance", INSTANCE) == []
    assert mine["connection"]["instance_uuid"] == INSTANCE
    instances.write_text(f"{INSTANCE}\nvm-2\n")
    code, _, err = run(capsys, "purge", "--instances-from", str(instances))
    assert code == 1
    assert "line 2: not an instance uuid" in err


@pytest.mark.parametrize("every", ["0", "0.5", "86401", "nan", "soon"])
def test_purge_every_is_bounded(capsys: pytest.CaptureFixture[str], every: str) -> None:
    code, _, err = run(capsys, "purge", "--every", every)
    assert code == 2
    assert "expected 1 to 86400 seconds" in err


def test_instances_from_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """The file is read as the cell map is: a FIFO with no writer is no hang."""
    fifo = tmp_path / "instances"
    os.mkfifo(fifo)
    script = Path(sys.executable).parent / "console-auth"
    done = subprocess.run(
        [str(script), "purge", "--instances-from", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "is not a regular file" in done.stderr


def purge_process(*argv: str) -> subprocess.Popen[str]:
    script = Path(sys.executable).parent / "console-auth"
    return subprocess.Popen(
        [str(script), "--json", "purge", "--every", "1", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CONSOLE_AUTH_PURGE_GRACE": "0"},
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_purge_every_runs_rounds_until_a_signal_then_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stop: signal.Signals
) -> None:
    authorize(capsys, "--ttl", "1")
    instances = tmp_path / "instances"
    instances.write_text(f"{INSTANCE}\n")
    process = purge_process("--instances-from", str(instances))
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline()) == {"every": 1.0}
        deadline = time.monotonic() + 15
        while listed(capsys, "--expired") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listed(capsys, "--expired") == []  # the rounds purged the token
        time.sleep(0.3)  # mid-interval, most likely waiting
        sent = time.monotonic()
        process.send_signal(stop)
        out, err = process.communicate(timeout=5)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert took < 1.1  # within one interval
    summary = json.loads(out.splitlines()[-1])
    assert summary["count"] == 1
    assert summary["rounds"] >= 1
    assert summary["failed"] == 0
    assert "periodic purge: 1 expired console tokens deleted" in err


def test_purge_every_outlives_a_failing_round(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    process = purge_process("--instances-from", str(missing))
    try:
        assert process.stdout is not None
        process.stdout.readline()
        time.sleep(2.5)  # at least one round, on a file that is not there
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["failed"] == summary["rounds"] >= 1
    assert "periodic purge failed" in err
    assert BASE not in err
