"""IRC on the chat protocol: one IRC client's lines as tcpchatd's frames, and back. Pure:
no socket, no clock but the one it is handed (net/irctransport.py feeds it).

An IRC client registers (NICK, USER, PASS, CAP, SASL PLAIN), then speaks channels; the
translator turns that into what a native client sends (a hello frame, messages with a
room, requests), and every frame the session sends into the lines an IRC client expects
(numerics, JOIN, PRIVMSG ...). Rooms are channels: `#NAME`. The session, the hall, the
receipts, bans and flood limits are the same for an IRC member as for any other; what
IRC has no word for is said in a NOTICE, or left out (receipts: an IRC client never
confirms; the transport confirms for it once a message's line is handed to its
connection, see irctransport.py).

Lines: at most 512 bytes with CR LF (8191 more of tags), split on LF with an optional CR
before it. A longer line, a NUL, or a CR inside a line is answered with a numeric (417,
or 400) and dropped; nothing an IRC client sends raises out of here.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .protocol import HEADER_LENGTH, NICKNAME_PROMPT

MAX_LINE = 512            # RFC 1459's line, CR LF included
MAX_TAGS = 8191           # IRCv3 message-tags: the tags' own budget, beyond the 512
CAPABILITIES = ("server-time", "message-tags", "echo-message", "multi-prefix",
                "away-notify", "sasl")
IRC_FORBIDDEN = re.compile(r"[\s,!@*?.]")  # in an IRC nickname
ERROR_NUMERICS = {  # the chat protocol's refusals as IRC numerics
    "nickname_taken": "433", "nickname_reserved": "433", "nickname_invalid": "432",
    "no_such_nickname": "401", "no_such_room": "403", "room_name_invalid": "479",
    "not_in_room": "442", "room_limit": "405", "not_permitted": "482",
    "already_in_room": "443", "text_too_long": "417", "flood": "263",
}


NewUuid = Callable[[], str]
Reply = tuple[list[bytes], list[str]]  # (frames for the session, lines for the client)


@dataclass
class Line:
    """One parsed IRC line."""
    command: str
    params: list[str]
    tags: dict[str, str] = field(default_factory=dict)


class LineError(Exception):
    """A line that cannot be taken: its numeric and why."""

    def __init__(self, numeric: str, why: str) -> None:
        super().__init__(why)
        self.numeric, self.why = numeric, why


def parse_line(raw: bytes) -> Line | None:
    """A line without its CR LF; None for an empty one. LineError for what IRC forbids."""
    if b"\0" in raw or b"\r" in raw:
        raise LineError("400", "Malformed line (NUL or a CR inside it)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # what old clients send; kept, not refused
    tags: dict[str, str] = {}
    if text.startswith("@"):
        tag_text, _, text = text.partition(" ")
        if len(tag_text) > MAX_TAGS:
            raise LineError("417", "Input line was too long")
        for item in tag_text[1:].split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = value
    if len(text.encode("utf-8")) > MAX_LINE - 2:
        raise LineError("417", "Input line was too long")
    text = text.lstrip(" ")
    if text.startswith(":"):  # a prefix from a client is ignored
        text = text.partition(" ")[2].lstrip(" ")
    if not text:
        return None
    head, sep, trailing = text.partition(" :")
    words = head.split()
    if not words:
        return None
    params = words[1:] + ([trailing] if sep else [])
    return Line(words[0].upper(), params, tags)


def split_text(prefix: str, text: str, limit: int = MAX_LINE - 2) -> list[str]:
    """`prefix + piece` lines of at most `limit` bytes (UTF-8 never cut inside a
    character); one line per line of the text."""
    room = max(16, limit - len(prefix.encode("utf-8")))
    out = []
    for part in text.split("\n") or [""]:
        data = part.encode("utf-8")
        while True:
            if len(data) <= room:
                out.append(prefix + data.decode("utf-8"))
                break
            cut = room
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
                cut -= 1
            out.append(prefix + data[:cut].decode("utf-8"))
            data = data[cut:]
    return out


# made once: json.dumps with arguments makes an encoder at every call
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def frame(obj: dict[str, Any]) -> bytes:
    body = _dumps(obj).encode("utf-8")
    return b"%-10d" % len(body) + body


def session_frames(data: bytes) -> list[bytes | None]:
    """The bodies of the frames in the session's bytes (None for the prompt)."""
    out: list[bytes | None] = []
    position, size = 0, len(data)
    while position < size:
        header = data[position:position + HEADER_LENGTH]
        if header == NICKNAME_PROMPT:
            out.append(None)
            position += HEADER_LENGTH
            continue
        end = position + HEADER_LENGTH + int(header)
        out.append(data[position + HEADER_LENGTH:end])
        position = end
    return out


class IrcTranslator:
    """One IRC client's side: `received(line bytes)` gives frames for the session and
    lines for the client; `sent(frame body)` gives the lines a frame becomes."""

    def __init__(self, server: str, host: str, default_room: str,
                 isupport: dict[str, str | None]) -> None:
        self.server = server           # our name in prefixes
        self.host = host               # the client's host, in its own prefix
        self.default_room = default_room
        self.isupport = isupport
        self.nick = ""                 # asked for (before the join) or its own
        self.user = ""
        self.password: str | None = None
        self.sasl: tuple[str, str] | None = None  # (account, password) from AUTHENTICATE
        self.sasl_state = ""           # "", "asked" (AUTHENTICATE PLAIN), "done"
        self.caps: set[str] = set()
        self.negotiating = False       # CAP LS came: registration waits for CAP END
        self.hello_sent = False
        self.joined = False            # its own first join came
        self.registered = False        # the welcome went out
        self.channels: list[str] = []  # rooms it is in, as named by the server
        self.away: str | None = None
        self._ids = itertools.count(1)
        self.asked: dict[str, tuple[str, str]] = {}  # request id -> (command, argument)
        self.held: list[str] = []      # lines due once registration completes
        self.quit_seen: set[str] = set()  # nicknames a QUIT was sent for (one per quit)
        self.renamed: set[tuple[str, str]] = set()  # (old, new) NICK lines already sent
        self.quitting = False          # QUIT came: the end of its stream
        self.away_told: dict[str, set[str]] = {}  # the last AWAY line's text -> nicknames

    # --- state an upgrade carries

    def export(self) -> dict[str, Any]:
        return {"nick": self.nick, "user": self.user, "caps": sorted(self.caps),
                "negotiating": self.negotiating, "hello_sent": self.hello_sent,
                "registered": self.registered, "joined": self.joined,
                "channels": self.channels,
                "away": self.away, "asked": self.asked, "held": self.held,
                "sasl_state": self.sasl_state}

    def restore(self, state: dict[str, Any]) -> None:
        self.nick, self.user = state["nick"], state["user"]
        self.caps = set(state["caps"])
        self.negotiating, self.hello_sent = state["negotiating"], state["hello_sent"]
        self.registered, self.channels = state["registered"], list(state["channels"])
        self.joined = state["joined"]
        self.away, self.held, self.sasl_state = state["away"], state["held"], state["sasl_state"]
        self.asked = {k: (v[0], v[1]) for k, v in state["asked"].items()}
        self._ids = itertools.count(1 + max((int(k[1:]) for k in self.asked), default=0))

    # --- helpers

    def _me(self) -> str:
        return self.nick or "*"

    def numeric(self, code: str, *params: str) -> str:
        """`:server CODE nick params...`, the last as trailing."""
        *middle, last = params if params else ("",)
        words = " ".join([f":{self.server}", code, self._me(), *middle])
        return f"{words} :{last}"

    def _source(self, nick: str) -> str:
        return f"{nick}!{nick}@{self.host if nick == self.nick else 'tcpchatd'}"

    def _tagged(self, line: str, stamp: str | None) -> str:
        if stamp and "server-time" in self.caps:
            return f"@time={stamp} {line}"
        return line

    def _request(self, cmd: str, argument: str = "", **fields: Any) -> bytes:
        request_id = f"i{next(self._ids)}"
        self.asked[request_id] = (cmd, argument)
        return frame({"type": "request", "id": request_id, "cmd": cmd, **fields})

    @staticmethod
    def room_of(channel: str) -> str:
        return channel[1:] if channel.startswith(("#", "&")) else channel

    def channel(self, room: str | None) -> str:
        return f"#{room or self.default_room}"

    # --- client -> server

    def received(self, raw: bytes, new_uuid: NewUuid) -> Reply:
        """(frames for the session, lines for the client) of one line from the client."""
        try:
            line = parse_line(raw)
        except LineError as exc:
            return [], [self.numeric(exc.numeric, exc.why)]
        if line is None:
            return [], []
        handler = getattr(self, f"_cmd_{line.command.lower()}", None) \
            if line.command.isalpha() else None
        if handler is None:
            if not self.registered:
                return [], [self.numeric("451", "You have not registered")]
            return [], [self.numeric("421", line.command, "Unknown command")]
        if not self.registered and line.command not in (
                "CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"):
            return [], [self.numeric("451", "You have not registered")]
        return handler(line.params, line, new_uuid)

    def _need(self, params: list[str], count: int, command: str) -> list[str] | None:
        if len(params) < count:
            return [self.numeric("461", command, "Not enough parameters")]
        return None

    def _cmd_cap(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        sub = params[0].upper() if params else ""
        if sub == "LS":
            self.negotiating = not self.registered
            return [], [f":{self.server} CAP {self._me()} LS :{' '.join(CAPABILITIES)}"]
        if sub == "LIST":
            return [], [f":{self.server} CAP {self._me()} LIST :{' '.join(sorted(self.caps))}"]
        if sub == "REQ":
            self.negotiating = not self.registered
            wanted = (params[1] if len(params) > 1 else "").split()
            names = [w.lstrip("-") for w in wanted]
            if not wanted or any(n not in CAPABILITIES for n in names):
                return [], [f":{self.server} CAP {self._me()} NAK :{' '.join(wanted)}"]
            for word in wanted:
                (self.caps.discard if word.startswith("-") else self.caps.add)(word.lstrip("-"))
            return [], [f":{self.server} CAP {self._me()} ACK :{' '.join(wanted)}"]
        if sub == "END":
            self.negotiating = False
            frames, lines = self._maybe_hello()
            return frames, lines + self._complete()
        return [], [self.numeric("410", sub or "*", "Invalid CAP command")]

    def _cmd_pass(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if self.registered:
            return [], [self.numeric("462", "You may not reregister")]
        if (missing := self._need(params, 1, "PASS")) is not None:
            return [], missing
        self.password = params[0]
        return [], []

    def _cmd_authenticate(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if "sasl" not in self.caps or self.registered:
            return [], [self.numeric("904", "SASL authentication failed")]
        argument = params[0] if params else ""
        if self.sasl_state == "":
            if argument.upper() != "PLAIN":
                return [], [self.numeric("908", "PLAIN", "are available SASL mechanisms")]
            self.sasl_state = "asked"
            return [], ["AUTHENTICATE +"]
        if argument == "*":
            self.sasl_state = ""
            return [], [self.numeric("906", "SASL authentication aborted")]
        try:
            _, account, password = base64.b64decode(argument, validate=True).decode(
                "utf-8").split("\0")
        except ValueError:
            self.sasl_state = ""
            return [], [self.numeric("904", "SASL authentication failed")]
        self.sasl, self.sasl_state = (account, password), "done"
        return self._maybe_hello()

    def _cmd_nick(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if not params:
            return [], [self.numeric("431", "No nickname given")]
        if IRC_FORBIDDEN.search(params[0]) or params[0][0] in "#&:$+~%@0123456789-":
            # what tcpchatd takes but an IRC prefix cannot hold (the rest, its own rules
            # refuse: 432 from its answer)
            return [], [self.numeric("432", params[0], "Erroneous nickname")]
        if not self.registered:
            self.nick = params[0]
            if self.hello_sent:  # a new one after 433: asked again with it
                self.hello_sent = False
            return self._maybe_hello()
        return [self._request("nick", params[0], nickname=params[0])], []

    def _cmd_user(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if self.registered:
            return [], [self.numeric("462", "You may not reregister")]
        if (missing := self._need(params, 4, "USER")) is not None:
            return [], missing
        self.user = params[0]
        return self._maybe_hello()

    def _maybe_hello(self) -> tuple[list[bytes], list[str]]:
        """Once NICK and USER came and CAP negotiation (and SASL) ended: the hello."""
        if self.hello_sent or not self.nick or not self.user or self.sasl_state == "asked" \
                or self.negotiating and self.sasl_state != "done":  # SASL's answer is due
            return [], []                                         # before CAP END
        self.hello_sent = True
        hello: dict[str, Any] = {"type": "hello", "nickname": self.nick, "mode": "chat"}
        if self.sasl is not None:
            hello["account"], hello["password"] = self.sasl
        elif self.password is not None:  # PASS: the account of the nickname
            hello["account"], hello["password"] = self.nick, self.password
        return [frame(hello)], []

    def _cmd_ping(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        token = params[0] if params else self.server
        return [], [f":{self.server} PONG {self.server} :{token}"]

    def _cmd_pong(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], []

    def _cmd_quit(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        reason = params[0] if params else "Client Quit"
        self.quitting = True  # the transport ends the stream after this line
        return [], [f"ERROR :Closing Link: {self.host} (Quit: {reason})"]

    def _cmd_join(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if (missing := self._need(params, 1, "JOIN")) is not None:
            return [], missing
        if params[0] == "0":  # JOIN 0: leave every channel
            return [self._request("part", c, room=self.room_of(c)) for c in self.channels], []
        frames, lines = [], []
        for name in params[0].split(","):
            if not name.startswith(("#", "&")):
                lines.append(self.numeric("403", name, "No such channel"))
            elif name.lower() not in (c.lower() for c in self.channels):
                frames.append(self._request("join", name, room=self.room_of(name)))
        return frames, lines

    def _cmd_part(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if (missing := self._need(params, 1, "PART")) is not None:
            return [], missing
        return [self._request("part", c, room=self.room_of(c)) for c in params[0].split(",")], []

    def _cmd_names(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        channels = params[0].split(",") if params else self.channels
        return [self._request("who", c, room=self.room_of(c)) for c in channels], []

    def _cmd_who(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if not params or not params[0].startswith(("#", "&")):
            return [], [self.numeric("315", params[0] if params else "*", "End of WHO list")]
        return [self._request("who", "WHO " + params[0], room=self.room_of(params[0]))], []

    def _cmd_topic(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if (missing := self._need(params, 1, "TOPIC")) is not None:
            return [], missing
        fields: dict[str, Any] = {"room": self.room_of(params[0])}
        if len(params) > 1:
            fields["topic"] = params[1]
        return [self._request("topic", params[0], **fields)], []

    def _cmd_list(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [self._request("rooms")], []

    def _cmd_kick(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if (missing := self._need(params, 2, "KICK")) is not None:
            return [], missing
        fields: dict[str, Any] = {"nickname": params[1], "room": self.room_of(params[0])}
        if len(params) > 2:
            fields["reason"] = params[2]
        return [self._request("kick", params[0], **fields)], []

    def _cmd_privmsg(self, params: list[str], line: Line, new_uuid: NewUuid,
                     notice: bool = False) -> Reply:
        if len(params) < 2 or not params[1]:
            if notice:
                return [], []
            return [], [self.numeric("411" if not params else "412",
                                     "No recipient given" if not params else "No text to send")]
        frames, lines = [], []
        text = params[1]
        action = text.startswith("\x01ACTION ") and text.endswith("\x01")
        if action:
            text = text[8:-1]
        elif text.startswith("\x01"):  # other CTCP (VERSION, PING...): not chat
            return [], []
        for target in params[0].split(","):
            message: dict[str, Any] = {"type": "message", "uuid": new_uuid(),
                                       "message": text}
            if target.startswith(("#", "&")):
                message["room"] = self.room_of(target)
            else:
                message["to"] = target
            if action:
                message["action"] = True
            frames.append(frame(message))
            if "echo-message" in self.caps:
                lines.append(f":{self._source(self.nick)} {'NOTICE' if notice else 'PRIVMSG'}"
                             f" {target} :{params[1]}")
        return frames, lines

    def _cmd_notice(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return self._cmd_privmsg(params, line, new_uuid, notice=True)

    def _cmd_away(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        self.away = params[0] if params and params[0] else None
        return [self._request("away", "", **({"text": self.away} if self.away else {}))], []

    def _cmd_mode(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if (missing := self._need(params, 1, "MODE")) is not None:
            return [], missing
        target = params[0]
        if target.startswith(("#", "&")):
            if len(params) > 1 and params[1] not in ("b", "+b"):
                return [], [self.numeric("482", target, "tcpchatd has no channel modes "
                                         "to change")]
            if len(params) > 1:  # the ban list: tcpchatctl bans holds it
                return [], [self.numeric("368", target, "End of channel ban list")]
            return [], [self.numeric("324", target, "+nt")]
        if target.lower() != self.nick.lower():
            return [], [self.numeric("502", "Can't change mode for other users")]
        if len(params) > 1:
            return [], [self.numeric("501", "Unknown MODE flag")]
        return [], [self.numeric("221", "+i")]

    def _cmd_motd(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], [self.numeric("422", "MOTD File is missing")]

    def _cmd_whois(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        if not params:
            return [], [self.numeric("431", "No nickname given")]
        return [self._request("who", "WHOIS " + params[-1], room=self.default_room)], []

    def _cmd_userhost(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], [self.numeric("302", " ".join(f"{p}=+{p}@tcpchatd" for p in params[:5]))]

    def _cmd_ison(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], [self.numeric("303", "")]  # presence is asked with NAMES or WHO here

    def _cmd_version(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], [self.numeric("351", "tcpchatd", self.server, "the TCPchat daemon")]

    def _cmd_lusers(self, params: list[str], line: Line, new_uuid: NewUuid) -> Reply:
        return [], [self.numeric("251", "There are users on 1 server")]

    # --- server -> client

    def sent(self, body: bytes | None) -> list[str]:
        """The lines one frame of the session becomes (none for what IRC has no word for)."""
        if body is None:  # the prompt: the hello goes once NICK and USER came
            return []
        try:
            f = json.loads(body)
        except ValueError:
            return []
        kind = f.get("type")
        if kind == "message":
            return self._message(f)
        if kind != "system":
            return []  # a receipt: IRC has none
        event = f.get("event")
        handler = getattr(self, f"_on_{event}", None)
        lines = handler(f) if handler is not None else self._notice(f)
        if not self.registered:  # before the welcome: held, but for the refusals
            if event == "error" or event == "login":
                return lines
            self.held.extend(lines)
            return self._complete() if event == "join" else []
        return lines

    def _complete(self) -> list[str]:
        """The welcome and what was held, once its own join came and CAP ended."""
        if self.registered or not self.joined or self.negotiating:
            return []
        self.registered = True
        lines, self.held = self.welcome() + self.held, []
        return lines

    def _notice(self, f: dict[str, Any]) -> list[str]:
        text = f.get("message")
        if not text:
            return []
        target = self.channel(f["room"]) if f.get("room") else self._me()
        return split_text(f":{self.server} NOTICE {target} :", str(text))

    def _message(self, f: dict[str, Any]) -> list[str]:
        sender, text = f.get("nickname", "?"), str(f.get("message", ""))
        prefix = f"{sender} (private): " if f.get("private") else f"{sender}: "
        if text.startswith(prefix):
            text = text[len(prefix):]
        target = self.nick if f.get("private") else self.channel(f.get("room"))
        if f.get("action"):
            text = f"\x01ACTION {text}\x01"
        head = self._tagged(f":{self._source(sender)} PRIVMSG {target} :", f.get("time"))
        return split_text(head, text)

    def welcome(self) -> list[str]:
        tokens = " ".join(k if v is None else f"{k}={v}" for k, v in self.isupport.items())
        return [self.numeric("001", f"Welcome to the tcpchatd IRC network {self.nick}"),
                self.numeric("002", f"Your host is {self.server}, running tcpchatd"),
                self.numeric("003", "This server speaks IRC beside the TCPchat protocol"),
                f":{self.server} 004 {self.nick} {self.server} tcpchatd i nt",
                f":{self.server} 005 {self.nick} {tokens} :are supported by this server",
                self.numeric("422", "MOTD File is missing")]

    def _on_login(self, f: dict[str, Any]) -> list[str]:
        account = f.get("account", "")
        if self.sasl is None and "id" not in f:
            return []
        return [self.numeric("900", f"{self._source(self.nick)}", account,
                             f"You are now logged in as {account}"),
                self.numeric("903", "SASL authentication successful")]

    def _on_join(self, f: dict[str, Any]) -> list[str]:
        nick, channel = f.get("nickname", ""), self.channel(f.get("room"))
        if not self.joined and self.hello_sent:  # its own join comes first
            self.nick = nick  # the server's spelling (an account's own)
            self.joined = True
        if nick == self.nick and channel not in self.channels:
            self.channels.append(channel)
        self.quit_seen.discard(nick)
        return [f":{self._source(nick)} JOIN {channel}"]

    def _on_names(self, f: dict[str, Any]) -> list[str]:
        channel = self.channel(f.get("room"))
        asked = self.asked.pop(str(f.get("id")), None) if "id" in f else None
        if asked is not None and asked[1].startswith(("WHO ", "WHOIS ")):
            return self._who_lines(asked[1], channel, f.get("nicknames", []))
        lines = []
        if f.get("topic") and asked is None:
            lines.append(self.numeric("332", channel, f["topic"]))
        names = f.get("nicknames", [])
        prefix = f":{self.server} 353 {self.nick} = {channel} :"
        line = ""
        for name in names:
            if len(prefix) + len(line) + len(name) + 1 > MAX_LINE - 2:
                lines.append(prefix + line)
                line = ""
            line = f"{line} {name}" if line else name
        lines.append(prefix + line)
        lines.append(self.numeric("366", channel, "End of /NAMES list"))
        return lines

    def _who_lines(self, asked: str, channel: str, names: list[str]) -> list[str]:
        word, target = asked.split(" ", 1)
        if word == "WHOIS":
            if target.lower() not in (n.lower() for n in names):
                return [self.numeric("401", target, "No such nick/channel"),
                        self.numeric("318", target, "End of /WHOIS list")]
            return [self.numeric("311", target, target, "tcpchatd", "*", target),
                    self.numeric("318", target, "End of /WHOIS list")]
        return [self.numeric("352", channel, n, "tcpchatd", self.server, n, "H", f"0 {n}")
                for n in names] + [self.numeric("315", channel, "End of WHO list")]

    def _on_history(self, f: dict[str, Any]) -> list[str]:
        self.asked.pop(str(f.get("id")), None)
        channel = self.channel(f.get("room"))
        lines = []
        for m in f.get("messages", []):
            sender, text = m.get("nickname", "?"), str(m.get("message", ""))
            if text.startswith(f"{sender}: "):
                text = text[len(sender) + 2:]
            if "server-time" in self.caps:
                lines += split_text(self._tagged(f":{self._source(sender)} PRIVMSG {channel} :",
                                                 m.get("time")), text)
            else:
                stamp = str(m.get("time", ""))[11:16]
                lines += split_text(f":{self.server} NOTICE {channel} :[{stamp}] <{sender}> ",
                                    text)
        return lines

    def _on_leave(self, f: dict[str, Any]) -> list[str]:
        nick, channel = f.get("nickname", ""), self.channel(f.get("room"))
        reason = f.get("reason", "")
        if "id" in f:  # its own part, answered
            self.asked.pop(str(f["id"]), None)
        if nick == self.nick:
            if channel in self.channels:
                self.channels.remove(channel)
            return [f":{self._source(nick)} PART {channel}"]
        if reason == "part":
            return [f":{self._source(nick)} PART {channel}"]
        if reason in ("kicked", "banned"):
            return [f":{self.server} KICK {channel} {nick} :{f.get('message', reason)}"]
        if nick in self.quit_seen:  # a quit is one line, however many rooms it shared
            return []
        self.quit_seen.add(nick)
        return [f":{self._source(nick)} QUIT :{reason or 'Quit'}"]

    def _on_nick(self, f: dict[str, Any]) -> list[str]:
        old, new = f.get("old", ""), f.get("nickname", "")
        if "id" in f:
            self.asked.pop(str(f["id"]), None)
        if (old, new) in self.renamed:  # one line, however many rooms it shared
            return []
        self.renamed.add((old, new))
        if len(self.renamed) > 64:
            self.renamed = {(old, new)}
        line = f":{self._source(old)} NICK :{new}"
        if old == self.nick:
            self.nick = new
        return [line]

    def _on_topic(self, f: dict[str, Any]) -> list[str]:
        channel = self.channel(f.get("room"))
        asked = self.asked.pop(str(f.get("id")), None) if "id" in f else None
        topic = f.get("topic", "")
        if asked is not None and f.get("message", "").startswith(("Topic of", "#")):
            if not topic:
                return [self.numeric("331", channel, "No topic is set")]
            return [self.numeric("332", channel, topic)]
        return [f":{self._source(f.get('nickname') or self.server)} TOPIC {channel} :{topic}"]

    def _on_rooms(self, f: dict[str, Any]) -> list[str]:
        self.asked.pop(str(f.get("id")), None)
        return [self.numeric("321", "Channel", "Users  Name")] + [
            self.numeric("322", self.channel(r.get("room")), str(r.get("members", 0)),
                         r.get("topic", "")) for r in f.get("rooms", [])] + [
            self.numeric("323", "End of /LIST")]

    def _on_kick(self, f: dict[str, Any]) -> list[str]:
        reason = f.get("reason", "")
        if f.get("room") and not f.get("banned"):
            channel = self.channel(f["room"])
            if channel in self.channels:
                self.channels.remove(channel)
            return [f":{self.server} KICK {channel} {self.nick} :{reason}"]
        return [f"ERROR :Closing Link: {self.host} ({f.get('message', reason)})"]

    def _on_shutdown(self, f: dict[str, Any]) -> list[str]:
        return self._notice(f) + [f"ERROR :Closing Link: {self.host} (Server shutting down)"]

    def _on_restart(self, f: dict[str, Any]) -> list[str]:
        return self._notice(f) + [f"ERROR :Closing Link: {self.host} (Server restarting)"]

    def _on_error(self, f: dict[str, Any]) -> list[str]:
        code, text = f.get("code", ""), str(f.get("message", ""))
        asked = self.asked.pop(str(f.get("id")), None) if "id" in f else None
        if code == "unknown_uuid":  # a confirm the transport sent late: nobody's concern
            return []
        if code in ("nickname_taken", "nickname_reserved", "nickname_invalid"):
            wanted = asked[1] if asked is not None else self.nick
            if not self.registered:
                self.hello_sent = False  # a NICK again asks again
            return [self.numeric(ERROR_NUMERICS[code], wanted, text)]
        if code in ("login_failed", "login_throttled", "account_required"):
            return [self.numeric("904", text)] if self.sasl is not None else \
                [self.numeric("464", text)]
        if code == "already_in_room":
            return []
        numeric = ERROR_NUMERICS.get(code)
        if numeric is not None:
            target = asked[1] if asked is not None else "*"
            return [self.numeric(numeric, target, text)]
        return self._notice(f)

    def _on_away(self, f: dict[str, Any]) -> list[str]:
        """Its own: the answer (306, 305); another member's: AWAY with away-notify."""
        nick, text = f.get("nickname", ""), f.get("away")
        if "id" in f or nick == self.nick:
            self.asked.pop(str(f.get("id")), None)
            if "id" not in f:
                return []  # the rooms' copies of its own
            return [self.numeric("306", "You have been marked as being away") if text
                    else self.numeric("305", "You are no longer marked as being away")]
        if "away-notify" not in self.caps or nick in self.away_told.get(text or "", ()):
            return []
        self.away_told = {text or "": {nick}}  # one line, however many rooms it shares
        return [f":{self._source(nick)} AWAY :{text}" if text else f":{self._source(nick)} AWAY"]

    def _on_undelivered(self, f: dict[str, Any]) -> list[str]:
        return []  # nobody else in the room: IRC says nothing

    def _on_accepted(self, f: dict[str, Any]) -> list[str]:
        return []

    def _on_done(self, f: dict[str, Any]) -> list[str]:
        self.asked.pop(str(f.get("id")), None)
        return self._notice(f)
