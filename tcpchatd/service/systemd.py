"""systemd glue: inherited sockets (LISTEN_FDS), readiness notifications, watchdog.

Imports nothing of the package. Reads the environment once at start and unsets
the LISTEN_* variables so that no child inherits them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping

import sdnotify

LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class InheritedSocketError(Exception):
    """A passed descriptor is not a listening stream socket."""


def listen_fds(environ: MutableMapping[str, str] | None = None,
               pid: int | None = None) -> list[tuple[str, socket.socket]]:
    """(name, socket) for each socket systemd passed to this process, in fd order.

    Unnamed sockets are called "chat". Sockets are used as they are: never
    re-bound and never unlinked by the daemon.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        if int(environ.get("LISTEN_PID", "0")) != pid:
            return []
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    finally:
        names_text = environ.get("LISTEN_FDNAMES", "")
        for name in LISTEN_VARIABLES:
            environ.pop(name, None)
    names = names_text.split(":") if names_text else []
    sockets = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] not in ("", "unknown") \
            else "chat"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise InheritedSocketError(f"fd {fd} ({name}) passed by systemd is not a socket: "
                                       f"{exc.strerror}") from None
        os.set_inheritable(fd, False)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise InheritedSocketError(f"fd {fd} ({name}) passed by systemd is not a "
                                       "listening stream socket")
        sockets.append((name, sock))
    return sockets


def under_service_manager(environ: MutableMapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(environ.get("NOTIFY_SOCKET") or environ.get("INVOCATION_ID"))


def watchdog_interval(environ: MutableMapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """WatchdogSec in seconds when systemd asks this process for pings, else None."""
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        watchdog_pid = int(environ.get("WATCHDOG_PID", str(pid)) or pid)
    except ValueError:
        return None
    if usec <= 0 or watchdog_pid != pid:
        return None
    return usec / 1_000_000


class Notifier:
    """sd_notify through the sdnotify package; silent when there is no NOTIFY_SOCKET."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self._status: str | None = None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str) -> None:
        self._status = status
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


class Watchdog:
    """Pings systemd from the main loop, only while every health check passes."""

    def __init__(self, notifier: Notifier, interval: float | None,
                 checks: list[Callable[[], bool]]) -> None:
        self.notifier = notifier
        self.interval = interval
        self.checks = checks
        self._last_ping = 0.0

    def tick(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 when due and healthy; True when a ping was sent."""
        if self.interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.interval / 4:
            return False
        if not all(check() for check in self.checks):
            return False
        self.notifier.watchdog()
        self._last_ping = now
        return True
