"""Chat listeners and the accept thread; admission (bans, limits); the set of connections.

The chat's listeners (plaintext TCP, and TLS) and its doors for other protocols, each
accepted the same way: `web` (HTTP: the page, and WebSockets) and `irc`, and each inside
TLS (`web-tls`, `irc-tls`). A door's connection is a session on its translating
transport (websocket.py, irctransport.py)."""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..chat.hall import EventLog, Hall
from ..wire import errors, protocol
from .engine import Engine, name_os_thread
from .httpdoor import HttpDoor
from .irctransport import IrcTransport
from .session import Session
from .settings import NetSettings
from .tls import TlsCredentials
from .transport import PlainTransport, TlsTransport
from .websocket import WebSocketTransport

if TYPE_CHECKING:
    from .session import Transport

DOOR_KINDS = ("web", "web-tls", "irc", "irc-tls")  # also systemd's FileDescriptorName=
ACCEPT_TICK = 0.5  # how often an idle accept thread updates its heartbeat
ACCEPT_BATCH = 64  # connections accepted in a row before the listeners are polled again


class ListenError(Exception):
    """A chat address cannot be listened on (one line; the daemon does not start)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or ListenError with one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise ListenError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    return sock


def describe(sock: socket.socket) -> str:
    """`host:port` (or `[v6]:port`) a listening socket is bound to."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


class ChatServer:
    """Accepts clients on every listener in one thread, admits them (one hook: bans and
    limits), and hands each to the engine, whose loops serve it for life."""

    def __init__(self, listeners: list[socket.socket], hall: Hall, log: EventLog,
                 config: NetSettings, engine: Engine,
                 error_log: Callable[[str], None] | None = None,
                 tls_listeners: tuple[socket.socket, ...] | list[socket.socket] = (),
                 tls: TlsCredentials | None = None,
                 doors: dict[str, list[socket.socket]] | None = None) -> None:
        self.listeners = listeners
        # TLS listeners are served only with credentials (else left unserved: main.py)
        self.tls_listeners = list(tls_listeners) if tls is not None else []
        self._unserved = [] if tls is not None else list(tls_listeners)
        doors = doors or {}
        self.doors = {kind: list(doors.get(kind, ())) for kind in DOOR_KINDS
                      if tls is not None or not kind.endswith("-tls")}  # served
        self.all_doors = {kind: list(doors.get(kind, ())) for kind in DOOR_KINDS}
        self._door_of = {sock: kind for kind, socks in self.doors.items() for sock in socks}
        self.tls = tls
        self.hall = hall
        self.bans = hall.bans
        self.log = log
        # what the sessions count for metrics (from every loop: a lost increment in a
        # race costs one count, a lock would cost every flood and error)
        self.errors: dict[str, int] = {}  # protocol errors by code
        self.flood_drops = 0              # messages and IRC lines over the flood limit
        self.flood_disconnects = 0
        self.http_answers: dict[int, int] = {}  # the web door's answers that end at it
        self.error_log = error_log
        self._config = config
        self._exempt = self._networks(config)
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # a connection's slot was given back
        self._connections: set[Session] = set()
        self._per_ip: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self.heartbeat = time.monotonic()
        self.engine = engine  # the loops that serve what this server accepts

    @property
    def config(self) -> NetSettings:
        return self._config

    @config.setter
    def config(self, config: NetSettings) -> None:
        self._exempt = self._networks(config)
        self._config = config

    @staticmethod
    def _networks(config: NetSettings) -> list:
        return [ipaddress.ip_network(n, strict=False) for n in config.exempt_addresses]

    def counters(self) -> dict:
        """The sessions' counts, for metrics."""
        return {"protocol_errors": dict(self.errors), "flood_drops": self.flood_drops,
                "flood_disconnects": self.flood_disconnects,
                "http_answers": dict(self.http_answers)}

    def addresses(self) -> list[str]:
        return [describe(sock) for sock in self.listeners] + [
            f"{describe(sock)} (tls)" for sock in self.tls_listeners] + [
            f"{describe(sock)} ({kind.replace('-tls', ', tls')})"
            for kind, socks in self.doors.items() for sock in socks]

    def _served(self) -> list[socket.socket]:
        return self.listeners + self.tls_listeners + list(self._door_of)

    def start(self) -> None:
        self._thread.start()

    def _accept_loop(self) -> None:
        # Non-blocking accept after poll; the wake-up pipe ends the loop at once on stop
        # (shutdown() on a listener would also stop systemd's copy of an inherited one).
        name_os_thread("tcpchatd accept")
        poller = select.poll()
        by_fd = {}
        for listener in self._served():
            listener.setblocking(False)
            poller.register(listener, select.POLLIN)
            by_fd[listener.fileno()] = listener
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            events = poller.poll(ACCEPT_TICK * 1000)
            if self._stopping.is_set():
                return
            for fd, _ in events:
                ready = by_fd.get(fd)
                if ready is not None:
                    self._accept(ready)

    def _accept(self, listener: socket.socket) -> None:
        door = self._door_of.get(listener)
        tls = listener in self.tls_listeners or door is not None and door.endswith("-tls")
        for _ in range(ACCEPT_BATCH):  # a burst of connects is taken in one wake-up
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)  # out of descriptors: let clients leave, then go on
                return
            try:
                self._admit(sock, address, tls, door)
            except Exception:
                self._admission_failed()
                sock.close()

    def _admit(self, sock: socket.socket, address: tuple, tls: bool = False,
               door: str | None = None) -> None:
        """Admission, the one hook between accept and the handshake (a TLS connection
        is wrapped by its loop with the context current now)."""
        config = self.config
        ip = address[0]
        ban = self.bans.for_address(ip) if self.bans is not None else None
        with self._lock:
            if ban is not None:  # exempt addresses are not exempt from bans
                refusal = (errors.BANNED, f"your address is {ban.describe()}")
            elif len(self._connections) >= config.max_clients:
                refusal = (errors.SERVER_FULL, "the server is full, try again later")
            elif self._per_ip[ip] >= config.max_per_address and not self._exempted(ip):
                refusal = (errors.ADDRESS_LIMIT,
                           f"too many connections from {ip} (limit {config.max_per_address})")
            else:
                refusal = None
                inner = TlsTransport(sock, self.tls.context) if tls and self.tls \
                    else PlainTransport(sock)
                conn = Session(self._through(door, inner, address, config), address, self)
                self._connections.add(conn)
                self._per_ip[ip] += 1
        if refusal is None:
            self.engine.adopt(conn)
            return
        self.log.event("refused", addr=ip, code=refusal[0], tls="yes" if tls else None,
                       via=door.removesuffix("-tls") if door else None)
        if tls or door:  # the client expects a TLS handshake, HTTP or IRC, not a frame:
            # it only sees the close
            sock.close()
            return
        try:  # a fresh socket's send buffer has room for one small frame: never blocks
            sock.setblocking(False)
            sock.send(protocol.error_frame(*refusal))
        except OSError:
            pass
        finally:
            sock.close()

    @staticmethod
    def _through(door: str | None, inner: PlainTransport | TlsTransport, address: tuple,
                 config: NetSettings) -> Transport:
        """The transport a door's protocol speaks on (none: the chat's own)."""
        if door is None:
            return inner
        if door.startswith("web"):
            return WebSocketTransport(inner, HttpDoor(inner.tls, config.web_origins))
        return IrcTransport(inner, address[0], config)

    def _exempted(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._exempt)

    def adopt(self, conn: Session) -> None:
        """A connection carried through an upgrade: counted as admitted, then served."""
        with self._lock:
            self._connections.add(conn)
            self._per_ip[conn.ip] += 1
        self.engine.adopt(conn)

    def all_tls_listeners(self) -> list[socket.socket]:
        """Served or not: an upgrade hands them all over."""
        return self.tls_listeners + self._unserved



    def connection_ended(self, conn: Session) -> None:
        """Give the connection's slot back: the count and its address's count."""
        with self._lock:
            if conn not in self._connections:
                return
            self._connections.discard(conn)
            self._per_ip[conn.ip] -= 1
            if not self._per_ip[conn.ip]:
                del self._per_ip[conn.ip]
            self._ended.notify_all()

    def wait_ended(self, connections: Sequence[Any] | None, timeout: float) -> bool:
        """Wait (at most timeout) until those connections (None: all) have ended."""
        def ended() -> bool:
            if connections is None:
                return not self._connections
            return not self._connections.intersection(connections)
        with self._lock:
            return self._ended.wait_for(ended, timeout)

    def connection_count(self) -> int:
        return len(self._connections)

    def accepting(self, max_age: float = 8 * ACCEPT_TICK) -> bool:
        """True when the accept thread has ticked within max_age seconds."""
        return time.monotonic() - self.heartbeat <= max_age

    def _admission_failed(self) -> None:
        """Inside an except block: its traceback goes to the error log, never to a peer."""
        if self.error_log is not None:
            self.error_log(f"internal error in the accept thread:\n{traceback.format_exc()}")

    def stop_accepting(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(2 * ACCEPT_TICK)

    def shutdown(self, grace: float, reason: str = "shutdown",
                 frame: bytes | None = None) -> None:
        """Tell every client (`shutdown`, or the frame given), flush for at most `grace`
        seconds, then disconnect the rest."""
        self.stop_accepting()
        with self._lock:
            connections = list(self._connections)
        frame = frame or protocol.shutdown_frame()
        for conn in connections:
            conn.close(reason, frame)
        # each loop releases its connections once flushed, or at their close deadline
        self.wait_ended(None, grace + ACCEPT_TICK)

    def close_listeners(self) -> None:
        for sock in self.listeners + self.tls_listeners + self._unserved + [
                sock for socks in self.all_doors.values() for sock in socks]:
            sock.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
