"""Transports: the bytes of one client connection, apart from the chat protocol on them.

A transport owns its socket (or, in tests, two buffers): non-blocking reads and writes,
partial writes, the readiness a TLS handshake waits for, the socket options, the close.
The session (session.py) speaks the chat protocol on any of them and never touches a
socket (Twisted's transport/protocol split). A transport that can cross an upgrade's
exec (plaintext) writes itself as a plain record; a TLS one cannot (its keys live in the
process) and says so.

    PlainTransport   a TCP socket
    TlsTransport     a TCP socket wrapped by the server's TLS context, on its loop,
                     with a non-blocking handshake
    MemoryTransport  bytes in, bytes out, for tests of the protocol without sockets
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import NetSettings

# The stdlib's ssl, imported by the first TLS connection (TlsTransport): a daemon that
# serves no TLS never loads it (4.6 MiB of memory). The `except` clauses below name it
# only when an exception is raised, by which time a TLS transport exists.
ssl: Any = None
RECV_SIZE = 65536
SEND_FLAGS = socket.MSG_NOSIGNAL


class TransportError(Exception):
    """The connection failed (reset, a broken TLS record): why, in a few words.
    timed_out: its peer stopped answering (keepalive's probes, or the retransmissions of
    what was sent, went unanswered), where an error is something the peer did."""

    def __init__(self, why: str, timed_out: bool = False) -> None:
        super().__init__(why)
        self.timed_out = timed_out


def _failed(exc: OSError) -> TransportError:
    return TransportError(exc.strerror or str(exc), exc.errno == errno.ETIMEDOUT)


class PlainTransport:
    """A non-blocking TCP socket."""

    __slots__ = ("sock",)  # one per client: no dict each (10,000 of them)

    tls = False
    kind = "tcp"  # what `who` shows: tcp, tls, web (WebSocket) or wss (inside TLS)
    handshake_wants_write = False  # no handshake
    at_end = False  # the peer's end came inside what recv() gave (a WebSocket's close)
    end_code: str | None = None  # why the transport ended the stream itself (an error code)
    carriable = True  # can cross an upgrade's exec

    def buffered(self) -> bool:
        """Data the handshake read beyond itself, waiting for no readiness."""
        return False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # the selector's key: the loop waits on it

    def configure(self, config: NetSettings) -> None:
        """Non-blocking, no Nagle, the send buffer bounded (send_buffer), keepalive."""
        sock = self.sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if config.send_buffer:  # a client that never reads pins this much kernel memory,
            # not the 4 MiB that autotuning grows to
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.send_buffer)
        if config.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, config.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                            config.keepalive_interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, config.keepalive_probes)

    def start(self) -> bool:
        """Ready for the protocol at once (True), or a handshake first (False)."""
        return True

    def handshake(self) -> bool:
        return True

    def recv(self) -> bytes | None:
        """What came (b"": the peer ended its side), or None when nothing is there now."""
        try:
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise _failed(exc) from None

    def send(self, data: bytes) -> int:
        """How much of `data` the kernel took now (0 when its buffer is full)."""
        try:
            return self.sock.send(data, SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise _failed(exc) from None

    def send_plain(self, data: bytes) -> None:
        """A few bytes before any handshake, best effort (a refusal at the door)."""
        try:
            socket.socket.send(self.sock, data, SEND_FLAGS)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def record(self) -> dict | None:
        """What a new image needs to go on with this socket (kept across exec by fd)."""
        return {"fd": self.sock.fileno(), "family": int(self.sock.family)}

    @classmethod
    def resumed(cls, record: dict) -> PlainTransport:
        # family and type given: no system calls to find them out, 10,000 times over
        sock = socket.socket(record["family"], socket.SOCK_STREAM, 0, fileno=record["fd"])
        sock.setblocking(False)  # its options were set before, and survive exec
        return cls(sock)


class TlsTransport(PlainTransport):
    """A TCP socket wrapped, on its loop, by the TLS context current when it was accepted.

    Every call is non-blocking; a handshake step that needs the socket writable says so
    (handshake_wants_write), and the loop waits for that.
    """

    __slots__ = ("_context", "handshake_wants_write")
    tls = True
    kind = "tls"
    carriable = False

    def __init__(self, sock: socket.socket, context: Any) -> None:
        global ssl
        if ssl is None:
            import ssl as stdlib_ssl
            ssl = stdlib_ssl
        super().__init__(sock)
        self._context: Any = context  # an ssl.SSLContext, wrapped with on start
        self.handshake_wants_write = False

    def start(self) -> bool:
        if self._context is not None:
            self.sock = self._context.wrap_socket(self.sock, server_side=True,
                                                  do_handshake_on_connect=False)
            self._context = None
        return False

    def handshake(self) -> bool:
        """One step of the handshake: True once done, False while it goes on;
        TransportError (with OpenSSL's reason) when it fails."""
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self.handshake_wants_write = False
            return False
        except ssl.SSLWantWriteError:
            self.handshake_wants_write = True
            return False
        except (ssl.SSLError, OSError) as exc:  # plaintext, garbage, a peer that vanished
            raise TransportError(getattr(exc, "reason", None) or exc.strerror
                                 or "closed") from None
        self.handshake_wants_write = False
        return True

    def recv(self) -> bytes | None:
        try:
            data = self.sock.recv(RECV_SIZE)
            while data and self.sock.pending():  # type: ignore[attr-defined]
                data += self.sock.recv(RECV_SIZE)  # decrypted, not yet taken
            return data
        # SSLSocket's non-blocking calls say "try again" with these two
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return None
        except ssl.SSLZeroReturnError:  # the peer's TLS close_notify: its end of stream
            return b""
        except OSError as exc:
            raise _failed(exc) from None

    def send(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        # SSLSocket's non-blocking calls say "try again" with these two
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return 0
        except OSError as exc:
            raise _failed(exc) from None

    def record(self) -> dict | None:
        return None  # the keys cannot cross an exec


class MemoryTransport:
    """Bytes in (`feed`), bytes out (`taken`), for protocol tests without sockets. `room`
    bounds what one send takes, as a kernel's buffer does; `ended` is the peer's EOF."""

    tls = False
    kind = "tcp"
    handshake_wants_write = False
    at_end = False
    end_code: str | None = None
    carriable = False

    def __init__(self, room: int = 1 << 20) -> None:
        self.incoming = bytearray()
        self.taken = bytearray()
        self.room = room
        self.ended = False
        self.closed = False
        self.sock = None  # nothing for a selector: the test drives the session

    def feed(self, data: bytes) -> None:
        self.incoming += data

    def configure(self, config: NetSettings) -> None:
        pass

    def start(self) -> bool:
        return True

    def handshake(self) -> bool:
        return True

    def buffered(self) -> bool:
        return False

    def recv(self) -> bytes | None:
        if self.incoming:
            data, self.incoming = bytes(self.incoming), bytearray()
            return data
        return b"" if self.ended else None

    def send(self, data: bytes) -> int:
        taken = data[:max(0, self.room - len(self.taken))]
        self.taken += taken
        return len(taken)

    def send_plain(self, data: bytes) -> None:
        self.taken += data

    def close(self) -> None:
        self.closed = True

    def record(self) -> dict | None:
        return None
