"""A browser's side of the chat, without a browser: HTTP and a WebSocket on a raw socket.

The WebSocket's framing is wsproto's, on the client side (the daemon's is the server
side): it does not import the package. Each text message is one chat frame's JSON body
(or the text `_nickname_`).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message,
                            RejectConnection, RejectData, Request, TextMessage)

PROMPT = "_nickname_"


def http_get(port: int, path: str = "/", method: str = "GET", headers: str = "",
             host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """(status, headers in lower case, body) of one request; the server closes."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
                     "\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


class Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"refused with HTTP {status}")
        self.status = status


class WsClient:
    def __init__(self, port: int, origin: str | None = "same", path: str = "/chat",
                 context: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = f"{'localhost' if context else '127.0.0.1'}:{port}"
        scheme = "https" if context else "http"
        headers = []
        if origin == "same":
            origin = f"{scheme}://{self.host}"
        if origin is not None:
            headers.append((b"Origin", origin.encode()))
        self.sock.sendall(self.ws.send(Request(host=self.host, target=path,
                                               extra_headers=headers)))
        self._messages: list[str] = []
        self._early: list = []
        self.close_code: int | None = None
        self.nickname: str | None = None
        while True:
            events = self._events()
            while events:
                event = events.pop(0)
                if isinstance(event, AcceptConnection):
                    self._early = events  # what came with the 101
                    return
                if isinstance(event, RejectConnection):
                    raise Refused(event.status_code)

    def _events(self):
        """What came and is not taken yet; else what the next read brings."""
        pending = [e for e in self.ws.events() if not isinstance(e, RejectData)]
        if pending:
            return pending
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.ws.receive_data(data)
        return [e for e in self.ws.events() if not isinstance(e, RejectData)]

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def send(self, obj: dict) -> None:
        self.send_text(json.dumps(obj))

    def read_text(self) -> str:
        """The next whole text message; EOFError once the server closed."""
        parts: list[str] = []
        while not self._messages:
            if self.close_code is not None:
                raise EOFError(f"closed with {self.close_code}")
            events, self._early = self._early or self._events(), []
            for event in events:
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data if isinstance(event.data, str)
                                 else event.data.decode())
                    if event.message_finished:
                        self._messages.append("".join(parts))
                        parts = []
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except OSError:
                        pass
        return self._messages.pop(0)

    def read_item(self):
        text = self.read_text()
        return PROMPT if text == PROMPT else json.loads(text)

    def read(self) -> dict:
        item = self.read_item()
        assert item != PROMPT, "unexpected _nickname_"
        return item

    def read_until(self, predicate, limit: int = 10000) -> dict:
        for _ in range(limit):
            item = self.read_item()
            if item != PROMPT and predicate(item):
                return item
        raise AssertionError("no matching frame")

    def join(self, nickname: str, **fields) -> dict:
        """The prompt, a hello, our join; names (and history) kept."""
        assert self.read_item() == PROMPT
        self.send({"type": "hello", "nickname": nickname, "mode": "chat", **fields})
        self.nickname = nickname
        joined = self.read_until(lambda f: f.get("event") == "join"
                                 and f.get("nickname") == nickname)
        self.names = self.read()
        assert self.names["event"] == "names", self.names
        self.history = self.read() if self.names["history"] else None
        return joined

    def say(self, text: str, msg_uuid: str | None = None) -> str:
        msg_uuid = msg_uuid or str(uuid.uuid4())
        self.send({"type": "message", "uuid": msg_uuid, "message": text})
        return msg_uuid

    def confirm(self, msg_uuid: str) -> None:
        self.send({"type": "confirm", "uuid": msg_uuid})

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (its close frame, then the socket's end)."""
        deadline = time.monotonic() + timeout
        kept = self.sock.gettimeout()  # a client that stays open is read on as before
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    self.read_text()
                except EOFError:
                    return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        finally:
            self.sock.settimeout(kept)
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
