"""An IRC client on a raw socket, written from RFC 1459/2812 and IRCv3 (not the package)."""

from __future__ import annotations

import socket
import time


class IrcClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.seen: list[str] = []

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode("utf-8"))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        """The next line (without CR LF); EOFError once the server closed."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; last lines: {self.seen[-5:]}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\r\n", 1)
        text = raw.decode("utf-8")
        self.seen.append(text)
        return text

    def until(self, predicate, limit: int = 2000) -> str:
        for _ in range(limit):
            text = self.line()
            if predicate(text):
                return text
        raise AssertionError(f"no such line; last: {self.seen[-10:]}")

    def numeric(self, code: str) -> str:
        return self.until(lambda line: line.split(" ")[1:2] == [code]
                          or line.startswith("@") and line.split(" ")[2:3] == [code])

    def register(self, nick: str, caps: str = "") -> list[str]:
        """NICK and USER (CAP negotiation first when caps are asked); the lines up to the
        end of the first NAMES."""
        start = len(self.seen)
        if caps:
            self.send("CAP LS 302", f"NICK {nick}", f"USER {nick} 0 * :{nick}",
                      f"CAP REQ :{caps}", "CAP END")
        else:
            self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        self.numeric("366")
        return self.seen[start:]

    def closed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        kept = self.sock.gettimeout()  # a client that stays open is read on as before
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                self.line()
        except EOFError:
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(kept)
        return False

    def close(self) -> None:
        self.sock.close()
