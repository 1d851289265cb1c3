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
import unicodedata
from typing import Any

from . import __version__, admin, config as config_module, errors
from .errors import AdminError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PERMISSION, EXIT_NOT_RUNNING = 0, 1, 2, 4, 7
EXIT_BY_CODE = {errors.PERMISSION_DENIED: EXIT_PERMISSION, errors.UNKNOWN_COMMAND: EXIT_USAGE,
                errors.BAD_REQUEST: EXIT_FAILED}


def socket_candidates(args: argparse.Namespace) -> list[str]:
    """Where to look for the daemon: explicit setting, system path, per-user path."""
    explicit = args.admin_socket or os.environ.get(config_module.ADMIN_SOCKET_ENV)
    if explicit:
        return [explicit]
    from_file = config_module.read_file(args.config).get("admin_socket")
    if from_file:
        return [str(from_file)]
    candidates = []
    if os.path.exists(config_module.SYSTEM_ADMIN_SOCKET):
        candidates.append(config_module.SYSTEM_ADMIN_SOCKET)
    user_path = config_module.default_admin_socket()
    if user_path not in candidates:
        candidates.append(user_path)
    return candidates


# --- formatters, apart from the transport

def format_who(result: dict) -> str:
    clients = result["clients"]
    if not clients:
        return "no clients connected"
    rows = [("NICKNAME", "ADDRESS", "CONNECTED", "IDLE", "SENT", "RECEIVED")]
    rows += [(c["nickname"], c["address"], c["connected"], f"{c['idle_s']:.0f}s",
              str(c["sent"]), str(c["received"])) for c in clients]
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    """Columns aligned by what a terminal shows, wide characters included."""
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell + " " * (w - display_width(cell))
                               for cell, w in zip(row, widths)).rstrip() for row in rows)


def display_width(text: str) -> int:
    """Columns a terminal gives `text`: wide East Asian characters take two, marks none."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def format_stats(result: dict) -> str:
    width = max(len(key) for key in result)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in result.items())


def format_ban(result: dict) -> str:
    until = f"until {result['until']}" if result["until"] else "until unbanned"
    kicked = f"; kicked {', '.join(result['kicked'])}" if result["kicked"] else ""
    return f"banned {result['banned']} {until}{kicked}"


def format_bans(result: dict) -> str:
    bans = result["bans"]
    if not bans:
        return "no bans"
    rows = [("TARGET", "UNTIL", "SINCE", "BY UID", "REASON")]
    rows += [(b["target"], b["until"] or "unbanned", b["since"], str(b["by_uid"]), b["reason"])
             for b in bans]
    return _table(rows)


FORMATTERS = {
    "who": format_who,
    "stats": format_stats,
    "kick": lambda result: f"kicked {result['kicked']}",
    "say": lambda result: f"announced to {result['clients']} client"
                          f"{'' if result['clients'] == 1 else 's'}",
    "ban": format_ban,
    "unban": lambda result: f"unbanned {result['unbanned']}",
    "bans": format_bans,
}


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
    parser.add_argument("--timeout", type=positive_seconds, default=10.0,
                        help="seconds to wait for a reply (default 10)")
    # --json is accepted after the command too (`tcpchatctl who --json`)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print the raw JSON result")
    commands = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    commands.add_parser("who", help="list connected clients", parents=[json_flag],
                        description="List connected clients, sorted by nickname.")
    kick = commands.add_parser("kick", help="disconnect a client", parents=[json_flag],
                               description="Disconnect a client; it sees the reason.")
    kick.add_argument("nickname", help="the client's nickname (case-insensitive)")
    kick.add_argument("text", nargs="*", metavar="REASON",
                      help="the reason, as words after the nickname (the IRC habit)")
    kick.add_argument("--reason", help="shown to the client and the room")
    commands.add_parser("stats", help="show counters", parents=[json_flag],
                        description="Show the daemon's counters.")
    say = commands.add_parser("say", help="announce to every client", parents=[json_flag],
                              description="Send a server announcement to every client.")
    say.add_argument("text", nargs="+", help="the announcement")
    ban = commands.add_parser(
        "ban", help="ban an address, a network or a nickname", parents=[json_flag],
        description="Ban TARGET (an address or network such as 203.0.113.7 or 2001:db8::/32, "
        "else a nickname); every matching client is kicked at once. Kept on disk: bans "
        "survive restarts.")
    ban.add_argument("target", help="address, network or nickname")
    ban.add_argument("--for", dest="duration", metavar="DURATION",
                     help="how long: 90s, 15m, 2h, 7d (default: until unbanned)")
    ban.add_argument("--reason", help="shown to the banned client")
    ban.add_argument("--force", action="store_true",
                     help="needed for a ban that matches every address (0.0.0.0/0, ::/0)")
    unban = commands.add_parser("unban", help="lift a ban", parents=[json_flag],
                                description="Lift the ban on TARGET.")
    unban.add_argument("target", help="as it was banned")
    commands.add_parser("bans", help="list the bans", parents=[json_flag],
                        description="List the bans in force.")
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
    if args.cmd == "kick":
        reason = args.reason or " ".join(args.text)
        return {"nickname": args.nickname, **({"reason": reason} if reason else {})}
    if args.cmd == "say":
        return {"text": " ".join(args.text)}
    if args.cmd == "ban":
        return {"target": args.target, **({"for": args.duration} if args.duration else {}),
                **({"reason": args.reason} if args.reason else {}),
                **({"force": True} if args.force else {})}
    if args.cmd == "unban":
        return {"target": args.target}
    return {}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        candidates = socket_candidates(args)
    except ConfigError as exc:
        return fail(exc.message, EXIT_USAGE)
    cmd_args = request_args(args)
    for value in (v for v in cmd_args.values() if isinstance(v, str)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 came in through argv
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            return fail(f"argument is not valid UTF-8: {shown}", EXIT_USAGE)
    try:
        result = call_first(candidates, args.cmd, cmd_args, args.timeout)
    except AdminError as exc:
        return fail(exc.message, EXIT_BY_CODE.get(exc.code, EXIT_FAILED))
    except NotRunning as exc:
        return fail(str(exc), EXIT_NOT_RUNNING)
    except PermissionError as exc:
        return fail(f"permission denied: {exc.filename}", EXIT_PERMISSION)
    except OSError as exc:
        return fail(f"cannot talk to the daemon: {exc.strerror or exc}", EXIT_FAILED)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json
          else FORMATTERS[args.cmd](result))
    return EXIT_OK


class NotRunning(Exception):
    pass


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
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
