"""``console-auth``: the service's use cases and schema migrations from a shell.

For operators and scripts: every library error becomes one line on stderr
and exit status 1 (usage errors are argparse's 2), never a traceback. The
token ``authorize`` prints is the user's output, so it goes to stdout; it is
never logged. The library's log records are dropped unless ``--verbose``
sends them to stderr: only then does the CLI configure logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from alembic.util import CommandError
from sqlalchemy import Engine

from console_auth.adapters.container import Container, build_container
from console_auth.adapters.settings import load_settings
from console_auth.adapters.sql import current_revision, downgrade, upgrade
from console_auth.domain import (
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
)

PROG = "console-auth"
_KNOWN_OPTIONS = frozenset(ConsoleOptions.model_fields) - {"extra"}

# Without a handler of ours, Python's last-resort handler would print the
# service's warnings beside the one error line; --verbose adds a real one.
_QUIET = logging.NullHandler()

Command = Callable[[Container, argparse.Namespace], dict[str, Any]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    logging.getLogger("console_auth").addHandler(_QUIET)  # idempotent
    if args.verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    try:
        container = build_container(load_settings(args.config))
        try:
            result = args.run(container, args)
        finally:
            container.shutdown_resources()
    except (ConsoleAuthError, CommandError) as exc:  # CommandError: e.g. an unknown revision
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    _print(result, as_json=args.json)
    return 0


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
        ttl=None if args.ttl is None else timedelta(seconds=args.ttl),
    )
    return {
        "token": issued.token.get_secret_value(),
        "access_url": issued.access_url,
        "connection": _dump(issued.connection),
    }


def _validate(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    value = sys.stdin.readline().strip() if args.presented == "-" else args.presented
    service = container.service()
    if _is_url(value):
        if args.instance is not None:
            raise InvalidRequest("--instance goes with a bare token; a URL carries its own uuid")
        connection = service.validate_url(value)
    else:
        connection = service.validate(value, args.instance)
    return {"connection": _dump(connection)}


def _revoke(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    return {"count": container.service().revoke_instance(args.instance)}


def _purge(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    return {"count": container.service().purge_expired(args.host)}


def _ports(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    leases = container.ports().leases(host=args.host, instance_uuid=args.instance)
    return {"ports": [lease.model_dump(mode="json", exclude={"lease_id"}) for lease in leases]}


def _db(container: Container, args: argparse.Namespace) -> dict[str, Any]:
    cells: dict[str, Any] = container.config.cells()
    if cells:
        return _db_cells(container, args, cells)
    if args.cell is not None:
        raise InvalidRequest("--cell needs cells in the settings; none are configured")
    # Migrations run only when asked: opening must not move the schema first.
    container.config.database.auto_migrate.from_value(False)
    return {"revision": _migrate(container.engine(), args)}


def _db_cells(
    container: Container, args: argparse.Namespace, cells: dict[str, Any]
) -> dict[str, Any]:
    """Every cell's database in turn (or ``--cell``'s), stopping at the first
    that fails; running the command again skips the cells already done."""
    if args.cell is not None and args.cell not in cells:
        raise InvalidRequest(f"no cell is named {args.cell!r}; cells: {', '.join(cells)}")
    for name in cells:
        container.config.cells[name].database.auto_migrate.from_value(False)
    engines = container.cell_engines()
    revisions: dict[str, str | None] = {}
    for name in cells if args.cell is None else [args.cell]:
        try:
            revisions[name] = _migrate(engines[name], args)
        except (ConsoleAuthError, CommandError) as exc:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Issue and check console tokens.")
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
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    run: Command | None = None,
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=summary, description=summary)
    _global_options(parser, top=False)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
