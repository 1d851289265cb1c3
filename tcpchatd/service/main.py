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
from collections import deque

from .. import __version__
from ..control import admin, commands
from . import config as config_module, console, pidfile, systemd
from .config import Config
from ..chat.bans import BanList
from ..wire.errors import ConfigError, StartupError
from ..chat.room import Room
from ..net.engine import Engine
from ..net.listeners import ChatServer, bind_listener
from ..net.tls import TlsCredentials, TlsSetupError
from .trafficlog import TrafficLog

TICK = 0.25                 # main loop period: receipts and bans expire, the watchdog
ROOM_PROBE_TIMEOUT = 1.0    # the watchdog's bound on taking the room lock
# Settings a reload does not change: sockets stay as they were bound.
FIXED_ON_RELOAD = ("listen", "listen_tls", "admin_socket", "admin_socket_mode", "pid_file",
                   "thread_stack", "state_dir", "io_threads")
TLS_SOCKET_NAME = "chat-tls"  # FileDescriptorName= of tcpchatd-tls.socket


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpchatd", description="Chat-room daemon (Minigamy/TCPchat wire protocol).")
    parser.add_argument("--version", action="version", version=f"tcpchatd {__version__}")
    parser.add_argument("--daemon", action="store_true",
                        help="detach and write a pid file (for running by hand without systemd)")
    config_module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    config_module.absolute_config_path(args)
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
    except StartupError as exc:
        console.say(f"tcpchatd: {exc.message}")
        return 1


def _error_log(text: str) -> None:
    console.say(text)


class Daemon:
    """Owns the sockets, servers and main loop of one daemon process."""

    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self._signals: deque[int] = deque()
        self._started_pipe: int | None = None  # --daemon: tells the waiting parent we serve

    def run(self) -> int:
        threading.stack_size(self.config.thread_stack)
        try:
            inherited = systemd.listen_fds()
        except systemd.InheritedSocketError as exc:
            raise StartupError(str(exc)) from None
        chat_sockets = [sock for name, sock in inherited
                        if name not in ("admin", TLS_SOCKET_NAME)]
        admin_sockets = [sock for name, sock in inherited if name == "admin"]
        tls_sockets = [sock for name, sock in inherited if name == TLS_SOCKET_NAME]
        if self.args.daemon and not systemd.under_service_manager():
            pidfile.check(self.config.pid_file_path())
        self.bans = BanList(os.path.abspath(self.config.state_dir_path()))
        self.bans.load()  # a list that does not parse stops the start (exit 1)
        self.tls, self.tls_unserved = None, None
        if tls_sockets:  # systemd's: without a usable pair they stay unserved, chat runs on
            try:
                self.tls = self._tls_credentials(self.config)
            except ConfigError as exc:
                self.tls_unserved = exc.message
                console.say(f"tcpchatd: TLS not served: {exc.message}")
        elif self.config.listen_tls and not chat_sockets:  # ours: a bad pair stops the start
            self.tls = self._tls_credentials(self.config)
            tls_sockets = [bind_listener(host, port)
                           for host, port in self.config.tls_listen_addresses()]
        if not chat_sockets:
            chat_sockets = [bind_listener(host, port)
                            for host, port in self.config.listen_addresses()]
        owned_admin_path = None
        if admin_sockets:
            admin_socket = admin_sockets[0]
        else:
            owned_admin_path = self.config.admin_socket_path()
            admin_socket = admin.bind_socket(owned_admin_path, self.config.admin_socket_mode,
                                             self.config.admin_group)
        pid_path = self._detach([*chat_sockets, *tls_sockets, admin_socket]) \
            if self.args.daemon else None
        try:
            return self._serve(chat_sockets, tls_sockets, admin_socket, owned_admin_path,
                               pid_path)
        finally:
            if pid_path:
                pidfile.remove(pid_path)

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
               pid_path: str | None = None) -> int:
        config = self.config
        log = TrafficLog(config.log_target, config.syslog_address, config.syslog_facility,
                         config.log_queue)
        log.start()
        self.log = log
        engine = Engine(config.io_threads, error_log=_error_log)
        room = Room(config, log, engine, self.bans)
        server = ChatServer(chat_sockets, room, log, config, engine, error_log=_error_log,
                            tls_listeners=tls_sockets, tls=self.tls)
        admin_server = admin.AdminServer(
            admin_socket, commands.build(room, log, self.bans, tls_expiry=lambda: (
                self.tls.expires if self.tls is not None else None)),
            config, log, owned_path=owned_admin_path, error_log=_error_log)
        self.room, self.server, self.admin_server = room, server, admin_server
        wakeup_read = self._install_signals()
        if pid_path:  # a SIGTERM from here on is handled, so the file is always removed
            pidfile.write(pid_path)
        engine.start()  # the loops first: the accept thread hands them connections
        server.start()
        admin_server.start()
        notifier = systemd.Notifier()
        # each part says whether it turns, by its own tick; the room whether its lock frees
        watchdog = systemd.Watchdog(notifier, systemd.watchdog_interval(), [
            server.accepting, admin_server.answering, engine.ticking,
            lambda: room.probe(ROOM_PROBE_TIMEOUT),
        ])
        listening = ",".join(server.addresses())
        log.event("start", version=__version__, listen=listening)
        if self.tls_unserved:
            log.event("tls", ok="no", error=self.tls_unserved)
        console.say(f"tcpchatd {__version__}: listening on {listening}; admin socket "
                    f"{owned_admin_path or 'from systemd'}")
        notifier.ready(self._status())
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
                room.expire()
                for ended in self.bans.expire():
                    log.event("ban_expired", target=ended.target, by_uid=ended.by_uid)
                watchdog.tick()
                notifier.status(self._status())
        finally:
            notifier.stopping()
            log.event("stop")
            server.shutdown(self.config.shutdown_grace)  # the loops flush the goodbyes
            engine.stop()
            server.close_listeners()
            admin_server.close()
            log.close()
        return 0

    def _status(self) -> str:
        count = len(self.room)
        noun = "client" if count == 1 else "clients"
        status = f"{count} {noun}; listening on {', '.join(self.server.addresses())}"
        if self.tls_unserved:
            status += f"; TLS not served: {self.tls_unserved}"
        return status

    # --- signals: the handlers only enqueue; this thread acts

    def _install_signals(self) -> int:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._enqueue_signal)
        return read_fd

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self, notifier: systemd.Notifier) -> bool:
        """Act on queued signals; True when the daemon should stop."""
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGHUP:
                self.handle_hup(notifier)
            else:
                return True
        return False

    def handle_hup(self, notifier: systemd.Notifier) -> None:
        """Re-read the config file; an invalid one keeps the running settings."""
        notifier.reloading()
        try:
            new = config_module.from_args(self.args)
            if new.admin_group:  # every admin connection would fail on an unknown group
                try:
                    admin.resolve_group(new.admin_group)
                except StartupError as exc:
                    raise ConfigError(exc.message) from None
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
        self.room.config = new
        self.server.config = new
        self.admin_server.config = new
        self.log.reconfigure(new.log_target, new.syslog_address, new.syslog_facility,
                             new.log_queue)


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
