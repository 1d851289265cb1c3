"""What a package builds from the code itself, so it can never drift from it: man pages
and bash completion from the commands' own argparse parsers, and the commented config
file from the config module.

    python3 -m tcpchatd.service.docs OUTDIR

writes OUTDIR/tcpchatd.8, tcpchatctl.1, tcpchat-client.1 (argparse-manpage's
`build_manpages`: the extra `tcpchatd[docs]`, Debian's python3-argparse-manpage),
OUTDIR/completion/{tcpchatd,tcpchatctl,tcpchat-client} and OUTDIR/tcpchatd.toml. The
Debian package builds them; quickstart.sh too. Everything is made before anything is
written: without argparse-manpage it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..cli import client, ctl
from . import config as config_module
from . import main as daemon

CONFIG_FILE = ("/etc/tcpchatd/tcpchatd.toml",
               "the config file: every setting, commented out with its default")
ADMIN_SOCKET = ("/run/tcpchatd/admin.sock", "the admin socket (tcpchatd-admin.socket); members "
                "of the group tcpchatd-admin may use it")


@dataclass(frozen=True)
class Command:
    name: str
    section: int
    parser: Callable[[], argparse.ArgumentParser]
    summary: str
    exit_status: tuple[tuple[str, str], ...]  # (status, meaning)
    files: tuple[tuple[str, str], ...]        # (path, what it is)


COMMANDS = (
    Command("tcpchatd", 8, daemon.build_parser, "chat-room daemon (Minigamy/TCPchat protocol)",
            (("0", "stopped cleanly (SIGTERM, SIGINT)"),
             ("1", "could not start: a port in use, a bad inherited socket, a live pid file, "
                   "a ban list that does not parse"),
             ("2", "a bad flag or config value")),
            (CONFIG_FILE, ADMIN_SOCKET, ("/var/lib/tcpchatd/bans.json", "the bans"),
             ("/var/log/tcpchatd.log", "the traffic log, as the rsyslog rule "
              "/etc/rsyslog.d/30-tcpchatd.conf files it"))),
    Command("tcpchatctl", 1, ctl.build_parser, "control a running tcpchatd",
            (("0", "ok"), ("1", "the command failed: no such nickname, no such ban, a bad "
                                "request, an internal error"),
             ("2", "usage"), ("4", "permission denied"), ("7", "tcpchatd is not running")),
            (ADMIN_SOCKET, (CONFIG_FILE[0], "read for admin_socket"))),
    Command("tcpchat-client", 1, client.build_parser, "chat client for tcpchatd",
            (("0", "every message from a pipe reached someone; the interactive session "
                   "ended normally"),
             ("1", "a message reached nobody, or no connection"), ("2", "usage")), ()),
)


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def _items(heading: str, items: tuple[tuple[str, str], ...]) -> list[str]:
    lines = [f".SH {heading}"]
    for term, meaning in items:
        lines += [".TP", f"\\fB{_roff(term)}\\fR", _roff(meaning)]
    return lines


# --- man pages

def man_page(command: Command) -> str:
    from build_manpages.manpage import Manpage  # python3-argparse-manpage, at build time
    parser = command.parser()
    parser.man_short_description = command.summary  # type: ignore[attr-defined]
    text = str(Manpage(parser))
    # the tool's own .TH line (its versions write it differently) gives way to ours
    header = text.split("\n", 1)[0]
    if not header.startswith(".TH "):
        raise RuntimeError(f"argparse-manpage wrote no .TH line first: {header!r}")
    lines = _items("EXIT STATUS", command.exit_status)
    if command.files:
        lines += _items("FILES", command.files)
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(other.name)}\\fR({other.section})"
                                        for other in COMMANDS if other is not command)]
    body = "\n".join(  # a text line may not start with a control character
        "\\&" + line if line.startswith("'") else line for line in text[len(header):].split("\n"))
    return f'.TH {command.name.upper()} "{command.section}" "" "tcpchatd" ' \
           f'"tcpchatd manual"' + body + "\n".join(lines) + "\n"


# --- bash completion

def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(option for action in parser._actions for option in action.option_strings)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def completion(command: Command) -> str:
    """A bash completion function: the parser's flags, and its subcommands' flags."""
    parser = command.parser()
    function = "_" + command.name.replace("-", "_")
    subcommands = _subcommands(parser)
    lines = [f"# bash completion for {command.name}: generated from its argparse parser",
             f"{function}()", "{", "    local cur=${COMP_WORDS[COMP_CWORD]} word sub=",
             "    for word in \"${COMP_WORDS[@]:1:COMP_CWORD-1}\"; do",
             "        case $word in"]
    if subcommands:
        lines.append(f"            {'|'.join(subcommands)}) sub=$word ;;")
    lines += ["        esac", "    done", "    case $sub in"]
    for name, sub in subcommands.items():
        lines.append(f"        {name}) COMPREPLY=($(compgen -W '{' '.join(_flags(sub))}' -- "
                     "\"$cur\")) ;;")
    words = " ".join(_flags(parser) + list(subcommands))
    lines += [f"        *) COMPREPLY=($(compgen -W '{words}' -- \"$cur\")) ;;", "    esac",
              "}", f"complete -o default -F {function} {command.name}", ""]
    return "\n".join(lines)


# --- the commented config file

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_file() -> str:
    """Every setting, commented out with its default: uncomment to change one."""
    lines = ["# tcpchatd's config file (TOML). Every setting is here, commented out with its",
             "# default; uncomment a line to change it. Flags override this file; SIGHUP",
             "# (systemctl reload tcpchatd) re-reads it. Generated from tcpchatd's config",
             "# module; `tcpchatd --help` says the same.", ""]
    for name, field in config_module.SETTINGS.items():
        meta = field.metadata
        lines.append(f"# {meta['help']}")
        if name == "admin_socket_mode":
            lines.append(f'#{name} = "{field.default:04o}"')
        elif field.default is None:
            lines.append(f"# default: {meta['shown'] or 'none'}")
            lines.append(f'#{name} = "..."')
        else:
            lines.append(f"#{name} = {_toml(field.default)}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(prog="python -m tcpchatd.service.docs",
                                   description=__doc__.splitlines()[0])
    args.add_argument("outdir")
    outdir = args.parse_args(argv).outdir
    try:
        import build_manpages.manpage  # noqa: F401 (the man pages' one tool)
    except ImportError:
        print("tcpchatd docs: the man pages need argparse-manpage: pip install "
              "'tcpchatd[docs]' (Debian: apt install python3-argparse-manpage); nothing "
              "was written", file=sys.stderr)
        return 1
    files = {f"{command.name}.{command.section}": man_page(command) for command in COMMANDS}
    files.update({os.path.join("completion", command.name): completion(command)
                  for command in COMMANDS})
    files["tcpchatd.toml"] = config_file()
    os.makedirs(os.path.join(outdir, "completion"), exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(outdir, name), "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
