"""``console-auth``: the service's use cases and schema migrations from a shell.

For operators and scripts: every library error becomes one line on stderr
and exit status 1 (usage errors are argparse's 2), never a traceback; output
into a closed pipe ends the command quietly with 141, as a shell reports a
process killed by SIGPIPE. The token ``authorize`` prints is the user's
output, so it goes to stdout; it is never logged, and a usage error shows
token-shaped words as ``<redacted>`` (pass tokens on stdin with
``validate -``: argv is visible to every user of the host). The library's
log records are dropped unless ``--verbose`` sends them to stderr, except
the settings' warnings (an unknown ``CONSOLE_AUTH_*`` variable), which are
always shown.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Engine

from console_auth.adapters import settings as settings_module
from console_auth.adapters.container import Container, build_container
from console_auth.adapters.settings import MetricsSettings, ProxySettings, load_settings
from console_auth.adapters.sql import current_revision, downgrade, upgrade
from console_auth.domain import (
    TOKEN_LENGTH,
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
)
from console_auth.domain.types import MAX_PORT, MAX_TTL_SECONDS

PROG = "console-auth"
_KNOWN_OPTIONS = frozenset(ConsoleOptions.model_fields) - {"extra"}
BROKEN_PIPE_STATUS = 141
"""128 + SIGPIPE: what a shell reports for ``yes | head -1``'s writer."""
MAX_STDIN_LINE = 64 << 10
"""Bytes ``validate -`` reads: far above any access URL this library builds."""
_TOKEN_SHAPED = re.compile(
    r"\S*token=\S*|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{%d,}(?![A-Za-z0-9_-])" % TOKEN_LENGTH  # noqa: UP031
)
"""A word holding ``token=``, or a run of URL-safe characters as long as a
token: argparse echoes the argv words it refuses."""

# Without a handler of ours, Python's last-resort handler would print the
# service's warnings beside the one error line; --verbose adds a real one.
_QUIET = logging.NullHandler()

Command = Callable[[Container, argparse.Namespace], dict[str, Any]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    _log_to_stderr(verbose=args.verbose)
    try:
        container = build_container(load_settings(args.config))
        try:
            result = args.run(container, args)
        finally:
            container.shutdown_resources()
    except ConsoleAuthError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    _print(result, as_json=args.json)
    sys.stdout.flush()  # a closed pipe shows here, inside main, not at exit
    return 0


class _StderrWarnings(logging.Handler):
    """``console-auth: warning: ...`` on whatever ``sys.stderr`` is now."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


_WARNINGS = _StderrWarnings()
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
    return {
        "token": issued.token.get_secret_value(),
        "access_url": issued.access_url,
        "connection": _dump(issued.connection),
    }


def _ttl(seconds: int) -> timedelta:
    """Checked here too: a ``timedelta`` cannot even hold 10**20 seconds."""
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"--ttl must be from 1 to {MAX_TTL_SECONDS} seconds")
    return timedelta(seconds=seconds)


def _validate(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    value = _stdin_line() if args.presented == "-" else args.presented
    service = container.service()
    if _is_url(value):
        if args.instance is not None:
            raise InvalidRequest("--instance goes with a bare token; a URL carries its own uuid")
        connection = service.validate_url(value)
    else:
        connection = service.validate(value, args.instance)
    return {"connection": _dump(connection)}


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


def _revoke(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    return {"count": container.service().revoke_instance(args.instance)}


def _purge(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    return {"count": container.service().purge_expired(args.host)}


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
        container.config.metrics.enabled.from_value(_installed("prometheus_client"))
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
        if not args.verbose:  # the session lines are the proxy's output, like an access log
            sessions = logging.getLogger("console_auth.adapters.web")
            sessions.setLevel(logging.INFO)
            sessions.addHandler(_SESSIONS)
        _print({"listening": address}, as_json=args.json)
        sys.stdout.flush()

    try:
        asyncio.run(serve(app, host, port, ready))
    except OSError as exc:  # the listening socket: in use, or no such address
        raise ConsoleAuthError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return {}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
    cells: dict[str, Any] = container.config.cells()
    if cells:
        return _db_cells(container, args, cells)
    if args.cell is not None:
        raise InvalidRequest("--cell needs cells in the settings; none are configured")
    # No schema check on these engines, so `db` can fix a schema.
    return {"revision": _migrate(container.migration_engines()[""], args)}


def _db_cells(
    container: Container, args: argparse.Namespace, cells: dict[str, Any]
) -> dict[str, Any]:
    """Every cell's database in turn (or ``--cell``'s), stopping at the first
    that fails; running the command again skips the cells already done."""
    if args.cell is not None and args.cell not in cells:
        raise InvalidRequest(f"no cell is named {args.cell!r}; cells: {', '.join(cells)}")
    engines = container.migration_engines()
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


def _dump(connection: ConsoleConnection) -> dict[str, Any]:
    return connection.model_dump(mode="json")


def _is_url(value: str) -> bool:
    return "?" in value or "://" in value


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


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before or after a command. A command's parser adds
    them with SUPPRESS defaults so it never resets one given before it."""
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (the environment wins)", **unset
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object", **unset)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr", **unset)


class _Parser(argparse.ArgumentParser):
    """Usage errors with token-shaped words redacted; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        super().error(_TOKEN_SHAPED.sub("<redacted>", message))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Issue and check console tokens.")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    authorize = _command(commands, "authorize", "issue a token for one console", _authorize)
    authorize.add_argument("--instance", required=True, metavar="UUID")
    authorize.add_argument("--host", required=True, help="compute host the proxy dials")
    authorize.add_argument("--port", required=True, type=int)
    authorize.add_argument(
        "--type", required=True, dest="console_type", choices=[kind.value for kind in ConsoleType]
    )
    authorize.add_argument("--base", metavar="URL", help="access URL base given to the user")
    authorize.add_argument(
        "--ttl", type=int, metavar="SECONDS", help="lifetime (default: the token_ttl setting)"
    )
    authorize.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"repeatable; {', '.join(sorted(_KNOWN_OPTIONS))} or an extra key",
    )

    validate = _command(commands, "validate", "print what a token or URL grants", _validate)
    validate.add_argument(
        "presented",
        metavar="TOKEN_OR_URL",
        help="a token, an access URL, or - for stdin; put -- before a token that starts with -",
    )
    validate.add_argument("--instance", metavar="UUID", help="instance the token must be for")

    revoke = _command(commands, "revoke", "delete every token of an instance", _revoke)
    revoke.add_argument("instance", metavar="UUID")

    purge = _command(commands, "purge", "delete expired tokens", _purge)
    purge.add_argument("--host", help="only tokens for this compute host")

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
    parser = group.add_parser(name, help=summary, description=summary)
    _global_options(parser, top=False)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
