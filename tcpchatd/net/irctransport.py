"""An IRC client's connection: its lines translated (wire/irc.py) into the chat's frames
for the session, and the session's frames into IRC lines.

On a plain or TLS transport; the accounting of partial sends is translating.py's. What
the translation answers by itself (PONG, CAP, numerics) goes out at once. Every line an
IRC client sends takes a token of a bucket of its own (twice the chat's flood_rate and
flood_burst: its messages also pass the session's limit); past it the client is closed
with `ERROR :Excess Flood`.

Receipts: an IRC client never confirms. A message is confirmed for it when its line is
handed to its connection: an IRC recipient counts as delivered once the daemon has
written the line, not once a person read it; one that stops reading stops confirming,
and its receipts time out as anyone's do.

A plaintext IRC connection crosses an upgrade's exec like a TCP socket: its record holds
the translator's state, the start of a line not yet whole, and the unsent rest of a frame.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..wire import errors
from ..wire.irc import MAX_LINE, MAX_TAGS, IrcTranslator, session_frames
from .translating import TranslatingTransport

if TYPE_CHECKING:
    from .settings import NetSettings
    from .transport import PlainTransport, TlsTransport

# the uuid of a message frame the session sends, where the hall's encoder puts it
_MESSAGE_UUID = re.compile(rb'\A\{"type":"message","uuid":"([-0-9a-f]{36})"')
_CONFIRM = b'{"type":"confirm","uuid":"%s"}'
MAX_PARTIAL = MAX_LINE + MAX_TAGS  # bytes of a line not yet ended that are kept
_lines_made = threading.local()  # per loop: a room message's lines, by (bytes, stamped)
LINES_MADE = 1024    # ... at most this many,
SHARED_FRAME = 1024  # ... of messages this small (at most 2 MiB of them per loop)


def isupport(config: NetSettings) -> dict[str, str | None]:
    """The 005 tokens (None: a token without a value). No channel operators (PREFIX=):
    moderators are the accounts' role, daemon-wide."""
    return {"CHANTYPES": "#", "NETWORK": "tcpchatd", "NICKLEN": str(config.max_nickname),
            "CHANNELLEN": str(config.max_room_name + 1), "TOPICLEN": str(config.max_topic),
            "PREFIX": "", "CHANMODES": ",,,nt", "UTF8ONLY": None, "CASEMAPPING": "ascii"}


class IrcTransport(TranslatingTransport):
    """The chat's byte stream on IRC lines."""

    __slots__ = ("translator", "_partial", "_discarding", "_rate", "_burst", "_tokens",
                 "_tokens_at")

    def __init__(self, inner: PlainTransport | TlsTransport, host: str,
                 config: NetSettings) -> None:
        super().__init__(inner)
        self.kind = "ircs" if inner.tls else "irc"
        self.translator = IrcTranslator(config.irc_server_name, host, config.default_room,
                                        isupport(config))
        self._partial = bytearray()  # the start of a line not yet ended
        self._discarding = False     # ... over MAX_PARTIAL: dropped up to its end
        self._rate, self._burst = 2 * config.flood_rate, 2 * config.flood_burst
        self._tokens = float(self._burst)
        self._tokens_at = time.monotonic()

    def start(self) -> bool:
        return self.inner.start()  # TLS: its handshake first; then nothing is asked

    def handshake(self) -> bool:
        done = self.inner.handshake()
        self.handshake_wants_write = self.inner.handshake_wants_write
        return done

    # --- in

    def recv(self) -> bytes | None:
        early = self.take_early()  # confirms made when lines went out
        if early:
            return early
        if self.at_end:
            return b""
        data = self.inner.recv()
        if not data:
            return data
        frames: list[bytes] = []
        replies: list[str] = []
        for raw in self._lines(data, replies):
            if not self._take_token():
                replies.append(f"ERROR :Closing Link: {self.translator.host} (Excess Flood)")
                self.at_end, self.end_code = True, errors.FLOOD
                break
            more, said = self.translator.received(raw, lambda: str(uuid.uuid4()))
            frames += more
            replies += said
            if self.translator.quitting:
                self.at_end = True
                break
        if replies:
            self.send_direct("".join(f"{line}\r\n" for line in replies).encode("utf-8"))
        if frames:
            return b"".join(frames)
        return b"" if self.at_end else None

    def _lines(self, data: bytes, replies: list[str]) -> list[bytes]:
        """The whole lines in what came (LF, or CR LF); a line past MAX_PARTIAL is
        answered with 417 and dropped up to its end."""
        self._partial += data
        lines = []
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            line = bytes(self._partial[:end])
            del self._partial[:end + 1]
            if self._discarding:
                self._discarding = False
                continue
            lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._partial) > MAX_PARTIAL:
            self._partial.clear()
            if not self._discarding:
                self._discarding = True
                replies.append(self.translator.numeric("417", "Input line was too long"))
        return lines

    def _take_token(self) -> bool:
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # --- out

    def encode(self, data: bytes) -> list[bytes]:
        """Each frame's lines; a message handed to the connection is confirmed for it.
        A room's message is the same lines for every IRC member with the same
        server-time: made once per loop (by its bytes), as a broadcast's WebSocket
        message is."""
        made = getattr(_lines_made, "lines", None)
        if made is None or len(made) >= LINES_MADE:
            made = _lines_made.lines = {}
        translator = self.translator
        stamped = "server-time" in translator.caps
        chunks = []
        confirms = []
        for body in session_frames(data):
            found = _MESSAGE_UUID.match(body) if body is not None else None
            if found is not None and body is not None and translator.registered and \
                    len(body) <= SHARED_FRAME and b'"private":true' not in body:
                chunk = made.get((body, stamped))
                if chunk is None:
                    chunk = made[(body, stamped)] = self._wire(translator.sent(body))
            else:
                chunk = self._wire(translator.sent(body))
            chunks.append(chunk)
            if found is not None:
                confirm = _CONFIRM % found.group(1)
                confirms.append(b"%-10d" % len(confirm) + confirm)
        if confirms:
            self._early += b"".join(confirms)
        return chunks

    @staticmethod
    def _wire(lines: list[str]) -> bytes:
        return "".join(f"{line}\r\n" for line in lines).encode("utf-8")

    # --- an upgrade's exec

    def record(self) -> dict | None:
        return self.record_with("irc", {
            "translator": self.translator.export(),
            "partial": base64.b64encode(bytes(self._partial)).decode("ascii"),
            "early": base64.b64encode(self._early).decode("ascii")})

    @classmethod
    def resumed(cls, record: dict, config: NetSettings) -> IrcTransport:
        from .transport import PlainTransport
        transport = cls(PlainTransport.resumed(record), record["ip"], config)
        transport.resume(record["irc"])
        return transport

    def resume(self, irc: dict) -> None:
        self.restore_base(irc)
        self.translator.restore(irc["translator"])
        self._partial += base64.b64decode(irc["partial"])
        self._early = base64.b64decode(irc["early"])
