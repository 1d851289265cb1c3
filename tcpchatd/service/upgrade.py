"""Hitless upgrade, the whole hand-over: the pre-flight, the quiesce, the record, the exec,
and in the new image the adoption, the answer to the waiting `tcpchatctl upgrade`, and
what happens when the new image cannot start.

The old image (HandOver.run, on the main thread):
  1. pre-flight in a child process with the code now installed (preflight.py): the new
     code imports, its settings load (and are handed back, parsed), the state format is
     one it reads. A failure leaves the daemon as it was.
  2. the signals that could interrupt the hand-over are held (the mask survives exec;
     the new image releases them once its handlers are in place).
  3. quiesce, in this order and nowhere else:
       stop accepting chat connections;
       the admin side finishes the requests being carried out and refuses new ones
         (`upgrading`): what was answered ok is in the state handed over;
       TLS clients are told to come back (their keys cannot cross an exec);
       the loops stop, at the end of a turn (no more local events);
       the broker stops reading at a batch's end, settles the claims asked for, and
         writes everything the loops published (no event of another node is read and
         not recorded, none of ours is queued and not written);
     then everything is recorded: connections, the hall (rooms, members, receipts),
     bans, settings, broker position, the log's queue.
  4. the state goes to a memfd (net/handover.py), exactly its fds cross the exec.

The new image (main.py calls resume_config, then the daemon adopts, then served): it
starts from the settings and the bans the old image validated, never from the files
again. If it cannot start after all (a fault of the new code), its clients are told to
reconnect, the waiting `tcpchatctl upgrade` gets `upgrade_failed` with the reason, the
log says `upgrade ok=no`, the admin socket and pid file it owns are removed, and it exits
1: under systemd, Restart=on-failure starts the service again (clients reconnect), by
hand the operator has the reason on the command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..control.errors import UPGRADE_FAILED
from ..net import handover
from ..net.listeners import DOOR_KINDS
from ..net.session import Session
from ..wire import protocol
from . import config as config_module
from . import console, pidfile

if TYPE_CHECKING:
    import argparse

    from ..chat.accounts import AccountBook
    from ..chat.bans import BanList
    from ..chat.broker import BrokerService
    from ..chat.hall import Hall
    from ..control.admin import AdminServer
    from ..net.engine import Engine
    from ..net.listeners import ChatServer
    from ..store.history import HistoryStore
    from .config import Config
    from .systemd import Notifier
    from .trafficlog import TrafficLog


class Daemon(Protocol):
    """The parts of the running daemon (main.py's Daemon) the hand-over stops, records
    and, in the new image, rebuilds around."""

    args: argparse.Namespace
    config: Config
    log: TrafficLog
    server: ChatServer
    engine: Engine
    hall: Hall
    admin_server: AdminServer
    metrics_socket: socket.socket | None
    metrics_server: Any
    broker: BrokerService
    clustered: bool
    bans: BanList
    accounts: AccountBook
    history: HistoryStore | None
    upgrades: int
    started_at: float
    serving_at: float
    owned_admin_path: str | None
    pid_path: str | None

    def stop_requested(self) -> bool: ...

    def queued_signals(self) -> list[int]: ...

# What could interrupt a hand-over: blocked from just before the state is written until
# the new image's handlers are in place (pending signals survive exec and come then).
HELD_SIGNALS = {signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
PREFLIGHT_TIMEOUT = 60.0
REQUEST_TIMEOUT = 120.0  # an admin `upgrade` waits at most this long for the outcome
ADMIN_QUIESCE = 5.0      # admin requests being carried out get this long to finish
TLS_GOODBYE = 0.5        # TLS clients get this long for their restart notice
LOG_HANDOVER = 0.5       # the log gets this long to write what is queued


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

    def refuse(self, reason: str) -> None:
        self.error = reason
        self.done.set()


@dataclass(frozen=True)
class Preflight:
    version: str
    settings: dict | None  # the settings as the new code parsed them
    warnings: list[str]


def preflight(daemon_args: list[str]) -> Preflight:
    """Run the new code's checks in a child process; what it found, or UpgradeRefused."""
    command = [sys.executable, "-m", "tcpchatd.service.preflight",
               str(handover.STATE_FORMAT), "--record", "--", *daemon_args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd="/",
                                timeout=PREFLIGHT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeRefused(f"the pre-flight did not run: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UpgradeRefused(lines[-1].strip() if lines else
                             f"the pre-flight failed with status {result.returncode}")
    version, _, rest = result.stdout.strip().partition("\n")
    try:  # a pre-flight of a version before records says only its version
        found = json.loads(rest) if rest else {}
    except ValueError:
        raise UpgradeRefused("the pre-flight's record does not parse") from None
    return Preflight(version.strip(), found.get("config"), found.get("warnings", []))


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


def resume_config(state: dict, args: argparse.Namespace) -> Config:
    """The new image's settings: those the old image's pre-flight validated with this
    code (the config file is not read again); from the file only when an image before
    these records handed over."""
    if state.get("config") is not None:
        return config_module.from_record(state["config"])
    return config_module.from_args(args)


class HandOver:
    """The hitless upgrade of one daemon, both sides (see the module's docstring)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.answered = False  # the new image served and said so: the upgrade is done

    # --- the old image

    def run(self, request: UpgradeRequest | None, notifier: Notifier,
            stopping: bool) -> None:
        """Pre-flight, then hand everything over and exec; on refusal nothing changes.
        `stopping`: a stop came meanwhile (it wins over the upgrade)."""
        daemon = self.daemon
        started = time.monotonic()
        daemon_args = daemon_arguments(daemon.args.config)
        try:
            checked = preflight(daemon_args)
        except UpgradeRefused as exc:
            daemon.log.event("upgrade", ok="no", error=str(exc))
            if request is not None:
                request.refuse(f"upgrade refused: {exc}")
            return
        for warning in checked.warnings:
            daemon.log.event("upgrade", ok="yes", warning=warning)
        if request is not None and request.check:
            request.result = {"checked": True, "version": checked.version,
                              "warnings": checked.warnings}
            request.done.set()
            return
        hold_signals()  # until the new image's handlers are in place
        if stopping or daemon.stop_requested():
            release_signals()  # a stop came during the pre-flight: it wins
            daemon.log.event("upgrade", ok="no", error="the daemon is stopping")
            if request is not None:
                request.refuse("upgrade refused: the daemon is stopping")
            return
        notifier.reloading()
        paused_at, carried, tls_closed = self._quiesce(request)
        state = self._record(request, carried, checked, paused_at, started, tls_closed)
        state_fd = handover.write(state)
        handover.keep_across_exec(state["keep"] + [state_fd])
        try:
            execute(exec_argv(daemon_args), state_fd)
        except OSError as exc:  # the pre-flight ran this interpreter: should never happen
            console.say(f"tcpchatd: the upgrade's exec failed after the hand-over: {exc}")
            os._exit(1)

    def _quiesce(self, request: UpgradeRequest | None) -> tuple[float, list[Any], int]:
        """Every part stopped, in the one order (see the module's docstring); (when the
        clients' pause began, the connections carried, the TLS clients told)."""
        daemon = self.daemon
        daemon.server.stop_accepting()
        if daemon.metrics_server is not None:  # scrapes wait in the backlog meanwhile
            daemon.metrics_server.stop_serving()
        if not daemon.admin_server.quiesce(ADMIN_QUIESCE):
            daemon.log.event("upgrade", warning="an admin request did not finish in "
                             f"{ADMIN_QUIESCE:g} s; handing over without it")
        tls_clients = [conn for conn in daemon.engine.connections() if conn.tls]
        for conn in tls_clients:  # their keys cannot cross an exec: asked to come back
            conn.close("restart", protocol.restart_frame())
        daemon.server.wait_ended(tls_clients, TLS_GOODBYE)
        paused_at = time.time()  # from here no client is served until the new image runs
        carried = [conn for conn in daemon.engine.pause()  # not a browser still at the
                   if not conn.closed and conn.transport.carriable]  # door (closed by exec)
        return paused_at, carried, len(tls_clients)

    def _record(self, request: UpgradeRequest | None, carried: list[Any],
                checked: Preflight, paused_at: float, started: float,
                tls_closed: int) -> dict:
        """Everything the new image adopts, once every part is still."""
        daemon = self.daemon
        server = daemon.server
        # the broker after the loops: it writes what they published, and what its
        # reader applied up to here is in the hall and the connections recorded below
        broker_state = daemon.broker.pause() if daemon.clustered else None
        records = [conn.record() for conn in carried]
        state: dict[str, Any] = {
            "version": __version__, "paused_at": paused_at,
            "preflight_s": time.monotonic() - started, "upgrades": daemon.upgrades + 1,
            "started_at": daemon.started_at,
            "listeners": [sock.fileno() for sock in server.listeners],
            "tls_listeners": [sock.fileno() for sock in server.all_tls_listeners()],
            "doors": {kind: [sock.fileno() for sock in socks]
                      for kind, socks in server.all_doors.items()},
            "admin": daemon.admin_server.sock.fileno(), "admin_path": daemon.owned_admin_path,
            # the metrics port stays open through the exec: a scrape waits, never fails
            "metrics": daemon.metrics_socket.fileno() if daemon.metrics_socket else None,
            "admin_inode": daemon.admin_server.inode, "pid_path": daemon.pid_path,
            "reply": None if request is None else {
                "fd": request.sock.fileno(), "id": request.request_id},
            "connections": records,
            "hall": daemon.hall.export_state(lambda member: member.transport.sock.fileno()),
            "bans": daemon.bans.export_state(),
            "accounts": daemon.accounts.export_state(),
            # the history writer's queue, after the loops and the broker (they feed it)
            "history": daemon.history.hand_over() if daemon.history is not None else [],
            "config": checked.settings,
            "tls_closed": tls_closed,
            "broker": broker_state,
            "signals": daemon.queued_signals(),  # HUP, USR2 that came meanwhile
        }
        state["log"] = daemon.log.hand_over(LOG_HANDOVER)
        state["written_at"] = time.time()
        state["keep"] = state["listeners"] + state["tls_listeners"] + [
            fd for fds in state["doors"].values() for fd in fds] + [state["admin"]] + (
            [state["metrics"]] if state["metrics"] is not None else []) + [
            record["fd"] for record in records] + (
            [request.sock.fileno()] if request is not None else [])
        return state

    # --- the new image

    @staticmethod
    def door_sockets(state: dict) -> dict[str, list[socket.socket]]:
        """The doors' listeners handed over, by kind (an image before them had none; one
        of the first web doors named them web_listeners and web_tls_listeners)."""
        fds = dict(state.get("doors") or {"web": state.get("web_listeners", []),
                                          "web-tls": state.get("web_tls_listeners", [])})
        doors = {kind: [socket.socket(fileno=fd) for fd in fds.get(kind, [])]
                 for kind in DOOR_KINDS}
        for socks in doors.values():
            for sock in socks:
                os.set_inheritable(sock.fileno(), False)
        return doors

    @staticmethod
    def metrics_socket(state: dict) -> socket.socket | None:
        """The metrics endpoint's listener handed over (none: no metrics, or an image
        before it was carried, whose port the exec closed: bound again)."""
        fd = state.get("metrics")
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        return sock

    @staticmethod
    def sockets(state: dict) -> tuple[list[socket.socket], list[socket.socket],
                                      socket.socket]:
        """The listeners and the admin socket handed over: (chat, TLS, admin)."""
        chat_sockets = [socket.socket(fileno=fd) for fd in state["listeners"]]
        tls_sockets = [socket.socket(fileno=fd) for fd in state["tls_listeners"]]
        admin_socket = socket.socket(fileno=state["admin"])
        for sock in (*chat_sockets, *tls_sockets, admin_socket):
            os.set_inheritable(sock.fileno(), False)
        return chat_sockets, tls_sockets, admin_socket

    def adopt(self, state: dict) -> None:
        """Before the loops start: every carried connection, then the hall around them
        (an image before rooms recorded its one room as `room`)."""
        daemon = self.daemon
        by_fd = {}
        for record in state["connections"]:
            os.set_inheritable(record["fd"], False)
            conn = Session.resumed(record, daemon.server)
            daemon.server.adopt(conn)
            by_fd[record["fd"]] = conn
        daemon.hall.import_state(state.get("hall") or state["room"], by_fd.get)

    def served(self, state: dict) -> None:
        """The new image serves: say so in the log and to the waiting `tcpchatctl`."""
        daemon = self.daemon
        now = daemon.serving_at  # the loops serve the carried clients: their pause ends
        pause_ms = round((now - state["paused_at"]) * 1000)
        clients = len(state["connections"])
        daemon.log.event(
            "upgrade", ok="yes", version=__version__, previous=state["version"],
            clients=clients, tls_closed=state["tls_closed"], pause_ms=pause_ms,
            handover_ms=round((state["written_at"] - state["paused_at"]) * 1000),
            start_ms=round((now - state["written_at"]) * 1000),
            carried_bytes=sum(len(record["unsent"]) * 3 // 4
                              for record in state["connections"]) or None)
        self._reply(state, ok={"version": __version__, "pid": os.getpid(),
                               "clients": clients, "pause_ms": pause_ms})
        self.answered = True

    @staticmethod
    def _reply(state: dict, ok: dict | None = None, error: str | None = None) -> None:
        reply = state.get("reply")
        if reply is None:
            return
        from ..control import admin  # after the loops serve (see main.py)
        line = admin.reply_ok(reply["id"], ok) if error is None else admin.reply_error(
            reply["id"], UPGRADE_FAILED, error)
        with socket.socket(fileno=reply["fd"]) as conn:
            try:
                conn.sendall(line)
            except OSError:
                pass

    @classmethod
    def failed(cls, state: dict, exc: BaseException, daemon: Daemon | None = None) -> int:
        """The new image cannot start: nobody is dropped without a word (see the
        module's docstring). Exit status 1."""
        reason = f"the new image could not start: {type(exc).__name__}: {exc}"
        console.say(f"tcpchatd: {reason}; its clients are asked to reconnect\n"
                    f"{''.join(traceback.format_exception(exc)).rstrip()}")
        if daemon is not None and daemon.serving_at:  # its loops took the clients over
            daemon.server.shutdown(daemon.config.shutdown_grace, "restart",
                                   protocol.restart_frame())
            daemon.engine.stop()
        else:  # as the old image left them: what was due, then the notice, on each fd
            goodbye = protocol.restart_frame()
            for record in state.get("connections", []):
                due = handover.unb64(record["unsent"]) + goodbye  # a cut frame finished
                try:
                    os.write(record["fd"], due)  # non-blocking (as the old image left it)
                except OSError:
                    pass
        cls._reply(state, error=reason)
        cls._log_failure(state, reason)
        path, inode = state.get("admin_path"), state.get("admin_inode")
        try:
            if path and os.stat(path).st_ino == inode:
                os.unlink(path)  # a stale socket would stop the next start
        except OSError:
            pass
        if state.get("pid_path"):
            pidfile.remove(state["pid_path"])
        return 1

    @staticmethod
    def _log_failure(state: dict, reason: str) -> None:
        """`upgrade ok=no` in the traffic log the settings name (the defaults if even
        they cannot be read)."""
        from .trafficlog import TrafficLog
        try:
            config = config_module.from_record(state.get("config") or {})
        except Exception:
            config = config_module.Config()
        log = TrafficLog(config.log_target, config.syslog_address, config.syslog_facility)
        log.start()
        for name, fields in state.get("log", []):
            log.event(name, **fields)
        log.event("upgrade", ok="no", version=__version__, previous=state.get("version"),
                  clients=len(state.get("connections", [])), error=reason)
        log.close(config.shutdown_grace)
