"""A browser's connection: the chat protocol's frames as WebSocket messages.

WebSocketTransport sits on a plain or TLS transport (transport.py) and gives the session
the byte stream it speaks on TCP, so the session, the hall and the receipts are the same
for a browser as for any client:

- the door first (httpdoor.py): the page's files, or the Upgrade; that is this
  transport's handshake, after TLS's on the wss:// side;
- in: each text message (or binary message, read as UTF-8) becomes one frame, the
  10-byte header before its body; a message over max_frame becomes a header that says
  so at once, and the session refuses it as it refuses such a frame on TCP
  (frame_too_large, then the close);
- out: each frame the session sends becomes one text message (the prompt `_nickname_`
  too, as that text). The framing is wsproto's, never written here. A server's frames
  are not masked, so one chunk of broadcasts is encoded once per loop and the encoding
  shared by every browser that is sent the same chunk.

The accounting of partial sends is translating.py's. A plaintext WebSocket crosses an
upgrade's exec like a TCP socket: its record holds the bytes read since the last whole
message (the new image replays them into a new wsproto connection and skips what was
already given to the session) and the unsent rest of a frame.
"""

from __future__ import annotations

import base64
import threading
from typing import TYPE_CHECKING, Any

from ..wire.protocol import HEADER_LENGTH, NICKNAME_PROMPT
from .translating import TranslatingTransport
from .transport import PlainTransport, TransportError

if TYPE_CHECKING:
    from .httpdoor import HttpDoor, Outcome
    from .transport import TlsTransport

CLOSE_NORMAL = 1000
RAW_KEPT = 1 << 20  # bytes kept for an upgrade's replay when wsproto's own count is unknown
OPEN: Any = None  # wsproto's ConnectionState.OPEN, set when the first transport is made


class HandshakeEnded(Exception):  # noqa: N818 (an outcome, not a failure)
    """The door answered without a WebSocket (a page's file, a refusal) or the peer left
    before asking: the connection ends; `outcome` (None: nothing was asked) says how."""

    def __init__(self, outcome: Outcome | None) -> None:
        super().__init__("answered")
        self.outcome = outcome


# per loop: the chunks of broadcasts sent to browsers lately (by identity), and their
# messages; a room's readers at different places are sent different chunks
_encoded = threading.local()
ENCODED_CHUNKS = 64
ENCODED_FRAMES = 1024  # ... and the frames lately sent to browsers, by their bytes,
SHARED_FRAME = 1024    # ... those this small (at most 2 MiB of them kept per loop)


def _messages(data: bytes, connection: Any) -> list[bytes]:
    """Each frame of the session's bytes as one WebSocket text message. A broadcast's
    message is made once per loop (by its bytes) for every browser it goes to, whatever
    chunk it comes in: a sender's chunk leaves its own frames out, so the room's chunks
    differ, and their frames do not."""
    from wsproto.events import Message
    made = getattr(_encoded, "frames", None)
    if made is None or len(made) >= ENCODED_FRAMES:
        made = _encoded.frames = {}
    out = []
    position, size = 0, len(data)
    while position < size:
        header = data[position:position + HEADER_LENGTH]
        if header == NICKNAME_PROMPT:
            body, position = header, position + HEADER_LENGTH
        else:
            end = position + HEADER_LENGTH + int(header)
            body, position = data[position + HEADER_LENGTH:end], end
        message = made.get(body)
        if message is None:
            message = connection.send(Message(data=body.decode("utf-8")))
            if len(body) <= SHARED_FRAME:  # a room's chat; not a joiner's names list
                made[body] = message
        out.append(message)
    return out


def held_by_wsproto(connection: Any) -> int | None:
    """Bytes wsproto holds of a frame not yet whole (None: unknown). wsproto has no public
    count of them; 1.2 and 1.3 keep them in their frame decoder's buffer (a test holds
    this to both). Unknown, the bytes read are kept for an upgrade's record until
    RAW_KEPT, then the record gives up replaying (see _frames)."""
    decoder = getattr(getattr(connection, "_proto", None), "_frame_decoder", None)
    buffer = getattr(decoder, "buffer", None)
    return None if buffer is None else len(buffer)


class WebSocketTransport(TranslatingTransport):
    """The chat's byte stream on WebSocket messages, over a plain or TLS transport."""

    __slots__ = ("_door", "_inner_ready", "_outcome", "_reply", "connection", "origin",
                 "_text", "_text_size", "_too_large", "_raw", "_done")

    def __init__(self, inner: PlainTransport | TlsTransport, door: HttpDoor | None) -> None:
        global OPEN
        if OPEN is None:  # wsproto is imported only where a web listener is served
            from wsproto.connection import ConnectionState
            OPEN = ConnectionState.OPEN
        super().__init__(inner)
        self.kind = "wss" if inner.tls else "web"
        self._door = door            # None once open (or resumed)
        self._inner_ready = not inner.tls
        self._outcome: Outcome | None = None
        self._reply = b""            # the door's answer, not yet all sent
        self.connection: Any = None  # wsproto's, once open
        self.origin: str | None = None
        self._text: list[bytes] = []  # the message being received, in parts
        self._text_size = 0
        self._too_large = False      # ... is over max_frame: the rest is dropped
        self._raw = bytearray()      # read since the last whole message (an upgrade's)
        self._done = 0               # ... and the whole messages taken out of it

    @property
    def carriable(self) -> bool:
        return self.connection is not None and self.inner.carriable

    def start(self) -> bool:
        self.inner.start()
        return self.connection is not None  # resumed: open already; else the door first

    def handshake(self) -> bool:
        """One step: TLS's (wss), then the request read and the answer sent. True once
        a WebSocket is open; HandshakeEnded when the door answered and the connection
        ends; TransportError when it failed."""
        if not self._inner_ready:
            self._inner_ready = self.inner.handshake()
            self.handshake_wants_write = self.inner.handshake_wants_write
            if not self._inner_ready:
                return False
        if self._outcome is None:
            assert self._door is not None
            while self._outcome is None:
                data = self.inner.recv()
                if data is None:
                    self.handshake_wants_write = False
                    return False
                if not data:
                    raise HandshakeEnded(None)  # a browser's speculative connection
                self._outcome = self._door.feed(data)
            if not self._outcome.reply:
                raise HandshakeEnded(None)
            self._reply = self._outcome.reply
        while self._reply:
            sent = self.inner.send(self._reply)
            if not sent:
                self.handshake_wants_write = True
                return False
            self._reply = self._reply[sent:]
        self.handshake_wants_write = False
        outcome = self._outcome
        if outcome.websocket is None:
            raise HandshakeEnded(outcome)
        self.connection, self.origin, self._door = outcome.websocket, outcome.origin, None
        self._outcome = None  # nothing of the door is kept
        self._early = self._frames() or b""  # sent with the request, before the 101
        return True

    # --- the session's byte stream

    def recv(self) -> bytes | None:
        """Frames of the whole messages that came; None when none is whole yet; b"" at
        the end (the peer's close, or its end of the stream)."""
        early = self.take_early()  # sent with the request, before the 101
        if early:
            return early
        if self.at_end:
            return b""
        data: bytes | None = self.inner.recv()
        if not data:
            return data
        if self.connection.state is not OPEN:
            raise TransportError("data after the WebSocket's close")
        self._raw += data
        self.connection.receive_data(data)
        return self._frames()

    def _frames(self) -> bytes | None:
        """The whole messages received, as frames (wsproto's events since the last)."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
        out = bytearray()
        for event in self.connection.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                out += self._part(event.data, event.message_finished)
            elif isinstance(event, Ping):
                self._send_control(event.response())
                self._done += 1
            elif isinstance(event, CloseConnection):
                self._send_control(event.response())
                self.at_end = True
                break
            else:  # a pong
                self._done += 1
        held = held_by_wsproto(self.connection)
        if not self._text and (held == 0 or held is None and len(self._raw) > RAW_KEPT):
            self._raw.clear()  # at a message's end, nothing of the next one read:
            self._done = 0     # an upgrade has nothing to replay
        if not out:
            return b"" if self.at_end else None
        return bytes(out)

    def _part(self, data: str | bytes | bytearray, finished: bool) -> bytes:
        """A part of a message; the frame once it is whole. (A binary message's bytes
        are taken as they are: the session says bad_utf8 if they are no UTF-8.)"""
        part = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._text_size += len(part)
        framed = b""
        if self._too_large:
            pass  # the session has refused it already
        elif self._text_size > self._max_frame:  # refused as on TCP: the header says so
            self._too_large = True
            self._text.clear()
            framed = b"%-10d" % self._text_size
        else:
            self._text.append(part)
        if finished:
            if not self._too_large:
                body = self._text[0] if len(self._text) == 1 else b"".join(self._text)
                framed = b"%-10d" % len(body) + body
            self._text.clear()
            self._text_size, self._too_large = 0, False
            self._done += 1
        return framed

    def _send_control(self, event: Any) -> None:
        """A pong or the close's answer: now (or after a frame's rest)."""
        try:
            wire = self.connection.send(event)
        except Exception:  # noqa: BLE001 (wsproto's LocalProtocolError: already closing)
            return
        self.send_direct(wire)

    def send(self, data: bytes) -> int:
        if self.connection.state is not OPEN:  # its close came: no message may follow
            raise TransportError("the WebSocket is closed")
        return super().send(data)

    def encode(self, data: bytes) -> list[bytes]:
        """One text message per frame; the encoding of a chunk of broadcasts made once
        per loop and shared by every browser sent the same chunk."""
        chunks = getattr(_encoded, "chunks", None)
        if chunks is None:
            chunks = _encoded.chunks = {}
        cached = chunks.get(id(data))
        if cached is not None and cached[0] is data:
            return cached[1]
        messages = _messages(data, self.connection)
        if len(chunks) >= ENCODED_CHUNKS:
            chunks.clear()
        chunks[id(data)] = (data, messages)
        return messages

    def close(self) -> None:
        """The WebSocket's close, best effort (the browser then knows it was meant),
        then the socket's."""
        if self.connection is not None and not self._out:
            from wsproto.events import CloseConnection
            try:
                self.inner.send(self.connection.send(CloseConnection(code=CLOSE_NORMAL)))
            except Exception:  # noqa: BLE001 (closing or gone: nothing more to say)
                pass
        self.inner.close()

    # --- an upgrade's exec

    def record(self) -> dict | None:
        return self.record_with("web", {
            "raw": base64.b64encode(bytes(self._raw)).decode("ascii"), "done": self._done})

    @classmethod
    def resumed(cls, record: dict) -> WebSocketTransport:
        transport = cls(PlainTransport.resumed(record), None)
        transport.resume(record["web"])
        return transport

    def resume(self, web: dict) -> None:
        """Where the old image left it: a new wsproto connection, open, fed again what
        was read since the last whole message, less what the session was given."""
        from wsproto import ConnectionType
        from wsproto.connection import Connection
        from wsproto.events import Ping, Pong
        self.connection = Connection(ConnectionType.SERVER)
        self.restore_base(web)
        raw = base64.b64decode(web["raw"])
        if not raw:
            return
        self.connection.receive_data(raw)
        skip = web["done"]
        for event in self.connection.events():
            if skip > 0:
                if isinstance(event, (Ping, Pong)) or getattr(
                        event, "message_finished", False):
                    skip -= 1
                continue
            if hasattr(event, "message_finished"):
                self._part(event.data, event.message_finished)
        self._raw += raw
        self._done = web["done"]
