"""`tcpchatctl`: control a running tcpchatd through its admin socket.

Exit codes, LSB style (as supervisorctl): 0 ok; 1 the command failed; 2 usage;
4 permission denied; 7 not running. Always one clear line on stderr on failure,
never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

from .. import __version__
from ..control import admin, errors, paths
from ..control.errors import AdminError
from ..control.specs import SPECS
from .output import exit_with

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PERMISSION, EXIT_NOT_RUNNING = 0, 1, 2, 4, 7
EXIT_BY_CODE = {errors.PERMISSION_DENIED: EXIT_PERMISSION, errors.UNKNOWN_COMMAND: EXIT_USAGE,
                errors.BAD_REQUEST: EXIT_FAILED}


DEFAULT_TIMEOUT = 10.0
UPGRADE_TIMEOUT = 120.0  # a pre-flight and a new image's start, at 10,000 clients too

def socket_candidates(args: argparse.Namespace) -> list[str]:
    """Where to look for the daemon: explicit setting, system path, per-user path."""
    explicit = args.admin_socket or os.environ.get(paths.ADMIN_SOCKET_ENV)
    if explicit:
        return [explicit]
    from_file = paths.read_config_file(args.config).get("admin_socket")
    if from_file:
        return [str(from_file)]
    candidates = []
    if os.path.exists(paths.SYSTEM_ADMIN_SOCKET):
        candidates.append(paths.SYSTEM_ADMIN_SOCKET)
    user_path = paths.default_admin_socket()
    if user_path not in candidates:
        candidates.append(user_path)
    return candidates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpchatctl", description="Control a running tcpchatd through its admin socket.",
        epilog="exit status: 0 ok, 1 command failed, 2 usage, 4 permission denied, "
               "7 daemon not running")
    parser.add_argument("--version", action="version", version=f"tcpchatctl {__version__}")
    parser.add_argument("--admin-socket", "--socket", dest="admin_socket", metavar="PATH",
                        help="admin socket (default: $TCPCHATD_ADMIN_SOCKET, the config file's "
                        "admin_socket, /run/tcpchatd/admin.sock if it exists, else the "
                        "per-user path)")
    parser.add_argument("--config", metavar="PATH", help="config file to read admin_socket from")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--timeout", type=positive_seconds, default=None,
                        help=f"seconds to wait for a reply (default {DEFAULT_TIMEOUT:g}; "
                        f"{UPGRADE_TIMEOUT:g} for upgrade)")
    # --json is accepted after the command too (`tcpchatctl who --json`)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print the raw JSON result")
    commands = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    for spec in SPECS.values():  # one table serves tcpchatctl and the daemon (specs.py)
        sub = commands.add_parser(spec.name, help=spec.help, description=spec.description,
                                  parents=[json_flag])
        for arg in spec.args:
            if arg.words:
                sub.add_argument(f"words_{arg.key}", nargs="*" if arg.flag or not arg.required
                                 else "+", metavar=arg.key.upper(), help=arg.help)
            if arg.flag and arg.boolean:
                sub.add_argument(arg.flag, dest=arg.key, action="store_true", help=arg.help)
            elif arg.flag:
                sub.add_argument(arg.flag, dest=arg.key, metavar=arg.metavar, help=arg.help)
            elif not arg.words:
                sub.add_argument(arg.key, metavar=arg.metavar, help=arg.help,
                                 nargs=None if arg.required else "?")
    return parser


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def request_args(args: argparse.Namespace) -> dict:
    """The request's args for the parsed command line (specs.py says which are which)."""
    values: dict[str, Any] = {}
    for arg in SPECS[args.cmd].args:
        value = getattr(args, arg.key, None) if arg.flag or not arg.words else None
        if arg.words and not value:
            value = " ".join(getattr(args, f"words_{arg.key}") or []) or None
        if value:  # an unset flag or an empty reason is left to the daemon's default
            values[arg.key] = value
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; words after an option go on with the words before it
    (`kick ann --room dev off topic`: argparse alone takes no words after --room)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    words = [arg for arg in SPECS[args.cmd].args if arg.words]
    if extra and words and not any(item.startswith("-") for item in extra):
        key = f"words_{words[0].key}"
        setattr(args, key, (getattr(args, key) or []) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        candidates = socket_candidates(args)
    except paths.ConfigFileError as exc:
        return fail(str(exc), EXIT_USAGE)
    cmd_args = request_args(args)
    wanted = SPECS[args.cmd].one_of
    if wanted and not any(key in cmd_args for key in wanted):
        return fail(f"{args.cmd} needs {wanted[0].upper()} or --{wanted[1]} NAME", EXIT_USAGE)
    if args.cmd == "account":
        try:
            cmd_args.update(account_password(cmd_args))
        except AccountUsage as exc:
            return fail(str(exc), EXIT_USAGE)
    for value in (v for v in cmd_args.values() if isinstance(v, str)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 came in through argv
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            return fail(f"argument is not valid UTF-8: {shown}", EXIT_USAGE)
    try:
        timeout = args.timeout or (UPGRADE_TIMEOUT if args.cmd == "upgrade" else DEFAULT_TIMEOUT)
        result = call_first(candidates, args.cmd, cmd_args, timeout)
    except AdminError as exc:
        return fail(exc.message, EXIT_BY_CODE.get(exc.code, EXIT_FAILED))
    except NotRunning as exc:
        return fail(str(exc), EXIT_NOT_RUNNING)
    except PermissionError as exc:
        return fail(f"permission denied: {exc.filename}", EXIT_PERMISSION)
    except OSError as exc:
        return fail(f"cannot talk to the daemon: {exc.strerror or exc}", EXIT_FAILED)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json
          else SPECS[args.cmd].show(result))
    return EXIT_OK


class NotRunning(Exception):
    pass


class AccountUsage(Exception):
    pass


ACCOUNT_ACTIONS = {"add": 1, "passwd": 1, "del": 1, "role": 2, "list": 0}  # words after


def account_password(cmd_args: dict) -> dict:
    """`account add|passwd`: the password, asked twice on a terminal, else one line of
    standard input (never argv: it would show in `ps` and the shell's history)."""
    action = cmd_args.get("action")
    if action not in ACCOUNT_ACTIONS:
        raise AccountUsage(f"unknown account action {action!r}: "
                           f"{', '.join(ACCOUNT_ACTIONS)}")
    wanted = ACCOUNT_ACTIONS[action]
    given = ("name" in cmd_args) + ("role" in cmd_args)
    if given < wanted or given > wanted + (action == "add"):
        usage = {"add": "account add NAME [ROLE]", "passwd": "account passwd NAME",
                 "del": "account del NAME", "role": "account role NAME ROLE",
                 "list": "account list"}[action]
        raise AccountUsage(f"usage: tcpchatctl {usage}")
    if action not in ("add", "passwd"):
        return {}
    if sys.stdin.isatty():
        import getpass
        password = getpass.getpass(f"password for {cmd_args['name']}: ")
        if getpass.getpass("again: ") != password:
            raise AccountUsage("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise AccountUsage("the password is empty; nothing was changed")
    return {"password": password}


def call_first(candidates: list[str], cmd: str, cmd_args: dict, timeout: float) -> Any:
    """Ask the first candidate socket that exists; NotRunning when none answers."""
    for path in candidates:
        try:
            return admin.call(path, cmd, cmd_args, timeout)
        except PermissionError as exc:
            exc.filename = path
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise
    raise NotRunning(f"tcpchatd is not running (no daemon answers on "
                     f"{' or '.join(candidates)})")


def fail(message: str, code: int) -> int:
    print(f"tcpchatctl: {message}", file=sys.stderr)
    return code


def main_exit() -> None:
    exit_with(main)


if __name__ == "__main__":
    main_exit()
