"""`tcpchatd`: main(argv) -> sockets -> servers -> READY -> signal loop -> stop."""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

from .. import __version__
from ..chat.accounts import AccountBook, AccountFileError
from ..chat.accounts import row as account_row
from ..chat.bans import BanList, BanListError
from ..chat.broker import BrokerService
from ..chat.hall import Hall
from ..chat.logins import Logins
from ..cluster.local import LocalBroker
from ..control.errors import INTERNAL, UPGRADE_REFUSED, AdminError, AdminSocketError
from ..net import handover
from ..net.engine import Engine
from ..net.listeners import DOOR_KINDS, ChatServer, ListenError, bind_listener
from ..net.tls import TlsCredentials, TlsSetupError
from ..store.history import HistoryError, HistoryStore
from ..wire import nicknames
from . import config as config_module
from . import console, pidfile, systemd, upgrade
from .config import Config
from .errors import ConfigError, StartupError
from .trafficlog import TrafficLog

TICK = 0.25                 # main loop period: receipts and bans expire, the watchdog
HALL_PROBE_TIMEOUT = 1.0    # the watchdog's bound on taking the hall's lock
# Settings a reload does not change: sockets stay as they were bound.
FIXED_ON_RELOAD = ("listen", "listen_tls", "listen_web", "listen_web_tls", "listen_irc",
                   "listen_irc_tls", "admin_socket",
                   "admin_socket_mode", "pid_file", "thread_stack", "state_dir", "io_threads",
                   "broker", "broker_password_file", "broker_ca", "cluster", "node_name",
                   "node_ttl", "broker_stream")
TLS_SOCKET_NAME = "chat-tls"  # FileDescriptorName= of tcpchatd-tls.socket
METRICS_SOCKET_NAME = "metrics"  # of tcpchatd-metrics.socket
# the doors' sockets are named as their kinds: tcpchatd-web.socket's is `web`, and so on
NOT_CHAT = ("admin", TLS_SOCKET_NAME, METRICS_SOCKET_NAME, *DOOR_KINDS)


def passed_or(chat: list[socket.socket], tls: list[socket.socket],
              doors: dict[str, list[socket.socket]]) -> list[socket.socket]:
    """Every listening socket, whatever its kind."""
    return chat + tls + [sock for socks in doors.values() for sock in socks]


def web_ready() -> None:
    """A web door needs wsproto (the `web` extra; Debian's python3-wsproto): said at
    the start, not at the first browser."""
    try:
        import h11  # noqa: F401
        import wsproto  # noqa: F401
    except ImportError:
        raise ConfigError("listen_web and listen_web_tls need wsproto: pip install "
                          "'tcpchatd[web]' (Debian: apt install python3-wsproto)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpchatd", description="Chat-room daemon (Minigamy/TCPchat wire protocol).")
    parser.add_argument("--version", action="version", version=f"tcpchatd {__version__}")
    parser.add_argument("--daemon", action="store_true",
                        help="detach and write a pid file (for running by hand without systemd)")
    config_module.add_arguments(parser)
    return parser


def standard_streams() -> None:
    """/dev/null on 0, 1 and 2 where they are closed, and stdout and stderr to match.

    A detached daemon's new image after an upgrade's exec finds them closed (python-daemon
    gave the old one copies that do not survive exec); a socket opened next would take
    fd 0, and a warning on a stderr of None would end the start."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if null != fd:
                os.dup2(null, fd, inheritable=False)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def main(argv: list[str] | None = None) -> int:
    standard_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    config_module.absolute_config_path(args)
    # Every thread this process starts inherits these signals blocked, so only the main
    # thread takes them (once its handlers are in place): a signal that came to another
    # thread during an upgrade's hand-over would be lost in the exec.
    upgrade.hold_signals()
    try:
        state = handover.take()
    except handover.HandoverError as exc:
        console.say(f"tcpchatd: {exc}")
        return 1
    if state is not None:  # an upgrade's new image: no detaching, no new sockets
        return resume(state, args)
    try:
        config = config_module.from_args(args)
    except ConfigError as exc:
        console.say(f"tcpchatd: {exc.message}")
        return 2
    try:
        return Daemon(config, args).run()
    except ConfigError as exc:  # found once the settings are used (a TLS pair, say)
        console.say(f"tcpchatd: {exc.message}")
        return 2
    except CANNOT_START as exc:  # each part's own error, said in its words: exit 1
        console.say(f"tcpchatd: {exc}")
        return 1


# What stops the start, by the part that found it (each error stays in its own layer;
# here, at the boundary, they become one line and exit status 1)
CANNOT_START = (StartupError, ListenError, AdminSocketError, BanListError, AccountFileError,
                systemd.InheritedSocketError)


def resume(state: dict, args: argparse.Namespace) -> int:
    """The new image of a hitless upgrade; if it cannot start after all, its clients and
    the waiting `tcpchatctl upgrade` are told (upgrade.py), and it exits 1."""
    daemon = None
    try:
        daemon = Daemon(upgrade.resume_config(state, args), args)
        return daemon.resume(state)
    except Exception as exc:
        if daemon is not None and daemon.hand_over is not None and daemon.hand_over.answered:
            raise  # it served and said so: an ordinary failure, not the upgrade's
        return upgrade.HandOver.failed(state, exc, daemon)


def _error_log(text: str) -> None:
    console.say(text)


class Daemon:
    """Owns the sockets, servers and main loop of one daemon process."""

    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self._signals: deque[int] = deque()
        self._started_pipe: int | None = None  # --daemon: tells the waiting parent we serve
        self._upgrade_requests: deque[upgrade.UpgradeRequest] = deque()
        self.upgrades = 0  # hitless upgrades this process has been through
        self.started_at = time.monotonic()  # for uptime; carried through upgrades
        self.serving_at = 0.0  # when the loops began serving (an upgrade's pause ends)
        self.hand_over: upgrade.HandOver | None = None
        self.ignored_settings: list[str] = []  # settings systemd's sockets override
        self.tls: TlsCredentials | None = None
        self.history: HistoryStore | None = None  # the lasting history, once serving
        self.tls_unserved: str | None = None  # why a TLS socket passed in is not served
        # tcpchatd-metrics.socket's, or the one an upgrade carried; else bound from
        # listen_metrics once the admin side is up
        self.metrics_socket: socket.socket | None = None
        self.metrics_server: Any = None

    def run(self) -> int:
        threading.stack_size(self.config.thread_stack)
        inherited = systemd.listen_fds()
        chat_sockets = [sock for name, sock in inherited if name not in NOT_CHAT]
        admin_sockets = [sock for name, sock in inherited if name == "admin"]
        tls_sockets = [sock for name, sock in inherited if name == TLS_SOCKET_NAME]
        doors = {kind: [sock for name, sock in inherited if name == kind]
                 for kind in DOOR_KINDS}
        self.metrics_socket = next((sock for name, sock in inherited
                                    if name == METRICS_SOCKET_NAME), None)
        if self.metrics_socket is not None and self.config.listen_metrics:
            console.say("tcpchatd: listen_metrics not used: systemd passed the metrics "
                        "socket (change ListenStream= in a drop-in for "
                        "tcpchatd-metrics.socket instead)")
        if self.args.daemon and not systemd.under_service_manager():
            pidfile.check(self.config.pid_file_path())
        self._load_bans()
        self.tls, self.tls_unserved = None, None
        # Sockets systemd passed (tcpchatd.socket, tcpchatd-tls.socket) are the chat's
        # listeners, all of them: none of our own is bound beside them (masking
        # tcpchatd.socket and enabling tcpchatd-tls.socket serves TLS alone).
        passed = chat_sockets + tls_sockets + [s for socks in doors.values() for s in socks]
        self.ignored_settings = self._settings_systemd_overrides(passed)
        tls_doors = [kind for kind in DOOR_KINDS if kind.endswith("-tls")]
        if tls_sockets or any(doors[kind] for kind in tls_doors):  # systemd's: without a
            self._tls_for_passed_sockets()  # usable pair they stay unserved; chat runs on
            if self.tls_unserved:
                console.say(f"tcpchatd: TLS not served: {self.tls_unserved}")
        elif not passed and (self.config.listen_tls or any(
                self.config.door_addresses(kind) for kind in tls_doors)):
            self.tls = self._tls_credentials(self.config)  # ours: a bad pair stops the start
            tls_sockets = [bind_listener(host, port)
                           for host, port in self.config.tls_listen_addresses()]
        if not passed:
            chat_sockets = [bind_listener(host, port)
                            for host, port in self.config.listen_addresses()]
            doors = {kind: [bind_listener(host, port)
                            for host, port in self.config.door_addresses(kind)]
                     for kind in DOOR_KINDS}
        if doors["web"] or doors["web-tls"]:
            web_ready()
        owned_admin_path = None
        if admin_sockets:
            admin_socket = admin_sockets[0]
        else:
            from ..control import admin  # see _admin_side
            owned_admin_path = self.config.admin_socket_path()
            admin_socket = admin.bind_socket(owned_admin_path, self.config.admin_socket_mode,
                                             self.config.admin_group)
        pid_path = self._detach([*passed_or(chat_sockets, tls_sockets, doors),
                                 admin_socket, *([self.metrics_socket] if self.metrics_socket
                                                 else [])]) if self.args.daemon else None
        try:
            return self._serve(chat_sockets, tls_sockets, admin_socket, owned_admin_path,
                               pid_path, doors=doors)
        finally:
            if pid_path:
                pidfile.remove(pid_path)

    def _settings_systemd_overrides(self, passed: list[socket.socket]) -> list[str]:
        """listen and listen_tls set to anything but their defaults while systemd passes
        the chat sockets: they are not used, and the operator is told so (once, on
        stderr; and in the log) rather than left to wonder."""
        if not passed:
            return []
        defaults = config_module.Config()
        ignored = [name for name in ("listen", "listen_tls", "listen_web", "listen_web_tls",
                                     "listen_irc", "listen_irc_tls")
                   if getattr(self.config, name) != getattr(defaults, name)]
        if ignored:
            console.say(f"tcpchatd: {' and '.join(ignored)} not used: systemd passed the "
                        "chat sockets (change ListenStream= in a drop-in for "
                        "tcpchatd.socket or tcpchatd-tls.socket instead)")
        return ignored

    def _detach(self, sockets: list[socket.socket]) -> str | None:
        """Daemonize with python-daemon, keeping the listening sockets; the pid file path."""
        if systemd.under_service_manager():
            console.say("tcpchatd: a service manager runs this process: --daemon does not fork")
            return None
        import daemon as python_daemon  # python-daemon; only needed here
        path = self.config.pid_file_path()
        # Fork first: this parent waits on a pipe until the detached daemon serves and
        # has written its pid file, then says where it listens (python-daemon's open()
        # would end the parent at once, before either).
        read_fd, write_fd = os.pipe()
        if os.fork() > 0:
            os.close(write_fd)
            os._exit(self._wait_started(read_fd, path))
        os.close(read_fd)
        self._started_pipe = write_fd
        context = python_daemon.DaemonContext(
            files_preserve=[sock.fileno() for sock in sockets] + [write_fd],
            working_directory="/", umask=0o022, signal_map={}, detach_process=True)
        context.open()
        return path  # written once the signal handlers are in place (see _serve)

    @staticmethod
    def _wait_started(read_fd: int, pid_path: str) -> int:
        """In the first parent: the daemon's word once it serves; exit status 0 or 1."""
        report = b""
        while chunk := os.read(read_fd, 4096):
            report += chunk
        text = report.decode("utf-8", "replace").strip()
        if text.startswith("ok "):
            pid, _, listening = text[3:].partition(" ")
            console.say(f"tcpchatd: running in the background as pid {pid}, listening on "
                        f"{listening}; pid file {pid_path}")
            return 0
        console.say(f"tcpchatd: the detached daemon did not start{': ' + text if text else ''}")
        return 1

    def _broker(self, log: TrafficLog, resume: dict | None) -> BrokerService:
        """The embedded room's broker, or a node of the cluster on `broker`."""
        config = self.config
        self.clustered = bool(config.broker)
        if not config.broker:
            return LocalBroker()
        from ..cluster import redis as redis_broker  # the redis package: an optional extra
        try:
            return redis_broker.RedisBroker(
                config.broker, config.cluster, config.node(), config.node_ttl,
                config.broker_stream, log,
                password=redis_broker.read_password(config.broker_password_path()),
                ca=config.broker_ca, error_log=_error_log, resume=resume)
        except redis_broker.BrokerSetupError as exc:
            raise ConfigError(str(exc)) from None

    def _admin_side(self, admin_socket: socket.socket, owned_admin_path: str | None,
                    resume: dict | None) -> tuple[Any, Any]:
        """The admin server (not started) and the handler of the other nodes' admin events."""
        from ..control import admin, commands  # after the loops serve: see _serve
        table = commands.AdminCommands(
            self.hall, self.log, self.bans,
            tls_expiry=lambda: self.tls.expires if self.tls is not None else None,
            upgrade=self.request_upgrade, upgrades=lambda: self.upgrades,
            started_at=lambda: self.started_at,
            traffic_counters=self.server.counters)
        self.hall.moderation = table  # a moderator's kick, ban, unban from a chat client
        self._metrics(table)
        self.admin_server = admin.AdminServer(
            admin_socket, table.table(), self.config, self.log, owned_path=owned_admin_path,
            error_log=_error_log, inode=(resume or {}).get("admin_inode"))
        return self.admin_server, table.on_other_node

    def _metrics(self, table: Any) -> None:
        """The Prometheus endpoint: on tcpchatd-metrics.socket's socket (or the one an
        upgrade carried), else on listen_metrics when it names one; one warning on stderr
        when it cannot be served (the chat runs on)."""
        sock, where = self.metrics_socket, self.config.listen_metrics
        if sock is None and not where:
            return
        from ..control.metrics import MetricsServer, MetricsUnavailable
        try:
            if sock is None:
                host, port = config_module.parse_address(where or "")
                sock = self.metrics_socket = bind_listener(host, port)
            self.metrics_server = MetricsServer(sock, table.metrics_stats)
            self.metrics_server.start()
        except (MetricsUnavailable, ListenError, OSError) as exc:
            shown = where if self.metrics_socket is None else "the metrics socket"
            console.say(f"tcpchatd: warning: no metrics on {shown}: {exc}")
            self.log.event("metrics", ok="no", error=str(exc))

    def _load_bans(self) -> None:
        """The lasting bans and accounts; a file that does not parse stops the start
        (exit 1)."""
        self.bans = BanList(os.path.abspath(self.config.state_dir_path()))
        self.bans.load()
        self.accounts = self._account_book()
        self.accounts.load()

    def _history_store(self, log: TrafficLog, handed_over: list) -> HistoryStore | None:
        """The lasting history, opened; None when it is off or cannot be opened (the
        chat runs on without it: said once on stderr and in the log)."""
        config = self.config
        if not config.history_store:
            return None
        store = HistoryStore(os.path.abspath(config.state_dir_path()), log,
                             config.history_days, config.history_max, config.history_queue,
                             error_log=_error_log)
        try:
            store.open()
        except HistoryError as exc:
            console.say(f"tcpchatd: warning: {exc}; the chat runs without lasting history")
            log.event("history_error", op="open", error=str(exc))
            return None
        store.take_over(handed_over)
        return store

    def _account_book(self) -> AccountBook:
        return AccountBook(os.path.abspath(self.config.state_dir_path()),
                           self.config.login_threads, self.config.max_nickname)

    def _tls_for_passed_sockets(self) -> None:
        """TLS sockets handed in (by systemd, or by the image before an upgrade): served
        with the pair the settings name, or left unserved with the reason."""
        try:
            self.tls, self.tls_unserved = self._tls_credentials(self.config), None
        except ConfigError as exc:
            self.tls, self.tls_unserved = None, exc.message

    @staticmethod
    def _tls_credentials(config: Config) -> TlsCredentials:
        """The TLS pair the settings name (or systemd's credentials); ConfigError if it
        is missing or does not load."""
        cert, key = config.tls_cert_path(), config.tls_key_path()
        if not cert or not key:
            raise ConfigError("TLS needs tls_cert and tls_key (or the systemd credentials "
                              "tls.crt and tls.key)")
        try:
            return TlsCredentials(cert, key, config.tls_min_version)
        except TlsSetupError as exc:
            raise ConfigError(f"TLS: {exc}") from None

    def _serve(self, chat_sockets: list[socket.socket], tls_sockets: list[socket.socket],
               admin_socket: socket.socket, owned_admin_path: str | None,
               pid_path: str | None = None, resume: dict | None = None,
               doors: dict[str, list[socket.socket]] | None = None) -> int:
        config = self.config
        self.pid_path, self.owned_admin_path = pid_path, owned_admin_path
        log = TrafficLog(config.log_target, config.syslog_address, config.syslog_facility,
                         config.log_queue, gather=config.log_gather)
        log.start()
        self.log = log
        for name, fields in (resume or {}).get("log", []):  # the old image's last lines
            log.event(name, **fields)
        engine = Engine(config.io_threads, error_log=_error_log)
        broker = self.broker = self._broker(log, (resume or {}).get("broker"))
        self.history = self._history_store(log, (resume or {}).get("history") or [])
        hall = Hall(config, log, engine.channel, self.bans, broker=broker,
                    logins=Logins(self.accounts, config, log), history=self.history)
        # a change of an account is the cluster's (Redis keeps the book; the stream tells)
        self.accounts.on_change = lambda account, removed: broker.publish(
            {"kind": "account", "key": account.key,
             "account": None if removed else account_row(account)})
        server = ChatServer(chat_sockets, hall, log, config, engine, error_log=_error_log,
                            tls_listeners=tls_sockets, tls=self.tls,
                            doors=doors)
        self.engine, self.hall, self.server = engine, hall, server
        hand_over = self.hand_over = upgrade.HandOver(self)
        if resume is not None:
            hand_over.adopt(resume)
        if pid_path and resume is None:  # signals wait (held) until the handlers are in
            pidfile.write(pid_path)      # place: a SIGTERM always removes the file
        engine.start()  # the loops first: the accept thread hands them connections, and
        self.serving_at = time.time()  # an upgrade's carried clients are served from here
        # What the carried clients do not need comes after: each import here would
        # lengthen their pause (the admin side, the nickname checks' regex)
        admin_server, from_other_node = self._admin_side(admin_socket, owned_admin_path, resume)
        nicknames.prepare()
        if self.clustered:  # other nodes' events go to the loops as our members' do
            broker.attach(hall.relay, from_other_node)
            broker.start()
        server.start()
        admin_server.start()
        wakeup_read = self._install_signals()  # after every thread: they keep them held
        notifier = systemd.Notifier()
        # each part says whether it turns, by its own tick; the hall whether its lock frees
        watchdog = systemd.Watchdog(notifier, systemd.watchdog_interval(), [
            server.accepting, admin_server.answering, engine.ticking,
            lambda: hall.probe(HALL_PROBE_TIMEOUT),
        ])
        listening = ",".join(server.addresses())
        if resume is None:
            log.event("start", version=__version__, listen=listening)
            if self.ignored_settings:
                log.event("settings_ignored", names=",".join(self.ignored_settings),
                          why="systemd passed the chat sockets")
            console.say(f"tcpchatd {__version__}: listening on {listening}; admin socket "
                        f"{owned_admin_path or 'from systemd'}")
        if self.tls_unserved:
            log.event("tls", ok="no", error=self.tls_unserved)
        notifier.ready(self._status())
        if resume is not None:
            hand_over.served(resume)
        if self._started_pipe is not None:  # --daemon: the waiting parent may now return
            os.write(self._started_pipe, f"ok {os.getpid()} {listening}\n".encode())
            os.close(self._started_pipe)
            self._started_pipe = None
        try:
            while True:
                select.select([wakeup_read], [], [], TICK)
                try:
                    os.read(wakeup_read, 512)
                except BlockingIOError:
                    pass
                if self._handle_signals(notifier):
                    break
                while self._upgrade_requests:
                    hand_over.run(self._upgrade_requests.popleft(), notifier, False)
                hall.expire()
                for ended in self.bans.expire():
                    log.event("ban_expired", target=ended.target, by_uid=ended.by_uid)
                watchdog.tick()
                notifier.status(self._status())
        finally:
            notifier.stopping()
            log.event("stop")
            server.shutdown(self.config.shutdown_grace)  # the loops flush the goodbyes
            engine.stop()
            if self.clustered:  # after the last leave: the other nodes hear of it
                broker.stop()
            server.close_listeners()
            admin_server.close()
            # what is queued goes out within shutdown_grace; a syslog too slow for that is
            # said once on stderr (the journal's), never lost without a word
            if self.history is not None:  # what the chat still queued is written
                self.history.close(self.config.shutdown_grace)
            unwritten = log.close(self.config.shutdown_grace)
            if unwritten:
                console.say(f"tcpchatd: {unwritten} traffic log lines were not written: "
                            f"syslog at {self.config.syslog_address} did not take them within "
                            f"shutdown_grace ({self.config.shutdown_grace:g} s)")
        return 0

    # --- hitless upgrade: the whole hand-over is service/upgrade.py's

    def request_upgrade(self, conn: socket.socket, request_id: object, check: bool) -> dict:
        """An admin connection's `upgrade`: queued for the main thread; waits for the
        outcome. When the upgrade happens the new image answers on `conn` instead."""
        request = upgrade.UpgradeRequest(conn, request_id, check)
        self._upgrade_requests.append(request)
        os.write(self._wakeup_write, b"u")
        if not request.done.wait(upgrade.REQUEST_TIMEOUT):
            raise AdminError(INTERNAL, "no outcome from the upgrade in time")
        if request.error is not None:
            raise AdminError(UPGRADE_REFUSED, request.error)
        return request.result or {}

    def stop_requested(self) -> bool:
        """A SIGTERM or SIGINT waits in the queue."""
        return any(signum in (signal.SIGTERM, signal.SIGINT) for signum in self._signals)

    def queued_signals(self) -> list[int]:
        return [int(signum) for signum in self._signals]

    def resume(self, state: dict) -> int:
        """The new image: adopt the sockets and the state the old one handed over."""
        threading.stack_size(self.config.thread_stack)
        chat_sockets, tls_sockets, admin_socket = upgrade.HandOver.sockets(state)
        doors = upgrade.HandOver.door_sockets(state)
        self.metrics_socket = upgrade.HandOver.metrics_socket(state)
        self.bans = BanList(os.path.abspath(self.config.state_dir_path()))
        if "bans" in state:  # the list the old image kept in force: the file is not read
            self.bans.import_state(state["bans"])
        else:  # an image before these records
            self.bans.load()
        self.accounts = self._account_book()
        if "accounts" in state:  # likewise
            self.accounts.import_state(state["accounts"])
        else:
            self.accounts.load()
        self.tls, self.tls_unserved = None, None
        if tls_sockets or doors["web-tls"] or doors["irc-tls"]:
            self._tls_for_passed_sockets()
        self.upgrades = state["upgrades"]
        self.started_at = state.get("started_at", self.started_at)
        self._signals.extend(state["signals"])
        pid_path = state["pid_path"]
        try:
            return self._serve(chat_sockets, tls_sockets, admin_socket, state["admin_path"],
                               pid_path, resume=state, doors=doors)
        finally:
            if pid_path:
                pidfile.remove(pid_path)

    def _status(self) -> str:
        count = len(self.hall)
        noun = "client" if count == 1 else "clients"
        status = f"{count} {noun}; listening on {', '.join(self.server.addresses())}"
        if self.tls_unserved:
            status += f"; TLS not served: {self.tls_unserved}"
        if self.clustered:
            status += f"; cluster {self.config.cluster} as node {self.broker.node}, broker " + \
                ("linked" if self.broker.linked else "lost (serving this node's members)")
        return status

    # --- signals: the handlers only enqueue; this thread acts

    def _install_signals(self) -> int:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd)
        self._wakeup_write = write_fd
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(signum, self._enqueue_signal)
        upgrade.release_signals()  # held across an upgrade's exec until now
        return read_fd

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self, notifier: systemd.Notifier) -> bool:
        """Act on queued signals; True when the daemon should stop."""
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGHUP:
                self.handle_hup(notifier)
            elif signum == signal.SIGUSR2:
                if self.hand_over is not None:  # set once the parts serve
                    self.hand_over.run(None, notifier, self.stop_requested())
            else:
                return True
        return False

    def handle_hup(self, notifier: systemd.Notifier) -> None:
        """Re-read the config file; an invalid one keeps the running settings."""
        notifier.reloading()
        try:
            new = config_module.from_args(self.args)
            if new.admin_group:  # every admin connection would fail on an unknown group
                from ..control import admin
                try:
                    admin.resolve_group(new.admin_group)
                except AdminSocketError as exc:
                    raise ConfigError(str(exc)) from None
            if self.tls is not None:  # a new pair for new handshakes, or the old one kept
                cert, key = new.tls_cert_path(), new.tls_key_path()
                if not cert or not key:
                    raise ConfigError("TLS needs tls_cert and tls_key")
                try:
                    self.tls.reload(cert, key, new.tls_min_version)
                except TlsSetupError as exc:
                    raise ConfigError(f"TLS: {exc}") from None
        except ConfigError as exc:
            self.log.event("reload", ok="no", error=exc.message)
            notifier.ready(f"reload failed, running settings kept: {exc.message}")
            return
        fixed = [name for name in FIXED_ON_RELOAD
                 if getattr(new, name) != getattr(self.config, name)]
        new = dataclasses.replace(new, **{name: getattr(self.config, name)
                                          for name in FIXED_ON_RELOAD})
        self.apply_config(new)
        if fixed:  # sockets stay as they were bound: say so, not just ok
            self.log.event("reload", ok="yes", needs_restart=",".join(fixed))
            notifier.ready(f"{self._status()}; changed {', '.join(fixed)} needs a restart")
        else:
            self.log.event("reload", ok="yes")
            notifier.ready(self._status())


    def apply_config(self, new: Config) -> None:
        """Every component that reads settings gets the new ones (connections read
        the server's); the sockets keep what they were bound with (FIXED_ON_RELOAD)."""
        self.config = new
        self.hall.config = new
        if self.hall.logins is not None:
            self.hall.logins.config = new
        if self.history is not None:  # retention follows the file; the writer reads them
            self.history.days, self.history.per_room = new.history_days, new.history_max
        self.server.config = new
        self.admin_server.config = new
        self.log.reconfigure(new.log_target, new.syslog_address, new.syslog_facility,
                             new.log_queue, new.log_gather)


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
