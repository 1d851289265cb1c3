"""A transport that speaks another protocol on the wire and the chat's byte stream to the
session: the common part of the browser's (websocket.py) and IRC's (irctransport.py).

It sits on a plain or TLS transport (transport.py). A subclass turns what comes into the
session's frames (recv) and each frame the session sends into its own bytes (encode:
one chunk of bytes per frame, possibly empty). The accounting of partial sends is kept
here: send() says how many of the session's bytes went out; a frame the kernel took a
part of is remembered (the rest of its bytes, and its length in the session's bytes),
finished first at the next send, and counted then. Bytes the translation answers by
itself (an IRC PONG, a WebSocket's close) go out at once, or after that rest.
"""

from __future__ import annotations

import abc
import base64
from typing import TYPE_CHECKING, Any

from ..wire.protocol import HEADER_LENGTH, NICKNAME_PROMPT
from .transport import PlainTransport, TransportError

if TYPE_CHECKING:
    from .settings import NetSettings
    from .transport import TlsTransport


def frame_length(data: bytes, position: int) -> int:
    """The length, header included, of the session's frame at `position`."""
    header = data[position:position + HEADER_LENGTH]
    return HEADER_LENGTH if header == NICKNAME_PROMPT else HEADER_LENGTH + int(header)


class TranslatingTransport(abc.ABC):
    """The partial-send accounting and the plumbing to the transport beneath; a subclass
    says how frames are encoded (and reads in its own way)."""

    __slots__ = ("inner", "tls", "kind", "handshake_wants_write", "at_end", "end_code",
                 "_max_frame",
                 "_out", "_owed", "_early")  # one per client: no dict each

    def __init__(self, inner: PlainTransport | TlsTransport) -> None:
        self.inner = inner
        self.tls = inner.tls
        self.kind = "tcp"
        self.handshake_wants_write = False
        self.at_end = False          # the peer's end came inside what recv() gave
        self.end_code: str | None = None  # ... or the transport ended it: why
        self._max_frame = 65536
        self._out = b""              # bytes of a frame the kernel took a part of, and
        self._owed = 0               # ... that frame's length in the session's bytes
        self._early = b""            # frames the session is due before any readiness

    @property
    def sock(self) -> Any:  # the selector's key (a TLS transport wraps its socket)
        return self.inner.sock

    @property
    def carriable(self) -> bool:
        return self.inner.carriable

    def configure(self, config: NetSettings) -> None:
        self.inner.configure(config)
        self._max_frame = config.max_frame

    def buffered(self) -> bool:
        """Frames are due to the session that no readiness will announce."""
        return bool(self._early)

    def take_early(self) -> bytes | None:
        early, self._early = self._early, b""
        return early or None

    @abc.abstractmethod
    def encode(self, data: bytes) -> list[bytes]:
        """One chunk of wire bytes per frame of the session's `data`."""

    def send_direct(self, wire: bytes) -> None:
        """Bytes the translation answers by itself: now, or after a frame's rest."""
        if self._out:
            self._out += wire
            return
        try:
            sent = self.inner.send(wire)
        except TransportError:
            return  # the next send or read finds it gone
        self._out = wire[sent:]

    def send(self, data: bytes) -> int:
        """How much of the session's `data` went out (see the module's docstring)."""
        taken = 0
        if self._out:
            sent = self.inner.send(self._out)
            self._out = self._out[sent:]
            if self._out:
                return 0
            taken, self._owed = self._owed, 0
            if taken >= len(data):
                return taken
            data = data[taken:]
        chunks = self.encode(data)
        wire = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        sent = self.inner.send(wire) if wire else 0
        if sent == len(wire):
            return taken + len(data)
        # the kernel stopped inside a frame's bytes: count the frames wholly sent
        position = wire_end = 0
        for chunk in chunks:
            length = frame_length(data, position)
            if wire_end + len(chunk) > sent:
                self._out = chunk[sent - wire_end:] if sent > wire_end else b""
                self._owed = length if self._out else 0
                return taken + position
            wire_end += len(chunk)
            position += length
        return taken + position

    def send_plain(self, data: bytes) -> None:  # noqa: B027 (deliberately nothing)
        """Nothing of the chat's own framing goes out raw on another protocol."""

    def close(self) -> None:
        self.inner.close()

    def record_with(self, key: str, fields: dict) -> dict | None:
        """For an upgrade: the transport beneath's record, and under `key` the unsent rest
        of a frame with the subclass's own `fields`; None when it cannot cross."""
        carried = self.inner.record() if self.carriable else None
        if carried is None:
            return None
        return {**carried, key: {"out": base64.b64encode(self._out).decode("ascii"),
                                 "owed": self._owed, "at_end": self.at_end, **fields}}

    def restore_base(self, record: dict) -> None:
        """What record_with() kept under its key."""
        self._out = base64.b64decode(record["out"])
        self._owed = record["owed"]
        self.at_end = record["at_end"]
