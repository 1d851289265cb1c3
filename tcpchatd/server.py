"""Chat listeners and their accept loops; admission limits; the set of sessions."""

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
from typing import Any

from . import errors, protocol
from .config import Config
from .errors import StartupError
from .room import Room
from .session import Session
from .writerpool import WriterPool

ACCEPT_TICK = 0.5  # how often an idle accept loop updates its heartbeat


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or StartupError with one clear line."""
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
        raise StartupError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    return sock


def describe(sock: socket.socket) -> str:
    """`host:port` (or `[v6]:port`) a listening socket is bound to."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


class ChatServer:
    """Accepts clients on every listener and keeps the set of live sessions."""

    def __init__(self, listeners: list[socket.socket], room: Room, log: Any,
                 config: Config, pool: WriterPool, error_log: Any = None) -> None:
        self.listeners = listeners
        self.room = room
        self.bans = room.bans
        self.log = log
        self.error_log = error_log
        self._config = config
        self._exempt = self._networks(config)
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._per_ip: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self.heartbeats = [time.monotonic()] * len(listeners)
        self.pool = pool  # the room's channel: started and stopped with the server

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._exempt = self._networks(config)
        self._config = config
        self.room.config = config

    @staticmethod
    def _networks(config: Config) -> list:
        return [ipaddress.ip_network(n, strict=False) for n in config.exempt_addresses]

    def addresses(self) -> list[str]:
        return [describe(sock) for sock in self.listeners]

    def start(self) -> None:
        self.pool.start()
        for index, listener in enumerate(self.listeners):
            thread = threading.Thread(target=self._accept_loop, args=(index, listener),
                                      name=f"accept {describe(listener)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _accept_loop(self, index: int, listener: socket.socket) -> None:
        # Non-blocking accept after poll; the wake-up pipe ends the loop at once on stop
        # (shutdown() on the listener would also stop systemd's copy of an inherited one).
        listener.setblocking(False)
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping.is_set():
            self.heartbeats[index] = time.monotonic()
            if not poller.poll(ACCEPT_TICK * 1000) or self._stopping.is_set():
                continue
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)  # out of descriptors: let clients leave, then go on
                continue
            try:
                self._admit(sock, address)
            except Exception:
                self.handle_error(None)
                sock.close()

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        sock.settimeout(None)
        config = self.config
        ip = address[0]
        ban = self.bans.for_address(ip) if self.bans is not None else None
        with self._lock:
            if ban is not None:  # exempt addresses are not exempt from bans
                refusal = (errors.BANNED, f"your address is {ban.describe()}")
                self.log.event("refused", addr=ip, code=errors.BANNED)
            elif len(self._sessions) >= config.max_clients:
                refusal = (errors.SERVER_FULL, "the server is full, try again later")
            elif self._per_ip[ip] >= config.max_per_address and not self._exempted(ip):
                refusal = (errors.ADDRESS_LIMIT,
                           f"too many connections from {ip} (limit {config.max_per_address})")
            else:
                refusal = None
                session = Session(sock, address, self)
                self._sessions.add(session)
                self._per_ip[ip] += 1
        if refusal is None:
            try:
                session.start()
                return
            except RuntimeError as exc:  # no thread (a task limit): the slot was never used
                self._forget(session)
                if self.error_log is not None:
                    self.error_log(f"cannot serve {session.address}: {exc}; "
                                   "refused with server_full")
                refusal = (errors.SERVER_FULL, "the server cannot take more clients now, "
                           "try again later")
        try:  # a fresh socket's send buffer has room for one small frame: never blocks
            sock.setblocking(False)
            sock.send(protocol.error_frame(*refusal))
        except OSError:
            pass
        finally:
            sock.close()

    def _exempted(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._exempt)

    def session_ended(self, session: Session) -> None:
        self._forget(session)

    def _forget(self, session: Session) -> None:
        """Give the session's slot back: the session count and its address's count."""
        with self._lock:
            self._sessions.discard(session)
            self._per_ip[session.ip] -= 1
            if not self._per_ip[session.ip]:
                del self._per_ip[session.ip]

    def session_count(self) -> int:
        return len(self._sessions)

    def reap(self, now: float | None = None) -> None:
        """Disconnect sessions whose final frame did not flush within the grace time."""
        now = time.monotonic() if now is None else now
        with self._lock:
            late = [s for s in self._sessions if s.close_deadline and s.close_deadline <= now]
        for session in late:
            session.shutdown_socket()

    def accepting(self, max_age: float) -> bool:
        """True when every accept loop has ticked within max_age seconds."""
        now = time.monotonic()
        return all(now - beat <= max_age for beat in self.heartbeats)

    def handle_error(self, session: Session | None) -> None:
        """A handler failed: its traceback goes to the error log, never to a peer."""
        where = session.address if session is not None else "accept loop"
        text = f"internal error in {where}:\n{traceback.format_exc()}"
        if self.error_log is not None:
            self.error_log(text)

    def stop_accepting(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            os.write(self._wake_write, b"x")
        for thread in self._threads:
            thread.join(2 * ACCEPT_TICK)

    def shutdown(self, grace: float) -> None:
        """Tell every client, flush for at most `grace` seconds, then disconnect the rest."""
        self.stop_accepting()
        with self._lock:
            sessions = list(self._sessions)
        frame = protocol.shutdown_frame()
        for session in sessions:
            session.close("shutdown", frame)
        deadline = time.monotonic() + grace
        for session in sessions:
            session.join_threads(max(0.0, deadline - time.monotonic()))
        for session in sessions:
            session.shutdown_socket()
        for session in sessions:
            session.join_threads(1.0)

    def close_listeners(self) -> None:
        self.pool.stop()
        for sock in self.listeners:
            sock.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
