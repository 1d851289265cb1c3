"""Hitless upgrade, the service's side: the pre-flight, the new image's command line, the
signals held across exec, and the requests that wait for the outcome.

The order (DESIGN.md, "Hitless upgrade"): a pre-flight in a child process (the new code
imports, the config loads, the state format is one the new code reads); then the
signals that could interrupt the hand-over are blocked (the mask survives exec, and the
new image unblocks them once its handlers are in place); then main.py quiesces the
parts, writes the state (net/handover.py) and execs the same interpreter on the same
command line, in the same process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from ..net import handover

# What could interrupt a hand-over: blocked from just before the state is written until
# the new image's handlers are in place (pending signals survive exec and come then).
HELD_SIGNALS = {signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
PREFLIGHT_TIMEOUT = 60.0
REQUEST_TIMEOUT = 120.0  # an admin `upgrade` waits at most this long for the outcome


class UpgradeRefused(Exception):
    """The pre-flight failed (one line): the daemon stays as it was."""


@dataclass(eq=False)
class UpgradeRequest:
    """One `tcpchatctl upgrade`: its connection waits on `done` for the outcome (or for
    the new image, which answers on the same connection)."""

    sock: Any
    request_id: Any
    check: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: str | None = None


def preflight(daemon_args: list[str]) -> str:
    """Run the new code's checks in a child process; its version, or UpgradeRefused."""
    command = [sys.executable, "-m", "tcpchatd.service.preflight",
               str(handover.STATE_FORMAT), "--", *daemon_args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd="/",
                                timeout=PREFLIGHT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeRefused(f"the pre-flight did not run: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UpgradeRefused(lines[-1].strip() if lines else
                             f"the pre-flight failed with status {result.returncode}")
    return result.stdout.strip()


def daemon_arguments(config_path: str | None) -> list[str]:
    """This process's own arguments, with --config made absolute (a relative one was
    resolved at the first start; the working folder may have changed since)."""
    args, out, index = sys.argv[1:], [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--config" and index + 1 < len(args):
            out += ["--config", config_path or args[index + 1]]
            index += 2
            continue
        if arg.startswith("--config="):
            arg = f"--config={config_path or arg.split('=', 1)[1]}"
        out.append(arg)
        index += 1
    return out


def exec_argv(daemon_args: list[str]) -> list[str]:
    """The same interpreter and program (`-m tcpchatd` or a console script), our args."""
    program = sys.orig_argv[:len(sys.orig_argv) - len(sys.argv) + 1]
    return [sys.executable, *program[1:], *daemon_args]


def hold_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)


def release_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def execute(argv: list[str], state_fd: int) -> None:
    """Replace this process's image; returns only if exec failed (OSError raised)."""
    environ = dict(os.environ, **{handover.ENV: str(state_fd)})
    os.execve(sys.executable, argv, environ)
