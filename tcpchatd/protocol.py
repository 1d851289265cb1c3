"""The chat wire format (compatible with Minigamy/TCPchat); pure, no sockets.

A frame is a 10-byte ASCII header with the body's length in decimal, padded
with spaces, then the body, a UTF-8 JSON object::

    +------------+----------------------------------------------+
    | "52        " | {"type":"confirm","uuid":"4f0c...-..."}        |
    +------------+----------------------------------------------+
      10 bytes      exactly N bytes

The handshake is not framed: the server sends the 10 bare bytes `_nickname_`
and the client answers with its nickname as raw UTF-8 (see take_nickname).
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from . import errors
from .errors import ProtocolError

HEADER_LENGTH = 10
NICKNAME_PROMPT = b"_nickname_"
RECV_SIZE = 65536

_DIGITS = frozenset(b"0123456789")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class PeerClosedMidFrame(Exception):
    """The peer closed the connection inside a header or a body."""


def encode(obj: dict) -> bytes:
    """One frame: header and compact UTF-8 JSON body."""
    body = _dumps(obj).encode("utf-8")
    return b"%-10d" % len(body) + body


def parse_header(header: bytes) -> int:
    """The body length in a 10-byte header; digits padded with spaces only."""
    digits = header.strip(b" ")
    if not digits or not _DIGITS.issuperset(digits):
        raise ProtocolError(errors.BAD_HEADER,
                            f"bad frame header {header!r}: expected a length in decimal digits")
    return int(digits)


class FrameReader:
    """Exact reads of frames from a byte stream (split or coalesced segments)."""

    def __init__(self, recv: Callable[[int], bytes], initial: bytes = b"") -> None:
        self._recv = recv
        self.buffer = bytearray(initial)  # read and not yet taken (see confirms.py)

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = self._recv(RECV_SIZE)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def has_frame(self) -> bool:
        """True when a whole frame (or a header that will fail) is already buffered."""
        if len(self.buffer) < HEADER_LENGTH:
            return False
        try:
            length = parse_header(bytes(self.buffer[:HEADER_LENGTH]))
        except ProtocolError:
            return True
        return len(self.buffer) >= HEADER_LENGTH + length

    def next_body(self, max_frame: int, allow_prompt: bool = False) -> bytes | None:
        """The next frame's body; None at a clean end of stream.

        With allow_prompt (the client's side), a bare `_nickname_` is returned as
        NICKNAME_PROMPT.
        """
        if not self._fill(HEADER_LENGTH):
            if self.buffer:
                raise PeerClosedMidFrame()
            return None
        if allow_prompt and self.buffer[:HEADER_LENGTH] == NICKNAME_PROMPT:
            del self.buffer[:HEADER_LENGTH]
            return NICKNAME_PROMPT
        length = parse_header(bytes(self.buffer[:HEADER_LENGTH]))
        if length > max_frame:
            raise ProtocolError(errors.FRAME_TOO_LARGE,
                                f"frame of {length} bytes is over the limit of {max_frame}")
        end = HEADER_LENGTH + length
        if not self._fill(end):
            raise PeerClosedMidFrame()
        body = bytes(self.buffer[HEADER_LENGTH:end])
        del self.buffer[:end]
        return body


def decode(body: bytes) -> dict:
    """A frame body as a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(errors.BAD_UTF8, "frame body is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ProtocolError(errors.BAD_JSON, "frame body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(errors.NOT_AN_OBJECT, "frame body is not a JSON object")
    return obj


@dataclass(frozen=True)
class ChatMessage:
    uuid: str
    text: str


@dataclass(frozen=True)
class Confirm:
    uuid: str


# The confirm frames that real clients send, as bytes: ours compact, the original's with
# json.dumps' default spaces. A confirm is sent once per delivery, so recognising these
# without building a dict or a UUID object is worth it; anything else takes the full path.
CONFIRM_BODY = (rb'\{"type": ?"confirm", ?"uuid": ?"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-'
                rb'[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"\}')  # also in confirms.py
_CONFIRM = re.compile(CONFIRM_BODY + rb'\Z')


def parse_client_frame(body: bytes, max_text: int) -> ChatMessage | Confirm:
    """Decode and validate one frame a client may send."""
    match = _CONFIRM.match(body)
    if match is not None:
        return Confirm(match.group(1).decode("ascii"))
    obj = decode(body)
    kind = obj.get("type")
    if kind not in ("message", "confirm"):
        raise ProtocolError(errors.UNKNOWN_TYPE,
                            f"unknown frame type {kind!r}: expected 'message' or 'confirm'")
    frame_uuid = obj.get("uuid")
    if not isinstance(frame_uuid, str) or not _is_uuid(frame_uuid):
        raise ProtocolError(errors.BAD_UUID, f"missing or malformed uuid in {kind!r} frame")
    if kind == "confirm":
        return Confirm(frame_uuid)
    text = obj.get("message")
    if not isinstance(text, str):
        raise ProtocolError(errors.BAD_JSON, "'message' frame has no text string", frame_uuid)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON: no UTF-8 form
        raise ProtocolError(errors.BAD_UTF8, "message text is not valid Unicode",
                            frame_uuid) from None
    if size > max_text:
        raise ProtocolError(errors.TEXT_TOO_LONG,
                            f"message text of {size} bytes is over the limit of {max_text}",
                            frame_uuid)
    return ChatMessage(frame_uuid, text)


def _is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return True


def take_nickname(data: bytes) -> tuple[bytes, bytes]:
    """Split a handshake read into (nickname bytes, start of the frame stream)."""
    line, newline, rest = data.partition(b"\n")
    return line.rstrip(b"\r").strip(b" "), rest if newline else b""


def check_nickname(raw: bytes, max_length: int) -> str:
    """The nickname as text, or ProtocolError(nickname_invalid)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(errors.NICKNAME_INVALID, "nickname is not valid UTF-8") from None
    if not name:
        raise ProtocolError(errors.NICKNAME_INVALID, "nickname is empty")
    if len(name) > max_length:
        raise ProtocolError(errors.NICKNAME_INVALID,
                            f"nickname is longer than {max_length} characters")
    for char in name:
        if char.isspace() or unicodedata.category(char)[0] in "CZ":
            raise ProtocolError(errors.NICKNAME_INVALID,
                                "nickname may not contain spaces or control characters")
    return name


# --- frames the server sends

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chat_frame(frame_uuid: str, sender: str, text: str) -> bytes:
    """A message as recipients see it: stamped, and always prefixed `SENDER: `."""
    prefix = sender + ": "
    if not text.startswith(prefix):
        text = prefix + text
    return encode({"type": "message", "uuid": frame_uuid, "message": text,
                   "nickname": sender, "time": now_iso()})


def join_frame(nickname: str) -> bytes:
    return encode({"type": "system", "event": "join", "nickname": nickname,
                   "message": f"{nickname} joined!"})


def leave_frame(nickname: str, reason: str, detail: str | None = None) -> bytes:
    message = f"{nickname} was kicked ({detail})" if reason == "kicked" else f"{nickname} left!"
    return encode({"type": "system", "event": "leave", "nickname": nickname,
                   "reason": reason, "message": message})


def receipt_frame(frame_uuid: str, delivered: int, recipients: int) -> bytes:
    return encode({"type": "confirm", "uuid": frame_uuid, "delivered": delivered,
                   "recipients": recipients})


NOBODY_HERE = "Message not delivered: nobody else is here"
NOBODY_CONFIRMED = "Message not delivered: nobody confirmed it"


def undelivered_frame(frame_uuid: str, message: str) -> bytes:
    return encode({"type": "system", "event": "undelivered", "uuid": frame_uuid,
                   "message": message})


def kick_frame(reason: str) -> bytes:
    return encode({"type": "system", "event": "kick", "reason": reason,
                   "message": f"You were kicked: {reason}"})


def shutdown_frame() -> bytes:
    return encode({"type": "system", "event": "shutdown", "message": "Server is shutting down"})


def announce_frame(text: str) -> bytes:
    return encode({"type": "system", "event": "announce", "message": text})


def error_frame(code: str, message: str, frame_uuid: str | None = None) -> bytes:
    obj = {"type": "system", "event": "error", "code": code, "message": message}
    if frame_uuid is not None:
        obj["uuid"] = frame_uuid
    return encode(obj)
