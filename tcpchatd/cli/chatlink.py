"""The client's side of one chat connection: connect, join, frames in and out, reconnect.

Shared by the pipe mode (client.py) and the terminal (terminal.py); it speaks like the
original client (raw nickname in one write, `NICK: text` inside every message).
"""

from __future__ import annotations

import argparse
import select
import socket
import ssl
import threading
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from ..wire import errors, protocol

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_FRAME = 1 << 24  # what the client accepts from a server
CHAT_PORT = 55555    # the original project's port (the daemon's default too)
TLS_PORT = 55556     # tcpchatd-tls.socket's
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0
NO_POST = ("this server does not take --post (the original TCPchat server, or an old "
           "tcpchatd?): leave --post out")
# errors that end a connection before any nickname could help
DOOR_REFUSALS = frozenset({errors.SERVER_FULL, errors.ADDRESS_LIMIT, errors.TLS_REQUIRED})
PASSWORD_CREDENTIAL = "tcpchat.password"  # --account's password under systemd
DEFAULT_RATE = 15.0  # messages a second: under the server's default flood limit (20/s)
# TCP keepalive: a connection silent this many seconds is probed, then every
# KEEPALIVE_INTERVAL, KEEPALIVE_PROBES times: a server that dropped us without a word
# (our answers to its probes lost, its reset too) answers a probe with a reset, and a
# listener that never sends learns it is gone instead of waiting forever
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6


class ServerGone(Exception):
    """The server closed the connection or sent something unreadable."""


class Refused(ServerGone):
    """The server will not have us back: a kick, a flood disconnect, a refusal at the door
    (server full, too many connections from this address, a banned address, TLS needed),
    a rejected nickname."""


class NicknameRejected(Refused):
    """The server refused the nickname (taken, invalid, banned): another one may do."""


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """What `--tls` verifies with: the system's CAs (or cafile), the host name, TLS 1.2+."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TlsStream:
    """One TLS connection shared by a reading and a writing thread.

    OpenSSL does not allow one thread to read a connection while another writes it, so
    every TLS call is made under one lock, on a non-blocking socket; a thread waits for
    its readiness outside the lock.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        sock.setblocking(False)

    def recv(self, size: int) -> bytes:
        while True:
            if not self.sock.pending():
                select.select([self.sock], [], [])
            with self._lock:
                try:
                    return self.sock.recv(size)
                except ssl.SSLWantReadError:
                    continue
                except ssl.SSLZeroReturnError:
                    return b""

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self._lock:
                try:
                    view = view[self.sock.send(view):]
                    continue
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            select.select([], [self.sock], [], 1.0)


class Connection:
    """A chat connection: handshake, then frames both ways; inside TLS with `tls`."""

    def __init__(self, host: str, port: int, timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None, keepalive: int = KEEPALIVE_IDLE) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ServerGone(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        if keepalive:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                                 min(keepalive, KEEPALIVE_INTERVAL))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        self.stream: socket.socket | TlsStream = self.sock
        if tls is not None:
            self.sock = self._tls_handshake(tls, host, port)
            self.stream = TlsStream(self.sock)
        else:
            self.sock.settimeout(None)
        self.reader = protocol.FrameReader(self.stream.recv)
        self._send_lock = threading.Lock()
        self.nickname = ""  # once it has sent one
        self.account: str | None = None  # once logged in
        self.role = "guest"
        self.features: frozenset[str] = frozenset()  # what the server's names frame offered
        # the rooms it is in (a server without rooms: one, named ""), in the order joined,
        # and who is in each, as far as we know
        self.rooms: dict[str, set[str]] = {}
        self.topics: dict[str, str] = {}

    @property
    def nicknames(self) -> set[str]:
        """Everyone in the rooms it is in (for completion)."""
        return set().union(*self.rooms.values()) if self.rooms else set()

    def room_of(self, name: str) -> str | None:
        """The room it is in of that name (`#dev`, `Dev`: the server's spelling), or None."""
        wanted = name.lstrip("#").casefold()
        return next((room for room in self.rooms if room.casefold() == wanted), None)

    def next(self) -> dict | bytes:
        """The next frame as a dict, or NICKNAME_PROMPT."""
        try:
            body = self.reader.next_body(MAX_FRAME, allow_prompt=True)
        except (OSError, protocol.PeerClosedMidFrame, errors.ProtocolError):
            raise ServerGone("connection to the server was lost") from None
        if body is None:
            raise ServerGone("the server closed the connection")
        if body is protocol.NICKNAME_PROMPT:
            return body
        try:
            return protocol.decode(body)
        except errors.ProtocolError as exc:
            raise ServerGone(f"the server sent a bad frame: {exc.message}") from None

    def incoming(self):
        """Frames from the server; each message is confirmed as it arrives (as the original)."""
        while True:
            frame = self.next()
            if isinstance(frame, bytes):  # the prompt
                continue
            if frame.get("type") == "message" and isinstance(frame.get("uuid"), str):
                self.confirm(frame["uuid"])
            self._track(frame)
            yield frame

    def _track(self, frame: dict) -> None:
        """Keep the features, the rooms and who is in them up to date."""
        event, nickname = frame.get("event"), frame.get("nickname")
        room = frame["room"] if isinstance(frame.get("room"), str) else ""
        if event == "names" and isinstance(frame.get("nicknames"), list):
            if room not in self.rooms and "id" in frame and frame.get("id") != "join":
                return  # a `who` of a room it is not in
            self.rooms[room] = {n for n in frame["nicknames"] if isinstance(n, str)}
            if isinstance(frame.get("topic"), str):
                self.topics[room] = frame["topic"]
            if isinstance(frame.get("features"), list):
                self.features = frozenset(f for f in frame["features"] if isinstance(f, str))
        elif event == "join" and isinstance(nickname, str) and room in self.rooms:
            self.rooms[room].add(nickname)
        elif event == "leave" and isinstance(nickname, str):
            if nickname == self.nickname and room:  # it parted
                self.rooms.pop(room, None)
            elif room in self.rooms:
                self.rooms[room].discard(nickname)
        elif event == "kick" and room:  # out of that room alone
            self.rooms.pop(room, None)
        elif event == "topic" and room and isinstance(frame.get("topic"), str):
            self.topics[room] = frame["topic"]
        elif event == "nick" and isinstance(nickname, str):
            if room in self.rooms:
                self.rooms[room].discard(frame.get("old"))
                self.rooms[room].add(nickname)
            if frame.get("old") == self.nickname:
                self.nickname = nickname

    def _next_at_the_door(self, last_error: str | None) -> dict | bytes:
        """The next frame while joining: a close after an error frame is that refusal, in
        the server's own words."""
        try:
            return self.next()
        except ServerGone:
            if last_error is not None:
                raise Refused(last_error) from None
            raise

    def join(self, ask_nickname: Callable[[], str], tell: Callable[[str], None]) -> None:
        """Answer `_nickname_` prompts until this client's join arrives. A server that
        closes after an error frame (full, too many from this address, a banned address,
        TLS needed on this port, a third refused nickname) raises Refused with the
        server's own words, never a bare "closed"."""
        last_error: str | None = None
        while True:
            item = self._next_at_the_door(last_error)
            if isinstance(item, bytes):  # the prompt
                self.nickname = ask_nickname()
                self._send(self.nickname.encode("utf-8"))  # raw, one write, as the original
                continue
            if item.get("type") != "system":
                continue
            if item.get("event") == "error":
                last_error = str(item.get("message"))
                if item.get("code") in DOOR_REFUSALS:
                    raise Refused(last_error)
                tell(last_error)
                continue
            joined = item.get("nickname") == self.nickname if "event" in item \
                else item.get("message") == f"{self.nickname} joined!"
            if joined:
                self.rooms.setdefault(str(item.get("room", "")), set()).add(self.nickname)
                return

    def hello(self, nickname: str | None, mode: str = "post", account: str | None = None,
              password: str | None = None) -> None:
        """Answer the prompt with a hello frame (protocol.py): post mode, or a login to
        an account; return once joined (a poster quietly), under the name the server gave
        (a free variant when `nickname` is taken: see self.nickname); Refused with the
        server's words otherwise (a wrong password, a reserved nickname...)."""
        sent, last_error = False, None
        hello: dict[str, Any] = {"type": "hello", "mode": mode}
        if nickname is not None:
            hello["nickname"] = nickname
        if account is not None:
            hello.update(account=account, password=password or "")
        while True:
            item = self._next_at_the_door(last_error)
            if isinstance(item, bytes):  # the prompt
                if sent:  # asked again: a server that knows no hello took it for a name
                    raise Refused(NO_POST)
                self._send(protocol.encode(hello))
                sent = True
                continue
            if item.get("type") != "system":
                continue
            if "event" not in item:  # the original server: it took the frame for a name
                raise Refused(NO_POST)
            if item["event"] == "error":
                last_error = str(item.get("message"))
                if mode == "chat" and item.get("code") in (errors.NICKNAME_TAKEN,
                                                           errors.NICKNAME_INVALID,
                                                           errors.NICKNAME_RESERVED):
                    raise NicknameRejected(f"nickname {nickname!r} rejected: {last_error}")
            elif item["event"] == "login":
                self.account = str(item.get("account"))
                self.role = str(item.get("role"))
            elif item["event"] == "join":
                self.nickname = str(item.get("nickname", nickname))
                self.rooms.setdefault(str(item.get("room", "")), set()).add(self.nickname)
                return

    def enter(self, room: str) -> str:
        """Join a room before the conversation starts (pipe and post modes): its name as
        the server spells it; Refused with the server's words (no such room...). Being
        in it already is no error."""
        if "" in self.rooms:  # its join named no room: the original server, an old tcpchatd
            raise Refused(f"this server has no rooms: leave --room {room} out")
        self.request("join", room=room)
        while True:
            item = self.next()
            if isinstance(item, bytes) or item.get("id") != "join":
                if isinstance(item, dict):
                    self._track(item)
                continue
            if item.get("event") == "names":
                self._track(item)
                return str(item.get("room"))
            if item.get("code") == errors.ALREADY_IN_ROOM:
                return self.room_of(room) or room
            raise Refused(str(item.get("message", "the server refused the room")))

    def send_message(self, text: str, to: str | None = None, action: bool = False,
                     frame_uuid: str | None = None, room: str | None = None) -> str:
        frame_uuid = frame_uuid or str(uuidlib.uuid4())
        frame: dict[str, Any] = {"type": "message", "uuid": frame_uuid,
                                 "message": f"{self.nickname}: {text}"}
        if to is not None:
            frame["to"] = to
        elif room:  # "" is the one room of a server without rooms
            frame["room"] = room
        if action:
            frame["action"] = True
        self._send(protocol.encode(frame))
        return frame_uuid

    def request(self, cmd: str, **fields: object) -> None:
        self._send(protocol.encode({"type": "request", "id": cmd, "cmd": cmd, **fields}))

    def confirm(self, frame_uuid: str) -> None:
        self._send(protocol.encode({"type": "confirm", "uuid": frame_uuid}))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.stream.sendall(data)
            except OSError:
                raise ServerGone("connection to the server was lost") from None

    def _tls_handshake(self, context: ssl.SSLContext, host: str,
                       port: int) -> ssl.SSLSocket:
        """The verified TLS connection; Refused (no retry helps) when verification fails."""
        try:
            return context.wrap_socket(self.sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            self.sock.close()
            raise Refused(f"TLS to {host}:{port}: the server's certificate is not "
                          f"trusted: {exc.verify_message}") from None
        except (ssl.SSLError, OSError) as exc:
            self.sock.close()
            raise ServerGone(f"TLS to {host}:{port} failed: "
                             f"{getattr(exc, 'reason', None) or exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def refusal(frame: dict) -> str | None:
    """Why the server will not have us back, when a frame says it; else None."""
    if frame.get("event") == "kick":
        return str(frame.get("message", "kicked"))
    if frame.get("event") == "error" and "disconnected" in str(frame.get("message", "")):
        if frame.get("code") == errors.FLOOD:
            return "disconnected for flooding (too many messages at once)"
        return f"disconnected: {frame.get('message')}"
    return None


def connect(args: argparse.Namespace) -> Connection:
    """The one way every mode connects: plaintext, or TLS (verified) with --tls."""
    return Connection(args.host, args.port, args.timeout, args.tls_context,
                      getattr(args, "keepalive", KEEPALIVE_IDLE))


def read_password(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    """--account's password: --password-file, else the service's credential
    $CREDENTIALS_DIRECTORY/tcpchat.password (LoadCredential=), else asked on the
    terminal; ValueError with the reason when none can be had."""
    import os
    environ = dict(os.environ) if environ is None else environ
    path = args.password_file
    if path is None and environ.get("CREDENTIALS_DIRECTORY"):
        candidate = os.path.join(environ["CREDENTIALS_DIRECTORY"], PASSWORD_CREDENTIAL)
        path = candidate if os.path.exists(candidate) else None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read the password file {path}: "
                             f"{exc.strerror or exc}") from None
        if not password:
            raise ValueError(f"the password file {path} is empty")
        return password
    try:
        with open("/dev/tty"):
            pass
    except OSError:
        raise ValueError("--account needs a password: --password-file FILE, the credential "
                         f"$CREDENTIALS_DIRECTORY/{PASSWORD_CREDENTIAL}, or a terminal to "
                         "ask on") from None
    import getpass
    return getpass.getpass(f"password for {args.account}: ")


def connect_and_join(args: argparse.Namespace, nickname: str,
                     tell: Callable[[str], None] = lambda _: None) -> Connection:
    """A joined connection under `nickname`; NicknameRejected when the server rejects
    it, Refused when it refuses us at the door."""
    conn = connect(args)
    if getattr(args, "account", None):  # a login, in the hello frame (tcpchatd only)
        try:
            conn.hello(nickname or None, "chat", args.account, args.password)
        except ServerGone:
            conn.close()
            raise
        return conn
    rejected: list[str] = []

    def ask() -> str:
        if rejected:
            raise NicknameRejected(f"nickname {nickname!r} rejected: {rejected[-1]}")
        return nickname
    def rejected_for(reason: str) -> None:
        rejected.append(reason)
        tell(reason)
    try:
        conn.join(ask, rejected_for)
    except ServerGone:
        conn.close()
        raise
    return conn


def join_interactively(args: argparse.Namespace, ask_nickname: Callable[[], str],
                       tell: Callable[[str], None]) -> Connection:
    """A joined connection for a person: the nickname is asked BEFORE connecting, so that
    nobody at the prompt meets the server's handshake_timeout; a rejected one is told
    (with the server's reason) and asked again, on a new connection. With --account
    and no --nick, the account's own nickname, unasked."""
    # with --account: its own nickname (or --nick) first, unasked
    nickname: str | None = (args.nick or "") if getattr(args, "account", None) else None
    while True:
        if nickname is None:
            nickname = ask_nickname()
        try:
            return connect_and_join(args, nickname)
        except NicknameRejected as exc:
            tell(str(exc).split(": ", 1)[-1])
            nickname = None


def reconnect(args: argparse.Namespace, nickname: str, say: Callable[[str], None],
              stop: threading.Event, rooms: list[str] | None = None) -> Connection | None:
    """Reconnect with backoff (0.5 s doubling to 30 s) until joined or `stop` is set;
    then back in `rooms` (those it was in: a room that is gone is told and left out,
    and the default room is parted if it was not among them)."""
    delay = RECONNECT_FIRST
    while not stop.is_set():
        say(f"reconnecting in {delay:g} s")
        if stop.wait(delay):
            return None
        try:
            conn = connect_and_join(args, nickname)
            if rooms:
                back_in(conn, rooms, say)
        except ServerGone as exc:
            say(str(exc))
            delay = min(delay * 2, RECONNECT_MAX)
            continue
        say(f"reconnected as {conn.nickname}")
        return conn
    return None


def back_in(conn: Connection, rooms: list[str], say: Callable[[str], None]) -> None:
    """A new connection in the rooms the last one was in (it starts in the default room,
    which it parts if that was not among them)."""
    default = next(iter(conn.rooms), "")
    for room in rooms:
        if conn.room_of(room) is None:
            try:
                conn.enter(room)
            except Refused as exc:  # gone meanwhile, or no longer to be made
                say(f"#{room}: {exc}")
    if default and len(conn.rooms) > 1 and \
            not any(r.casefold() == default.casefold() for r in rooms):
        conn.request("part", room=default)


def describe_receipt(frame: dict) -> tuple[bool, str]:
    """(reached someone, text) for a receipt or undelivered notice."""
    if frame.get("type") == "confirm":
        if "delivered" in frame and "recipients" in frame:
            return True, f"delivered to {frame['delivered']} of {frame['recipients']}"
        return True, "delivered"
    message = str(frame.get("message", "not delivered"))
    return False, message.replace("Message not delivered", "not delivered")


