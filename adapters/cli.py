"""``console-auth``: the service's use cases and schema migrations from a shell.

A library error is one line on stderr and exit status 1, never a traceback. Log records
are dropped unless ``--verbose``, but for the settings' warnings; a token is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from uuid import UUID

from sqlalchemy import Engine

from console_auth.adapters import settings as settings_module
from console_auth.adapters.container import Container, build_container
from console_auth.adapters.settings import MetricsSettings, ProxySettings, load_settings
from console_auth.adapters.sql import current_revision, downgrade, upgrade
from console_auth.adapters.toml_files import read_small_file
from console_auth.application.ports import StoredConnection
from console_auth.application.purge import MAX_INTERVAL, PeriodicPurge
from console_auth.application.service import Explanation
from console_auth.domain import (
    TOKEN_LENGTH,
    ConsoleAuthError,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
    IssuedConsole,
)
from console_auth.domain.hosts import join_address
from console_auth.domain.model import parse_instance_uuid
from console_auth.domain.tokens import HASH_PREFIX_LENGTH
from console_auth.domain.types import MAX_PORT, MAX_TTL_SECONDS

PROG = "console-auth"
_KNOWN_OPTIONS = frozenset(ConsoleOptions.model_fields) - {"extra"}
BROKEN_PIPE_STATUS = 141
"""128 + SIGPIPE: what a shell reports for ``yes | head -1``'s writer."""
MAX_STDIN_LINE = 64 << 10
"""Bytes ``validate -`` reads: far above any access URL this library builds."""
LIST_PAGE = 500
"""Connections ``list`` asks the store for at a time."""
MAX_INSTANCES_FILE = 16 << 20
"""Bytes ``purge --instances-from`` reads: some 400,000 uuids, a node hosts fewer."""
_TOKEN_SHAPED = re.compile(
    r"\S*token=\S*|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{%d,}(?![A-Za-z0-9_-])" % TOKEN_LENGTH  # noqa: UP031
)
"""A word holding ``token=``, or a run of URL-safe characters as long as a
token: argparse echoes the argv words it refuses."""

# Without a handler of ours, Python's last-resort handler would print the
# service's warnings beside the one error line; --verbose adds a real one.
_QUIET = logging.NullHandler()

Command = Callable[[Container, argparse.Namespace], dict[str, Any]]
_T = TypeVar("_T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    try:
        args = _parser().parse_args(
            argv, argparse.Namespace(config=None, json=False, verbose=False)
        )
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    _log_to_stderr(verbose=args.verbose)
    try:
        container = build_container(load_settings(args.config))
        try:
            result = args.run(container, args)
        finally:
            container.shutdown_resources()
        _print(result, as_json=args.json)
        sys.stdout.flush()  # a closed pipe shows here, inside main, not at exit
    except ConsoleAuthError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    return 0


class _StderrWarnings(logging.Handler):
    """``console-auth: warning: ...`` on whatever ``sys.stderr`` is now."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{PROG}: warning: {record.getMessage()}", file=sys.stderr)


_WARNINGS = _StderrWarnings(logging.WARNING)
_SESSIONS = logging.StreamHandler(sys.stderr)
_SESSIONS.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def _log_to_stderr(*, verbose: bool) -> None:
    """Idempotent: ``main`` may run many times in one process (tests)."""
    logging.getLogger("console_auth").addHandler(_QUIET)
    settings_logger = logging.getLogger(settings_module.__name__)
    if verbose:
        settings_logger.removeHandler(_WARNINGS)
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    else:
        settings_logger.addHandler(_WARNINGS)


def _log_sessions(name: str, args: argparse.Namespace) -> None:
    """The logger's INFO lines are the command's output, like an access log."""
    if not args.verbose:  # else they already go to stderr
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(_SESSIONS)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit
    does not report the closed pipe a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's capture)
        pass


def _authorize(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    known = {key: value for key, value in args.option if key in _KNOWN_OPTIONS}
    extra = {key: value for key, value in args.option if key not in _KNOWN_OPTIONS}
    issued = container.service().authorize(
        args.instance,
        args.host,
        args.port,
        args.console_type,
        options={**known, "extra": extra},
        access_url_base=args.base,
        ttl=None if args.ttl is None else _ttl(args.ttl),
    )
    return _issued(issued)


def _console(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    """``authorize`` with the endpoint the configured console driver finds."""
    issued = container.consoles().authorize_console(
        args.instance,
        args.console_type,
        access_url_base=args.base,
        ttl=None if args.ttl is None else _ttl(args.ttl),
    )
    return _issued(issued)


def _issued(issued: IssuedConsole) -> dict[str, Any]:
    return {
        "token": issued.token.get_secret_value(),
        "access_url": issued.access_url,
        "connection": issued.connection.model_dump(mode="json"),
    }


def _ttl(seconds: int) -> timedelta:
    """Checked here too: a ``timedelta`` cannot even hold 10**20 seconds."""
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"--ttl must be from 1 to {MAX_TTL_SECONDS} seconds")
    return timedelta(seconds=seconds)


def _validate(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    service = container.service()
    connection = _presented(args, service.validate_url, service.validate)
    return {"connection": connection.model_dump(mode="json")}


def _explain(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    """Why the presented token is or is not good: printed, exit status 0
    either way (the command worked; the verdict is its output)."""
    service = container.service()
    return _explained(_presented(args, service.explain_url, service.explain))


def _presented(
    args: argparse.Namespace,
    by_url: Callable[[str], _T],
    by_token: Callable[[str, str | None], _T],
) -> _T:
    """The answer for the token or access URL given (``-``: on stdin)."""
    value = _stdin_line() if args.presented == "-" else args.presented
    if "?" not in value and "://" not in value:  # a bare token
        return by_token(value, args.instance)
    if args.instance is not None:
        raise InvalidRequest("--instance goes with a bare token; a URL carries its own uuid")
    return by_url(value)


def _stdin_line() -> str:
    """One line of stdin, read as bytes: the terminal's encoding is no part
    of a token or URL, and a bad byte must be refused, not a traceback."""
    stream: Any = getattr(sys.stdin, "buffer", sys.stdin)
    line: bytes | str = stream.readline(MAX_STDIN_LINE + 1)
    if len(line) > MAX_STDIN_LINE:
        raise InvalidRequest(f"standard input: a line is longer than {MAX_STDIN_LINE} bytes")
    if isinstance(line, str):
        return line.strip()
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest("standard input is not UTF-8 text") from None


def _explained(explanation: Explanation) -> dict[str, Any]:
    stored = explanation.stored
    return {
        "verdict": explanation.verdict,
        "detail": explanation.detail,
        "token_hash": explanation.token_hash,
        "instance": None if explanation.instance_uuid is None else str(explanation.instance_uuid),
        "looked_in": explanation.looked_in,
        "stored": None if stored is None else _listed(StoredConnection(stored)),
    }


def _revoke(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    if (args.instance is None) == (args.token_hash is None):
        raise InvalidRequest("revoke takes an instance uuid or --token-hash, and only one")
    if args.token_hash is not None:
        return _listed(StoredConnection(container.service().revoke_token(args.token_hash)))
    return {"count": container.service().revoke_instance(args.instance)}


def _list(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    """Page after page, each printed as it comes: memory holds one page."""
    service = container.service()
    instance = None if args.instance is None else parse_instance_uuid(args.instance)
    after: str | None = None
    if not args.json:
        print(" ".join(key.upper() for key in _LIST_COLUMNS))
    while True:
        page = service.connections(
            after, instance_uuid=instance, host=args.host, expired=args.expired, limit=LIST_PAGE
        )
        for stored in page:
            row = _listed(stored)
            print(json.dumps(row) if args.json else " ".join(map(_text, row.values())))
        sys.stdout.flush()
        if not page:
            return {}
        after = page[-1].connection.token_hash


_LIST_COLUMNS = ("token_hash", "instance", "kind", "target", "issued", "expires", "cell")


def _listed(stored: StoredConnection) -> dict[str, Any]:
    """A connection as an operator sees it: a hash prefix, never the whole
    hash (the store's key) and never a token (no store holds one)."""
    connection, cell = stored
    values = (
        connection.token_hash[:HASH_PREFIX_LENGTH],
        str(connection.instance_uuid),
        connection.console_type.value,
        join_address(connection.host, connection.port),
        None if connection.issued_at is None else connection.issued_at.isoformat(),
        connection.expires_at.isoformat(),
        cell,
    )
    return dict(zip(_LIST_COLUMNS, values, strict=True))


def _purge(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    service = container.service()

    def once() -> int:
        """Of the instances the file lists (read again each round: the host
        service rewrites it), of a host, or of everything."""
        if args.instances_from is None:
            return service.purge_expired(args.host)
        return service.purge_instances(_instances(args.instances_from))

    return {"count": once()} if args.every is None else _purge_every(once, args)


def _instances(path: Path) -> list[UUID]:
    """One uuid a line; blank lines and ``#`` comments are skipped."""
    _, data = read_small_file(path, "--instances-from", MAX_INSTANCES_FILE)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidRequest(f"--instances-from {path}: not UTF-8 text") from None
    instances = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                instances.append(parse_instance_uuid(text))
            except InvalidRequest:
                raise InvalidRequest(
                    f"--instances-from {path}, line {number}: not an instance uuid"
                ) from None
    return instances


def _purge_every(once: Callable[[], int], args: argparse.Namespace) -> dict[str, Any]:
    """Rounds in a thread until SIGTERM or SIGINT, then a summary; exit 0. The signals are
    blocked before any thread starts and taken with ``sigwait``: no handler runs in a round."""
    _log_sessions("console_auth.application.purge", args)  # like the proxy's sessions
    ending = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ending)
    loop = PeriodicPurge(once, args.every)
    try:
        loop.start()
        _print({"every": args.every}, as_json=args.json)
        sys.stdout.flush()
        signal.sigwait(ending)
    finally:
        stopped = loop.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if not stopped:
        print(f"{PROG}: warning: a purge round was still running at exit", file=sys.stderr)
    return {"rounds": loop.rounds, "failed": loop.failures, "count": loop.purged}


def _every(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_INTERVAL:g} seconds, got {text!r}")
    return seconds


def _ports(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    leases = container.ports().leases(host=args.host, instance_uuid=args.instance)
    return {"ports": [lease.model_dump(mode="json", exclude={"lease_id"}) for lease in leases]}


def _proxy(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    """Serve consoles until SIGTERM or SIGINT; the session lines go to stderr."""
    try:  # the ``proxy`` extra: the other commands work without aiohttp
        from console_auth.adapters.web.proxy import ProxyConfig, create_app, serve
    except ImportError as exc:
        raise ConsoleAuthError(
            f"the proxy needs the proxy extra (pip install 'console-auth[proxy]'): {exc}"
        ) from None
    metrics = MetricsSettings.model_validate(container.config.metrics())
    if metrics.enabled is None:  # on when the metrics extra is installed
        installed = importlib.util.find_spec("prometheus_client") is not None
        container.config.metrics.enabled.from_value(installed)
    config = ProxyConfig.from_settings(
        ProxySettings.model_validate(container.config.proxy()),
        serial_lease_ttl=container.config.serial_lease_ttl(),
        web_dir=args.web,
        metrics=metrics,
    )
    service = container.service()
    prometheus = container.metrics()
    ports = None
    if ConsoleType.SERIAL in config.console_types:  # port leases only for serial consoles
        try:
            ports = container.ports()
        except InvalidRequest as exc:  # memcached: say which setting asked for them
            raise InvalidRequest(f"proxy.console_types includes serial: {exc}") from None
    app = create_app(
        service, ports, config, exposition=None if prometheus is None else prometheus.exposition
    )
    host, port = args.listen

    def ready(address: str) -> None:
        _log_sessions("console_auth.adapters.web", args)
        _print({"listening": address}, as_json=args.json)
        sys.stdout.flush()

    try:
        asyncio.run(serve(app, host, port, ready))
    except OSError as exc:  # the listening socket: in use, or no such address
        raise ConsoleAuthError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return {}


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit() and int(port) <= MAX_PORT):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _web_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return path.resolve()


def _db(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    """Every cell's database in turn (or ``--cell``'s), stopping at the first
    that fails; running the command again skips the cells already done."""
    cells: dict[str, Any] = container.config.cells()
    if args.cell is not None and not cells:
        raise InvalidRequest("--cell needs cells in the settings; none are configured")
    if args.cell is not None and args.cell not in cells:
        raise InvalidRequest(f"no cell is named {args.cell!r}; cells: {', '.join(cells)}")
    engines = container.migration_engines()  # no schema check, so `db` can fix a schema
    if not cells:
        return {"revision": _migrate(engines[""], args)}
    revisions: dict[str, str | None] = {}
    for name in cells if args.cell is None else [args.cell]:
        try:
            revisions[name] = _migrate(engines[name], args)
        except ConsoleAuthError as exc:
            done = "; done: " + ", ".join(revisions) if revisions else ""
            raise ConsoleAuthError(f"cell {name}: {exc}{done}") from exc
    return {"cells": revisions}


def _migrate(engine: Engine, args: argparse.Namespace) -> str | None:
    if args.db_command == "upgrade":
        upgrade(engine, args.revision)
    elif args.db_command == "downgrade":
        downgrade(engine, args.revision)
    return current_revision(engine)


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    if not result:  # a command that printed as it went (proxy)
        return
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key == "connection":
            for field, field_value in value.items():
                print(f"{field}: {_text(field_value)}")
        elif key == "ports":
            for lease in value:
                print(
                    f"{lease['host']}:{lease['port']} {lease['kind']} "
                    f"instance={lease['instance_uuid']} proxy={_text(lease['proxy_id'])} "
                    f"since={lease['since']} until={lease['expires_at']}"
                )
        else:
            print(f"{key}: {_text(value)}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; the value is a JSON scalar when it parses as one."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value if value is None or isinstance(value, bool | int | float | str) else raw


class _Parser(argparse.ArgumentParser):
    """Usage errors with token-shaped words redacted; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        super().error(_TOKEN_SHAPED.sub("<redacted>", message))


# Options accepted before or after a command. Unset, they set nothing, so a command's
# parser never resets one given before it; ``main`` gives their defaults.
_GLOBAL = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
_GLOBAL.add_argument("--config", metavar="FILE", help="TOML settings file (the environment wins)")
_GLOBAL.add_argument("--json", action="store_true", help="print one JSON object")
_GLOBAL.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
_CONSOLE_TYPE: dict[str, Any] = {
    "required": True,
    "dest": "console_type",
    "choices": [kind.value for kind in ConsoleType],
}
_TTL: dict[str, Any] = {
    "type": int,
    "metavar": "SECONDS",
    "help": "lifetime (default: the token_ttl setting)",
}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Issue and check console tokens.", parents=[_GLOBAL])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    authorize = _command(commands, "authorize", "issue a token for one console", _authorize)
    authorize.add_argument("--instance", required=True, metavar="UUID")
    authorize.add_argument("--host", required=True, help="compute host the proxy dials")
    authorize.add_argument("--port", required=True, type=int)
    authorize.add_argument("--type", **_CONSOLE_TYPE)
    authorize.add_argument("--base", metavar="URL", help="access URL base given to the user")
    authorize.add_argument("--ttl", **_TTL)
    authorize.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"repeatable; {', '.join(sorted(_KNOWN_OPTIONS))} or an extra key",
    )

    console = _command(
        commands,
        "console",
        "issue a token for an instance's console, found by the console driver",
        _console,
    )
    console.add_argument("--instance", required=True, metavar="UUID")
    console.add_argument("--type", **_CONSOLE_TYPE)
    console.add_argument(
        "--base", metavar="URL", help="access URL base (default: the kind's access_url_bases)"
    )
    console.add_argument("--ttl", **_TTL)

    for name, summary, run in (
        ("validate", "print what a token or URL grants", _validate),
        ("explain", "say why a token or URL is or is not good", _explain),
    ):
        presented = _command(commands, name, summary, run)
        presented.add_argument(
            "presented",
            metavar="TOKEN_OR_URL",
            help="a token, an access URL, or - for stdin; -- before a token starting with -",
        )
        presented.add_argument("--instance", metavar="UUID", help="instance the token is for")

    revoke = _command(
        commands, "revoke", "delete every token of an instance, or one token", _revoke
    )
    revoke.add_argument("instance", metavar="UUID", nargs="?")
    revoke.add_argument(
        "--token-hash",
        metavar="PREFIX",
        help=f"only the token whose hash starts with PREFIX ({HASH_PREFIX_LENGTH}+ hex digits)",
    )

    list_ = _command(commands, "list", "list stored tokens, one line each (no token)", _list)
    which = list_.add_mutually_exclusive_group()
    which.add_argument("--instance", metavar="UUID", help="only this instance's tokens")
    which.add_argument("--host", help="only tokens for this host")
    list_.add_argument("--expired", action="store_true", help="expired tokens too")

    purge = _command(commands, "purge", "delete expired tokens", _purge)
    whose = purge.add_mutually_exclusive_group()
    whose.add_argument("--host", help="only tokens for this compute host")
    whose.add_argument(
        "--instances-from",
        type=Path,
        metavar="FILE",
        help="only tokens of the instances FILE lists, one uuid a line (read each round)",
    )
    purge.add_argument(
        "--every",
        type=_every,
        metavar="SECONDS",
        help="purge every SECONDS (jittered) until SIGTERM or SIGINT",
    )

    ports = _command(commands, "ports", "list taken serial ports: who, since when", _ports)
    ports.add_argument("--host", help="only this compute host's ports")
    ports.add_argument("--instance", metavar="UUID", help="only this instance's ports")

    proxy = _command(commands, "proxy", "serve consoles to browsers (WebSocket)", _proxy)
    proxy.add_argument(
        "--listen", required=True, type=_listen, metavar="HOST:PORT", help="e.g. 127.0.0.1:6080"
    )
    proxy.add_argument("--web", type=_web_dir, metavar="DIR", help="static files (noVNC) at /")

    db = _command(commands, "db", "database schema migrations", _db)
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade_ = _command(actions, "upgrade", "migrate up, then print the revision")
    upgrade_.add_argument("--revision", metavar="REV", default="head", help="default: head")
    downgrade_ = _command(actions, "downgrade", "migrate down, then print the revision")
    downgrade_.add_argument("revision", metavar="REV", help="e.g. base (drops every table)")
    current = _command(actions, "current", "print the applied revision")
    for action in (upgrade_, downgrade_, current):
        action.add_argument(
            "--cell", metavar="NAME", help="only this cell's database (default: every cell)"
        )
    return parser


def _command(
    group: argparse._SubParsersAction[_Parser],
    name: str,
    summary: str,
    run: Command | None = None,
) -> _Parser:
    parser = group.add_parser(name, help=summary, description=summary, parents=[_GLOBAL])
    if run is not None:
        parser.set_defaults(run=run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
