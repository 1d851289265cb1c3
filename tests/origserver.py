"""A server that behaves like the original Minigamy/TCPchat server, written from DESIGN.md.

What tcpchat-client must cope with: `system` frames with only `type` and `message`,
messages forwarded byte for byte (no `nickname`/`time`), the FIRST recipient's confirm
forwarded as is (no counts), and no receipt at all when nobody else is there.
Must not import the package.
"""

from __future__ import annotations

import json
import socket
import threading


def _frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return f"{len(body):<10}".encode() + body


class OriginalStyleServer:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.waiting: dict[str, socket.socket] = {}  # uuid -> sender
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _broadcast(self, data: bytes, sender=None) -> None:
        with self.lock:
            for client in list(self.clients):
                if client is not sender:
                    client.sendall(data)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            client.sendall(b"_nickname_")
            nickname = client.recv(1024).decode()
            with self.lock:
                self.clients.append(client)
            self._broadcast(_frame({"type": "system", "message": f"{nickname} joined!"}))
            threading.Thread(target=self._handle, args=(client, nickname), daemon=True).start()

    def _recv_exact(self, client, size) -> bytes:
        data = b""
        while len(data) < size:
            chunk = client.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _handle(self, client, nickname) -> None:
        try:
            while True:
                header = self._recv_exact(client, 10)
                body = self._recv_exact(client, int(header.decode().strip()))
                message = json.loads(body)
                if message["type"] == "message":
                    with self.lock:
                        self.waiting[message["uuid"]] = client
                    self._broadcast(header + body, client)
                elif message["type"] == "confirm":
                    with self.lock:
                        sender = self.waiting.pop(message["uuid"], None)
                    if sender is not None:
                        sender.sendall(header + body)
        except (EOFError, OSError, ValueError):
            with self.lock:
                if client in self.clients:
                    self.clients.remove(client)
            client.close()
            self._broadcast(_frame({"type": "system", "message": f"{nickname} left!"}))

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for client in self.clients:
                client.close()
