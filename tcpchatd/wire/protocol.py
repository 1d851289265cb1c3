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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    """Exact reads of frames from a byte stream (split or coalesced segments).

    Blocking readers (the client) give it `recv`; the server's event loops append to
    `buffer` themselves and cut frames with take_body, which never reads.
    """

    __slots__ = ("_recv", "buffer")  # one per client

    def __init__(self, recv: Callable[[int], bytes] | None = None,
                 initial: bytes = b"") -> None:
        self._recv = recv
        self.buffer = bytearray(initial)  # read and not yet taken (see confirms.py)

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            assert self._recv is not None, "a reader for the server's loops never reads"
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

    def take_body(self, max_frame: int) -> bytes | None:
        """The next frame's body if it is wholly buffered, else None; never reads.

        A bad header, or one over max_frame, raises as soon as its 10 bytes are in.
        """
        buffer = self.buffer
        if len(buffer) < HEADER_LENGTH:
            return None
        length = parse_header(bytes(buffer[:HEADER_LENGTH]))
        if length > max_frame:
            raise ProtocolError(errors.FRAME_TOO_LARGE,
                                f"frame of {length} bytes is over the limit of {max_frame}")
        end = HEADER_LENGTH + length
        if len(buffer) < end:
            return None
        body = bytes(buffer[HEADER_LENGTH:end])
        del buffer[:end]
        return body

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


MAX_JSON_DEPTH = 32  # nesting a body may have (objects and arrays); see json_depth_over

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth_over(text: str, limit: int) -> bool:
    """True when JSON text nests objects and arrays deeper than `limit`.

    Checked before json.loads, whose parser recurses once per level: a body nested
    10,000 deep would raise RecursionError, or overflow a small thread stack and kill
    the whole process. A body with few brackets is passed at the cost of two counts.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_bounded(text: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads with the nesting bounded and no NaN or Infinity; ValueError otherwise."""
    if json_depth_over(text, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return _decode(text)
    except RecursionError:  # only if the bound is set above what the stack allows
        raise ValueError("JSON nested too deep") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# made once: json.loads with an argument makes a decoder at every call (1 µs a frame)
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict:
    """A frame body as a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(errors.BAD_UTF8, "frame body is not valid UTF-8") from None
    try:
        obj = loads_bounded(text, max_depth)
    except ValueError as exc:
        raise ProtocolError(errors.BAD_JSON, f"frame body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(errors.NOT_AN_OBJECT, "frame body is not a JSON object")
    return obj


@dataclass(frozen=True)
class ChatMessage:
    uuid: str
    text: str
    to: str | None = None   # a private message's one recipient
    action: bool = False    # `/me waves`
    room: str | None = None  # the room it is for (None: the default room)


# A request's commands and the string fields each takes (`room` names a room, written
# with or without `#`); the answer carries the request's id.
REQUESTS = {"who": ("room",), "nick": ("nickname",), "join": ("room",), "part": ("room",),
            "rooms": (), "topic": ("room", "topic"),
            # accounts: a guest logs in; a moderator kicks, bans and unbans
            "login": ("account", "password"), "kick": ("nickname", "room", "reason"),
            "ban": ("target", "duration", "reason"), "unban": ("target",),
            # the lasting history: a page before a uuid or a time, and a search
            "history": ("room", "before"), "search": ("room", "words", "syntax"),
            # away with a text, back without one (IRC's AWAY; its rooms hear of it)
            "away": ("text",)}
INT_FIELDS = {"history": "limit", "search": "limit"}  # a whole number, optional
REQUIRED = {"nick": "nickname", "join": "room", "part": "room", "topic": "room",
            "login": "account", "kick": "nickname", "ban": "target", "unban": "target",
            "search": "words"}


@dataclass(frozen=True)
class Request:
    """`{"type":"request","id":ID,"cmd":CMD,...}`; the answer carries the same id."""
    id: int | str | None
    cmd: str
    nickname: str | None = None  # for `nick`
    room: str | None = None      # for `who`, `join`, `part`, `topic`
    topic: str | None = None     # for `topic`: the new topic (none: tell it)
    account: str | None = None   # for `login`
    password: str | None = None  # ... (never logged)
    reason: str | None = None    # for `kick` and `ban`
    target: str | None = None    # for `ban` and `unban`: an address, network or nickname
    duration: str | None = None  # for `ban`: 90s, 15m, 2h, 7d (none: until unbanned)
    before: str | None = None    # for `history`: a uuid or an ISO 8601 time
    words: str | None = None     # for `search`
    syntax: str | None = None    # ... "fts5": the words are SQLite FTS5's query syntax
    limit: int | None = None     # for `history` and `search`
    text: str | None = None      # for `away`: why (none: back)

    def __repr__(self) -> str:  # a password never reaches a log or a traceback
        return f"Request(id={self.id!r}, cmd={self.cmd!r})"


@dataclass(frozen=True)
class Confirm:
    uuid: str


# A client may confirm several messages in one frame: {"type":"confirm","uuids":[...]}
# (the `confirms` feature). The browser's page does: its every frame costs the daemon a
# WebSocket frame to decode, and it confirms what one read brought at once.
MAX_CONFIRMS = 1000  # uuids in one such frame
_HEX_TO_X = str.maketrans("0123456789abcdef", "x" * 16)
_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"


@dataclass(frozen=True)
class Confirms:
    uuids: tuple[str, ...]


# The confirm frames that real clients send, as bytes: ours compact, the original's with
# json.dumps' default spaces. A confirm is sent once per delivery, so recognising these
# without building a dict or a UUID object is worth it; anything else takes the full path.
# Lower-case uuids only: an upper-case one takes the full path, which normalises it.
# a canonical uuid as a confirm of the fast paths writes it (lower-case hex)
CANONICAL_UUID = rb'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
CONFIRM_BODY = (rb'\{"type": ?"confirm", ?"uuid": ?"(' + CANONICAL_UUID
                + rb')"\}')  # also in confirms.py
_CONFIRM = re.compile(CONFIRM_BODY + rb'\Z')


def parse_client_frame(body: bytes, max_text: int, max_depth: int = MAX_JSON_DEPTH
                       ) -> ChatMessage | Confirm | Confirms | Request:
    """Decode and validate one frame a client may send."""
    match = _CONFIRM.match(body)
    if match is not None:
        return Confirm(match.group(1).decode("ascii"))
    obj = decode(body, max_depth)
    kind = obj.get("type")
    if kind == "request":
        return _request(obj)
    if kind not in ("message", "confirm"):
        raise ProtocolError(errors.UNKNOWN_TYPE, f"unknown frame type {kind!r}: expected "
                            "'message', 'confirm' or 'request'")
    if kind == "confirm" and "uuids" in obj:
        return _confirms(obj["uuids"])
    frame_uuid = canonical_uuid(obj.get("uuid"))
    if frame_uuid is None:
        raise ProtocolError(errors.BAD_UUID, f"missing or malformed uuid in {kind!r} frame: "
                            "expected 36 characters, hex digits with dashes at 8-4-4-4-12")
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
    to, action, room = obj.get("to"), obj.get("action", False), obj.get("room")
    if to is not None and not isinstance(to, str) or not isinstance(action, bool) or \
            room is not None and not isinstance(room, str):
        raise ProtocolError(errors.BAD_JSON, "'to' must be a nickname, 'room' a room's name "
                            "and 'action' true or false", frame_uuid)
    return ChatMessage(frame_uuid, text, to, action, room)


def _confirms(value: object) -> Confirms:
    """Several confirms in one frame: every uuid well-formed, or none is taken."""
    if not isinstance(value, list) or not value or len(value) > MAX_CONFIRMS:
        raise ProtocolError(errors.BAD_UUID, f"'uuids' must be a list of 1 to {MAX_CONFIRMS} "
                            "uuids")
    # the common case at once: lower-case uuids, their shape checked as one string
    if all(type(item) is str for item in value) and "".join(value).translate(
            _HEX_TO_X) == _UUID_SHAPE * len(value):
        return Confirms(tuple(value))
    uuids = tuple(canonical_uuid(item) for item in value)
    if None in uuids:
        raise ProtocolError(errors.BAD_UUID, "a malformed uuid in 'uuids': expected 36 "
                            "characters, hex digits with dashes at 8-4-4-4-12")
    return Confirms(uuids)  # type: ignore[arg-type]


def _request(obj: dict) -> Request:
    request_id, cmd = obj.get("id"), obj.get("cmd")
    if request_id is not None and type(request_id) not in (int, str):
        raise ProtocolError(errors.BAD_JSON, "a request's 'id' must be an integer or a string")
    if not isinstance(cmd, str):
        raise ProtocolError(errors.UNKNOWN_COMMAND, "a request needs a 'cmd' string",
                            request_id=request_id)
    fields = REQUESTS.get(cmd)
    if fields is None:
        raise ProtocolError(errors.UNKNOWN_COMMAND, f"unknown command {cmd!r}: this server "
                            f"knows {', '.join(repr(c) for c in REQUESTS)}",
                            request_id=request_id)
    for name in fields:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise ProtocolError(errors.BAD_JSON, f"{cmd!r}: {name!r} must be a string",
                                request_id=request_id)
    required = REQUIRED.get(cmd)
    if required is not None and obj.get(required) is None:
        code = errors.NICKNAME_INVALID if required == "nickname" else errors.BAD_JSON
        raise ProtocolError(code, f"{cmd!r} needs a {required!r} string",
                            request_id=request_id)
    limit = obj.get("limit") if cmd in INT_FIELDS else None
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ProtocolError(errors.BAD_JSON, f"{cmd!r}: 'limit' must be a whole number of "
                            "at least 1", request_id=request_id)
    return Request(request_id, cmd, limit=limit, **{name: obj.get(name) for name in fields})


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def canonical_uuid(value: object) -> str | None:
    """The uuid in lower case when `value` is one in the canonical 8-4-4-4-12 form, else None.

    Only that form: uuid.UUID() also takes braces, `urn:uuid:`, missing dashes and
    non-ASCII digits, which would let one message be pending under several spellings.
    """
    if not isinstance(value, str) or not _CANONICAL_UUID.match(value):
        return None
    return value.lower()


def take_nickname(data: bytes) -> tuple[bytes, bytes]:
    """Split a handshake read into (nickname bytes, start of the frame stream)."""
    line, newline, rest = data.partition(b"\n")
    return line.rstrip(b"\r").strip(b" "), rest if newline else b""


# --- the hello frame: a client that asks for more than the original's handshake
#
# In place of its raw nickname a client may send, in one write, one frame
#   {"type":"hello","nickname":N,"mode":"post"|"chat","account":A,"password":P}
# which no nickname can be mistaken for (a nickname holds no space, and a header that
# pads fewer than ten digits holds spaces). Mode `post` (scripts, CI): the member joins and
# leaves without notices, is listed in no `names`, takes the first free of N, N-2 ... N-9,
# and each of its messages is answered at once with `accepted`. Mode `chat` (the default):
# as the raw nickname. With `account` (and its password) the client logs in before it
# joins: the nickname may then be the account's own (the default when none is given).
# With `room` its first room is that one (made if it may be), not the default room. A
# client sends it only to a server it knows to be tcpchatd: the original server would
# take it for a nickname.

HELLO_MODES = ("post", "chat")


@dataclass(frozen=True)
class Hello:
    nickname: str | None
    mode: str
    account: str | None = None
    password: str | None = None
    room: str | None = None  # its first room, in place of the default room

    def __repr__(self) -> str:  # never the password
        return f"Hello(nickname={self.nickname!r}, mode={self.mode!r}, account={self.account!r})"


def looks_like_a_frame(data: bytes) -> bool:
    """The first bytes of a handshake are a frame header and a JSON object's start."""
    return len(data) > HEADER_LENGTH and data[HEADER_LENGTH:HEADER_LENGTH + 1] == b"{" and \
        bool(data[:HEADER_LENGTH].strip(b" ")) and \
        _DIGITS.issuperset(data[:HEADER_LENGTH].strip(b" "))


def parse_hello(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Hello:
    obj = decode(body, max_depth)
    nickname, mode = obj.get("nickname"), obj.get("mode", "chat")
    account, password, room = obj.get("account"), obj.get("password"), obj.get("room")
    if obj.get("type") != "hello" or mode not in HELLO_MODES or \
            not all(v is None or isinstance(v, str)
                    for v in (nickname, account, password, room)) \
            or nickname is None and account is None:
        raise ProtocolError(errors.BAD_HELLO, "expected a nickname, or a frame "
                            '{"type":"hello","nickname":NICK,"mode":"post"|"chat"} (with '
                            '"account":NAME,"password":PASSWORD to log in)')
    return Hello(nickname, mode, account, password or "" if account is not None else None,
                 room or None)


def accepted_frame(frame_uuid: str, recipients: int) -> bytes:
    """To a poster: the server took its message (logged, kept in history, sent on)."""
    return encode({"type": "system", "event": "accepted", "uuid": frame_uuid,
                   "recipients": recipients,
                   "message": f"Message accepted ({recipients} recipients)"})


# --- frames the server sends

def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chat_text(sender: str, text: str) -> str:
    """A public message's text, always prefixed `SENDER: ` (nobody speaks as another)."""
    prefix = sender + ": "
    return text if text.startswith(prefix) else prefix + text


def private_text(sender: str, text: str) -> str:
    """A private message's text: `SENDER (private): `, so the original client shows it so."""
    prefix = sender + ": "
    return f"{sender} (private): {text[len(prefix):] if text.startswith(prefix) else text}"


def chat_frame(frame_uuid: str, sender: str, text: str, stamp: str | None = None,
               to: str | None = None, action: bool = False, room: str | None = None) -> bytes:
    """A message as recipients see it: stamped, its text prefixed (see chat_text); a
    public one names its room, a private one its recipient."""
    obj: dict[str, Any] = {"type": "message", "uuid": frame_uuid,
           "message": private_text(sender, text) if to else chat_text(sender, text),
           "nickname": sender, "time": stamp or now_iso()}
    if to:
        obj["to"], obj["private"] = to, True
    if room is not None:
        obj["room"] = room
    if action:
        obj["action"] = True
    return encode(obj)


FEATURES = ("request", "private", "history", "nick", "action", "rooms", "accounts",
            "scrollback", "confirms")
NAMES_SHOWN = 50  # nicknames in a names frame's `message`; the list itself is complete


def names_frame(nicknames: list[str], total: int, request_id: int | str | None = None,
                history: int | None = None, room: str | None = None,
                topic: str = "") -> bytes:
    """Who is in a room: on joining it (after the join, before history), or for a `who`
    request.

    On joining, `history` says how many messages the history frame that follows holds
    (0: none follows), so a client knows when the catching-up is over.
    """
    listed = nicknames[:NAMES_SHOWN]
    shown = ", ".join(listed)
    if total > len(listed):
        shown += f" and {total - len(listed)} more"
    obj: dict[str, Any] = {"type": "system", "event": "names", "nicknames": nicknames,
           "features": list(FEATURES), "message": f"In the room: {shown} ({total})"}
    if room is not None:
        obj["room"] = room
        obj["topic"] = topic
    if request_id is not None:
        obj["id"] = request_id
    if history is not None:
        obj["history"] = history
    return encode(obj)


# System frames of what happens in a room carry `time` (an addition the original client
# ignores): a client that reads them late (a laptop waking) shows when they happened;
# and `room`, the room it happened in (the original client is in the default room alone).

def _in_room(obj: dict[str, Any], room: str | None) -> dict[str, Any]:
    if room is not None:
        obj["room"] = room
    return obj


def away_frame(nickname: str, text: str | None, room: str | None = None,
               request_id: int | str | None = None) -> bytes:
    """A member is away (with why), or back (text None); its rooms hear of it."""
    obj = _in_room({"type": "system", "event": "away", "nickname": nickname, "away": text,
                    "message": f"{nickname} is away: {text}" if text else f"{nickname} is back",
                    "time": now_iso()}, room)
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def nick_frame(old: str, new: str, room: str | None = None) -> bytes:
    return encode(_in_room({"type": "system", "event": "nick", "nickname": new, "old": old,
                            "message": f"{old} is now {new}", "time": now_iso()}, room))


def history_frame(entries: list[tuple[str, ...]], max_bytes: int,
                  room: str | None = None) -> tuple[bytes | None, int]:
    """(frame, how many entries) for the newest (nickname, time, text[, uuid]) entries whose
    frame body fits max_bytes; (None, 0) if none fits. One frame: the original client reads
    a body with one recv. A uuid lets a client page back from the oldest (`history`)."""
    chosen: list[tuple[str, ...]] = []
    frame = None
    for entry in reversed(entries):
        candidate = _history_frame([entry, *chosen], room)
        if len(candidate) - HEADER_LENGTH > max_bytes:
            break
        chosen.insert(0, entry)
        frame = candidate
    return frame, len(chosen)


def _history_frame(entries: list[tuple[str, ...]], room: str | None) -> bytes:
    count = len(entries)
    lines = [f"-- {count} earlier message{'s' if count != 1 else ''} --"]
    # continuation lines indented, so the original client shows none as a line of its own
    lines += [f"[{entry[1][11:16]}] {entry[2]}".replace("\n", "\n    ") for entry in entries]
    return encode(_in_room({"type": "system", "event": "history",
                            "messages": [{"nickname": entry[0], "time": entry[1],
                                          "message": entry[2],
                                          **({"uuid": entry[3]} if len(entry) > 3 else {})}
                                         for entry in entries],
                            "message": "\n".join(lines)}, room))


def join_frame(nickname: str, room: str | None = None) -> bytes:
    return encode(_in_room({"type": "system", "event": "join", "nickname": nickname,
                            "message": f"{nickname} joined!", "time": now_iso()}, room))


LEAVE_MESSAGES = {"kicked": "{nickname} was kicked ({detail})",
                  "banned": "{nickname} was banned ({detail})"}


def leave_frame(nickname: str, reason: str, detail: str | None = None,
                room: str | None = None, request_id: int | str | None = None) -> bytes:
    """A member left a room: it parted (reason `part`), quit, was kicked... With a
    request_id: to the member that parted, its answer."""
    message = LEAVE_MESSAGES.get(reason, "{nickname} left!").format(nickname=nickname,
                                                                    detail=detail)
    obj = _in_room({"type": "system", "event": "leave", "nickname": nickname,
                    "reason": reason, "message": message, "time": now_iso()}, room)
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def topic_frame(room: str, topic: str, nickname: str | None = None, stamp: str | None = None,
                request_id: int | str | None = None, asked: bool = False) -> bytes:
    """A room's topic: set now by `nickname` (everyone in the room hears it; the setter
    with its request's id), or `asked` for (with the request's id; `nickname` and
    `time` say who set it and when)."""
    if not asked:
        message = f"{nickname} set the topic: {topic}" if topic else \
            f"{nickname} cleared the topic"
    else:
        message = f"Topic of #{room}: {topic}" if topic else f"#{room} has no topic"
    obj: dict[str, Any] = {"type": "system", "event": "topic", "room": room, "topic": topic,
                           "message": message}
    if nickname is not None:
        obj["nickname"] = nickname
    obj["time"] = stamp or now_iso()
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def rooms_frame(rooms: list[dict[str, Any]], request_id: int | str | None = None) -> bytes:
    """The daemon's rooms: [{"room", "members", "topic"}], sorted by name."""
    shown = ", ".join(f"#{r['room']} ({r['members']})" for r in rooms[:NAMES_SHOWN])
    if len(rooms) > NAMES_SHOWN:
        shown += f" and {len(rooms) - NAMES_SHOWN} more"
    obj: dict[str, Any] = {"type": "system", "event": "rooms", "rooms": rooms,
                           "message": f"Rooms: {shown}"}
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def receipt_frame(frame_uuid: str, delivered: int, recipients: int) -> bytes:
    return encode({"type": "confirm", "uuid": frame_uuid, "delivered": delivered,
                   "recipients": recipients})


NOBODY_HERE = "Message not delivered: nobody else is here"
NOBODY_CONFIRMED = "Message not delivered: nobody confirmed it"


def undelivered_frame(frame_uuid: str, message: str, recipients: int = 0) -> bytes:
    """Nobody received it (`recipients`, an addition, says how many it was sent to)."""
    return encode({"type": "system", "event": "undelivered", "uuid": frame_uuid,
                   "recipients": recipients, "message": message})


def kick_frame(reason: str, room: str | None = None) -> bytes:
    """To a kicked member: out of the daemon, or (room) out of that room alone."""
    message = f"You were kicked from #{room}: {reason}" if room is not None else \
        f"You were kicked: {reason}"
    return encode(_in_room({"type": "system", "event": "kick", "reason": reason,
                            "message": message, "time": now_iso()}, room))


def ban_frame(reason: str, how_long: str) -> bytes:
    """To a member a ban disconnects: the kick notice (what the original client knows),
    saying it is a ban and for how long."""
    return encode({"type": "system", "event": "kick", "reason": reason, "banned": True,
                   "message": f"You were banned: {reason} ({how_long})", "time": now_iso()})


def shutdown_frame() -> bytes:
    return encode({"type": "system", "event": "shutdown", "message": "Server is shutting down",
                   "time": now_iso()})


def restart_frame() -> bytes:
    """To a client the daemon cannot carry through an upgrade (TLS): come back."""
    return encode({"type": "system", "event": "restart",
                   "message": "Server is restarting, please reconnect", "time": now_iso()})


def announce_frame(text: str, room: str | None = None) -> bytes:
    """An operator's announcement: to one room, or (room None) to everyone."""
    return encode(_in_room({"type": "system", "event": "announce", "message": text,
                            "time": now_iso()}, room))


def error_frame(code: str, message: str, frame_uuid: str | None = None,
                request_id: int | str | None = None) -> bytes:
    obj: dict[str, Any] = {"type": "system", "event": "error", "code": code, "message": message}
    if frame_uuid is not None:
        obj["uuid"] = frame_uuid
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def login_frame(account: str, role: str, request_id: int | str | None = None) -> bytes:
    """To a client whose login succeeded (at its hello, or asked for with a request)."""
    obj: dict[str, Any] = {"type": "system", "event": "login", "account": account,
                           "role": role, "message": f"Logged in as {account}"
                           + ("" if role == "user" else f" ({role})")}
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def done_frame(cmd: str, message: str, request_id: int | str | None = None) -> bytes:
    """To a moderator: its kick, ban or unban was done."""
    obj: dict[str, Any] = {"type": "system", "event": "done", "cmd": cmd, "message": message}
    if request_id is not None:
        obj["id"] = request_id
    return encode(obj)


def page_frame(event: str, room: str | None, messages: list[dict], request_id: Any,
               max_bytes: int, more: bool = False) -> bytes:
    """A page of the lasting history (`history`, oldest first: `more` says older ones
    remain) or a search's matches (`search`, newest first); the oldest of a page, the
    last of a search, left out until the body fits max_bytes."""
    messages = list(messages)
    while True:
        obj: dict[str, Any] = {"type": "system", "event": event, "messages": messages,
                               "id": request_id}
        if room is not None:
            obj["room"] = room
        if event == "history":
            obj["more"] = more
        body = encode(obj)
        if len(body) - HEADER_LENGTH <= max_bytes or not messages:
            return body
        if event == "history":
            messages.pop(0)
            more = True
        else:
            messages.pop()
