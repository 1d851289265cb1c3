"""A chat client written from DESIGN.md alone, speaking like the original client.

It must not import the package: an encoding bug shared by both ends would
cancel itself out. Raw nickname without a newline, 10-byte headers padded
with spaces (`f"{len:<10}"`), the nickname already inside `message`.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
import uuid

HEADER = 10
PROMPT = b"_nickname_"


def frame(obj) -> bytes:
    body = json.dumps(obj).encode("utf-8")
    return f"{len(body):<{HEADER}}".encode("ascii") + body


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.nickname: str | None = None
        self._send_lock = threading.Lock()  # whole frames, even from several threads

    # --- bytes

    def recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {size} bytes: {data!r}")
            data += chunk
        return data

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def read_item(self):
        """The next frame as a dict, or the bytes b'_nickname_'."""
        header = self.recv_exact(HEADER)
        if header == PROMPT:
            return PROMPT
        return json.loads(self.recv_exact(int(header.decode("ascii").strip())).decode("utf-8"))

    def read(self) -> dict:
        item = self.read_item()
        assert item != PROMPT, "unexpected _nickname_"
        return item

    def read_until(self, predicate, limit: int = 100000) -> dict:
        for _ in range(limit):
            item = self.read_item()
            if item != PROMPT and predicate(item):
                return item
        raise AssertionError("no matching frame")

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout` (what it still
        sends is drained); False when it keeps the connection open, or keeps sending."""
        deadline = time.monotonic() + timeout
        kept = self.sock.gettimeout()  # a client that stays open is read on as before
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(kept)

    # --- chat

    def join(self, nickname: str) -> dict:
        """Handshake like the original client; returns our own join frame.

        The names frame that follows it, and the history frame when names says one
        follows, are kept in self.names and self.history.
        """
        assert self.recv_exact(HEADER) == PROMPT
        self.send_raw(nickname.encode("utf-8"))
        self.nickname = nickname
        joined = self.read_until(lambda f: f.get("event") == "join"
                                 and f.get("nickname") == nickname)
        self.names = self.read()
        assert self.names["event"] == "names", self.names
        self.history = self.read() if self.names["history"] else None
        assert self.history is None or self.history["event"] == "history"
        return joined

    def hello(self, **fields) -> dict:
        """Answer the prompt with a hello frame (a login: account=, password=); returns
        the first frame that answers it (the login, or an error). On a login the join,
        names and history follow: see joined()."""
        assert self.recv_exact(HEADER) == PROMPT
        self.send_raw(frame({"type": "hello", **fields}))
        return self.read_until(lambda f: f.get("event") in ("login", "error", "join"))

    def joined(self) -> dict:
        """After a hello's login: our join, names (self.names) and history."""
        joined = self.read_until(lambda f: f.get("event") == "join")
        self.nickname = joined["nickname"]
        self.names = self.read()
        assert self.names["event"] == "names", self.names
        self.history = self.read() if self.names["history"] else None
        return joined

    def say(self, text: str, msg_uuid: str | None = None, room: str | None = None) -> str:
        msg_uuid = msg_uuid or str(uuid.uuid4())
        self.send_raw(frame({"type": "message", "uuid": msg_uuid,
                             "message": f"{self.nickname}: {text}",
                             **({"room": room} if room is not None else {})}))
        return msg_uuid

    def request(self, cmd: str, **fields) -> str:
        """Send a request; its id (the answer carries it)."""
        request_id = uuid.uuid4().hex[:8]
        self.send_raw(frame({"type": "request", "id": request_id, "cmd": cmd, **fields}))
        return request_id

    def answer(self, request_id: str) -> dict:
        """The frame that answers a request (its names, its error...)."""
        return self.read_until(lambda f: f.get("id") == request_id)

    def enter(self, room: str) -> dict:
        """Join a room; its names frame (then its history, if any, in self.history)."""
        names = self.answer(self.request("join", room=room))
        assert names["event"] == "names", names
        self.history = self.read() if names.get("history") else None
        return names

    def confirm(self, msg_uuid: str) -> None:
        self.send_raw(frame({"type": "confirm", "uuid": msg_uuid}))

    def quit(self) -> None:
        """Leave cleanly: end our side, read what is left until the server closes."""
        self.sock.shutdown(socket.SHUT_WR)
        self.closed()
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class TlsRawClient(RawClient):
    """The test's own protocol client, inside a verified TLS connection."""

    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 5.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.nickname = None
        self._send_lock = threading.Lock()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")


def untimed(frame: dict) -> dict:
    """A system frame without its `time` (what happened in the room is stamped), which is
    checked to be an ISO 8601 UTC stamp."""
    frame = dict(frame)
    stamp = frame.pop("time")
    assert ISO_UTC.match(stamp), stamp
    return frame


def raw_frame(body: bytes) -> bytes:
    """A frame around any body, well-formed or not (for the tests of bad input)."""
    return f"{len(body):<{HEADER}}".encode("ascii") + body


def confirming(client: RawClient, count: int | None = None,
               seen: list | None = None) -> threading.Thread:
    """A thread that reads `client`'s frames, keeps them in `seen`, and confirms every
    message (`count` of them, or until the connection ends), as a reader does."""
    seen = [] if seen is None else seen

    def run() -> None:
        confirmed = 0
        try:
            while count is None or confirmed < count:
                f = client.read()
                seen.append(f)
                if f.get("type") == "message":
                    client.confirm(f["uuid"])
                    confirmed += 1
        except (OSError, EOFError, AssertionError):
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
