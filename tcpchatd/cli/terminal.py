"""The interactive side of tcpchat-client (prompt_toolkit).

Three threads: the prompt (this one), the receiver (frames from the server, printed
above the prompt through `patch_stdout`, so they never garble the line being typed; it
also reconnects) and the sender (what was typed, paced under the server's flood limit,
so a pasted block of lines is never cut short).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout

from . import render
from .chatlink import (
    EXIT_FAILED,
    EXIT_OK,
    Connection,
    Refused,
    ServerGone,
    connect_and_join,
    join_interactively,
    reconnect,
    refusal,
)

HELP = """commands:
  /who              who is in this room
  /msg NICK TEXT    a private message to NICK
  /me TEXT          an action (`* you TEXT`)
  /nick NEW         take another nickname
  /join ROOM        join ROOM (made if it does not exist) and talk there
  /part [ROOM]      leave ROOM (default: this one)
  /room [ROOM]      talk in ROOM from now on (one you are in); alone: your rooms
  /rooms            every room of the server
  /topic [TEXT]     this room's topic; with TEXT, set it
  /history [N]      N earlier messages of this room (Page Up: the next page back)
  /search WORDS     this room's messages with all of WORDS, newest first
  /login ACCOUNT    log in to ACCOUNT (the password is asked, not shown)
  /kick NICK [WHY]  put NICK out of this room (moderators)
  /ban TARGET [DURATION] [WHY]  ban a nickname or address: 90s, 15m, 2h, 7d, or until
                    unbanned (moderators); /unban TARGET lifts it
  /quit [TEXT]      leave (saying TEXT first); Ctrl-D and Ctrl-C leave too
  /help             this list
  //TEXT            sends TEXT starting with one /
Lines go to the room the prompt shows; messages of your other rooms are marked with
theirs, and the status line counts those you have not seen there. Tab completes
nicknames."""
USAGE = {"/me": "/me TEXT", "/msg": "/msg NICK TEXT", "/nick": "/nick NEW",
         "/join": "/join ROOM", "/login": "/login ACCOUNT", "/search": "/search WORDS",
         "/history": "/history [N]", "/kick": "/kick NICK [REASON]",
         "/ban": "/ban TARGET [DURATION] [REASON]", "/unban": "/unban TARGET"}
DURATION = re.compile(r"[1-9][0-9]*[smhd]\Z")
# the commands that need the server's support, by the feature its names frame announces
NEEDS = {"/who": "request", "/msg": "private", "/nick": "nick", "/join": "rooms",
         "/part": "rooms", "/room": "rooms", "/rooms": "rooms", "/topic": "rooms",
         "/login": "accounts", "/kick": "accounts", "/ban": "accounts", "/unban": "accounts",
         "/history": "scrollback", "/search": "scrollback"}
QUIT_GRACE = 2.0  # seconds /quit TEXT waits for TEXT to go out


@dataclass
class Outgoing:
    """A line on its way out: a message (text, to, action) or a request."""
    text: str = ""
    to: str | None = None
    action: bool = False
    request: str | None = None
    nickname: str | None = None
    room: str | None = None
    topic: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # a request's other fields


class NoticeShown(ServerGone):
    """The server said why it goes (shutdown, restart): the screen shows it already."""


class NicknameCompleter(Completer):
    """Tab completes the nicknames of who is here (from names, joins, leaves, nicks)."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def get_completions(self, document, complete_event):
        word = document.get_word_before_cursor(WORD=True)
        if not word or word.startswith("/"):
            return
        at_start = document.text_before_cursor == word
        for nickname in sorted(self.terminal.conn.nicknames, key=str.casefold):
            if nickname.casefold().startswith(word.casefold()):
                yield Completion(nickname + (": " if at_start else ""),
                                 start_position=-len(word), display=nickname)


class Terminal:
    def __init__(self, conn: Connection, session: PromptSession, args: argparse.Namespace,
                 colour: bool) -> None:
        self.conn = conn
        self.session = session
        self.args = args
        self.colour = colour
        self.lost: str | None = None       # why the chat is over (no reconnect)
        self.stop = threading.Event()
        self.outbox: queue.Queue[Outgoing | None] = queue.Queue()
        self.up = threading.Event()        # connected and joined
        self.up.set()
        self.mine: dict[str, str] = {}     # uuid -> text of messages awaiting a receipt
        self._mine_lock = threading.Lock()
        # the room lines go to ("": the one room of a server without rooms), and the
        # messages not seen in each other room
        self.current = next(iter(conn.rooms), "")
        self.unread: dict[str, int] = {}
        self.oldest: dict[str, str] = {}  # room -> its oldest message shown (uuid or time)

    # --- rooms

    def switch(self, room: str) -> None:
        self.current = room
        self.unread.pop(room, None)
        self.session.app.invalidate()

    def prompt(self) -> str:
        return f"[#{self.current}] {self.conn.nickname}> " if self.current \
            else f"{self.conn.nickname}> "

    def status(self) -> FormattedText | None:
        """The status line: every room it is in, the current one marked, unread counts."""
        rooms = list(self.conn.rooms)
        if not self.current or not rooms:
            return None
        parts: list[tuple[str, str]] = []
        for room in rooms:
            shown = f" [#{room}] " if room == self.current else f" #{room} "
            parts.append(("reverse" if room == self.current else "", shown))
            if self.unread.get(room):
                parts.append(("bold", f"({self.unread[room]}) "))
        return FormattedText(parts)

    def _room_news(self, frame: dict) -> None:
        """What a frame changes of the rooms: a join it asked for becomes the current
        room; a part (or a kick out of one) of the current room moves it to another."""
        event, room = frame.get("event"), frame.get("room")
        if not isinstance(room, str):
            return
        if event == "names" and frame.get("id") == "join":
            self.switch(room)
            self.say(f"now talking in #{room}")
        elif (event == "leave" and frame.get("nickname") == self.conn.nickname
              or event == "kick") and room == self.current:
            others = [r for r in self.conn.rooms if r != room]
            if others:
                self.switch(others[0])
                self.say(f"now talking in #{others[0]}")
        if frame.get("type") == "message" and room != self.current \
                and room in self.conn.rooms:
            self.unread[room] = self.unread.get(room, 0) + 1
            self.session.app.invalidate()

    # --- output

    def show(self, fragments: render.Fragments) -> None:
        if self.colour:
            print_formatted_text(FormattedText(fragments))
        else:
            print_formatted_text(render.plain(fragments))

    def say(self, text: str) -> None:
        self.show([(render.NOTICE_STYLE, f"-- {text}")])

    # --- receiver thread

    def receive(self) -> None:
        while not self.stop.is_set():
            why = self._receive_from(self.conn)
            if self.stop.is_set():
                return
            with self._mine_lock:
                unanswered, self.mine = list(self.mine.values()), {}
            for text in unanswered:  # never resent: the server cannot tell a resend
                self.show(render.no_receipt(text, "connection lost"))
            if isinstance(why, Refused):
                self._end(str(why))
                return
            self.up.clear()
            if not isinstance(why, NoticeShown):
                self.say(f"{why}")
            rooms = [room for room in self.conn.rooms if room]
            conn = reconnect(self.args, self.conn.nickname, self.say, self.stop, rooms)
            if conn is None:
                return
            self.conn = conn
            if self.current not in conn.rooms:
                self.switch(next(iter(conn.rooms), ""))
            self.up.set()

    def _receive_from(self, conn: Connection) -> ServerGone:
        try:
            for frame in conn.incoming():
                self._room_news(frame)
                self._show_frame(frame)
                refused = refusal(frame)
                if refused is not None:
                    raise Refused(refused)
                if frame.get("event") in ("shutdown", "restart"):
                    # the notice is on the screen already
                    raise NoticeShown(str(frame.get("message", "the server is shutting down")))
        except ServerGone as exc:
            return exc
        return ServerGone("the server closed the connection")

    def _show_frame(self, frame: dict) -> None:
        kind, frame_uuid, event = frame.get("type"), frame.get("uuid"), frame.get("event")
        with self._mine_lock:
            text = self.mine.pop(frame_uuid, None) if isinstance(frame_uuid, str) and (
                kind == "confirm" or event in ("undelivered", "error")) else None
        if text is not None:
            if kind == "confirm":
                self.show(render.receipt(frame.get("delivered"), frame.get("recipients"), text))
            elif event == "undelivered":
                self.show(render.receipt(0, frame.get("recipients", 0), text,
                                         "nobody else is here" if "nobody else" in
                                         str(frame.get("message")) else "nobody confirmed it"))
            else:
                self.show(render.receipt(0, None, text, str(frame.get("message"))))
            return
        if kind == "message":
            self.show(render.message(frame, self.conn.nickname, self._elsewhere(frame)))
            if render.mentions(frame, self.conn.nickname) and not self.args.no_bell:
                self.session.output.bell()
                self.session.output.flush()
        elif kind == "system" and event == "history":
            self._oldest_seen(frame)
            for block in render.history(frame, self.conn.nickname, self._elsewhere(frame)):
                self.show(block)
            if frame.get("more") is False:
                self.say("(the beginning of the room's history)")
        elif kind == "system" and event == "search":
            for block in render.search(frame, self.conn.nickname):
                self.show(block)
        elif kind == "system" and event == "rooms" and isinstance(frame.get("rooms"), list):
            for block in render.rooms(frame["rooms"], self.conn.rooms):
                self.show(block)
        elif kind == "system" and event != "undelivered":
            self.show(render.notice(frame, self._elsewhere(frame)))

    def _oldest_seen(self, frame: dict) -> None:
        """Where the next page back begins in the frame's room: its oldest message's
        uuid, else its time (the join's history frame carries no uuids)."""
        entries = frame.get("messages")
        room = frame["room"] if isinstance(frame.get("room"), str) else self.current
        if isinstance(entries, list) and entries and isinstance(entries[0], dict):
            first = entries[0]
            mark = first.get("uuid") or first.get("time")
            if isinstance(mark, str):
                self.oldest[room] = mark

    def page_back(self, count: int | None = None) -> None:
        """The page of the current room's history before the oldest message shown."""
        fields: dict[str, Any] = {"before": self.oldest[self.current]} \
            if self.current in self.oldest else {}
        if count:
            fields["limit"] = count
        self.outbox.put(Outgoing(request="history", room=self.current or None, fields=fields))

    def _elsewhere(self, frame: dict) -> str | None:
        """The room a frame is from, when it is not the current one (shown with it)."""
        room = frame.get("room")
        return room if isinstance(room, str) and room != self.current else None

    def _end(self, why: str) -> None:
        self.lost = why
        self.stop.set()
        self.outbox.put(None)
        app = self.session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    # --- sender thread: paced under the flood limit, never dropping a line

    def send(self) -> None:
        rate = self.args.rate
        interval = 1.0 / rate if rate > 0 else 0.0
        next_send = time.monotonic()
        while True:
            item = self.outbox.get()
            if item is None:
                return
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_send = max(next_send, time.monotonic() - 1.0) + interval
            while not self.stop.is_set():
                self.up.wait()
                try:
                    self._send_one(item)
                    break
                except ServerGone:
                    time.sleep(0.1)  # the receiver notices and reconnects; then again
            self.outbox.task_done()

    def _send_one(self, item: Outgoing) -> None:
        conn = self.conn
        if item.request is not None:
            fields = {key: value for key, value in (("nickname", item.nickname),
                                                    ("room", item.room),
                                                    ("topic", item.topic))
                      if value is not None}
            fields.update(item.fields)
            conn.request(item.request, **fields)
            return
        with self._mine_lock:  # a receipt may arrive before send_message returns
            frame_uuid = conn.send_message(item.text, to=item.to, action=item.action,
                                           room=item.room)
            self.mine[frame_uuid] = item.text

    # --- the prompt

    def _exit_if_lost(self) -> None:
        # The chat may have ended before this prompt started: the receiver found
        # no running app to stop, so the prompt stops itself.
        if self.lost:
            self.session.app.exit(exception=EOFError())

    def loop(self) -> int:
        threading.Thread(target=self.receive, daemon=True).start()
        threading.Thread(target=self.send, daemon=True).start()
        while True:
            try:
                text = self.session.prompt(self.prompt, pre_run=self._exit_if_lost,
                                           bottom_toolbar=self.status)
            except KeyboardInterrupt:
                break
            except EOFError:
                break
            if self.lost:
                break
            if self.command(text):
                break
        self.stop.set()
        self.outbox.put(None)
        if self.lost:
            print(f"tcpchat-client: {self.lost}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    def command(self, text: str) -> bool:
        """Act on one typed line; True when it was /quit."""
        if not text.strip():
            return False
        if not text.startswith("/") or text.startswith("//"):
            self.outbox.put(Outgoing(text[1:] if text.startswith("//") else text,
                                     room=self.current or None))
            return False
        word, _, rest = text.partition(" ")
        rest = rest.strip()
        if word in NEEDS and NEEDS[word] not in self.conn.features:
            self.say(f"{word} is not offered by this server (it announced no "
                     f"'{NEEDS[word]}' feature); nothing was sent")
            return False
        if word == "/quit":
            if rest:
                self.outbox.put(Outgoing(rest))
                deadline = time.monotonic() + QUIT_GRACE
                while self.outbox.unfinished_tasks and time.monotonic() < deadline:
                    time.sleep(0.02)
            return True
        if word == "/help":
            self.say(HELP)
        elif word == "/who":
            self.outbox.put(Outgoing(request="who", room=self.current or None))
        elif word == "/me" and rest:
            self.outbox.put(Outgoing(rest, action=True, room=self.current or None))
        elif word == "/join" and rest and " " not in rest:
            known = self.conn.room_of(rest)
            if known is not None:  # in it already: just talk there
                self.switch(known)
                self.say(f"now talking in #{known}")
            else:
                self.outbox.put(Outgoing(request="join", room=rest))
        elif word == "/part":
            self.outbox.put(Outgoing(request="part", room=rest or self.current))
        elif word == "/room" and rest:
            known = self.conn.room_of(rest)
            if known is None:
                self.say(f"you are not in #{rest.lstrip('#')}: /join it first")
            else:
                self.switch(known)
                self.say(f"now talking in #{known}")
        elif word == "/room":
            self.say("your rooms: " + ", ".join(
                f"#{room}" + (f" ({self.unread[room]} unread)" if self.unread.get(room)
                              else "") + (" (current)" if room == self.current else "")
                for room in self.conn.rooms))
        elif word == "/rooms":
            self.outbox.put(Outgoing(request="rooms"))
        elif word == "/topic":
            self.outbox.put(Outgoing(request="topic", room=self.current,
                                     topic=rest or None))
        elif word == "/msg" and len(rest.split(" ", 1)) == 2:
            nickname, message = rest.split(" ", 1)
            self.outbox.put(Outgoing(message, to=nickname))
        elif word == "/nick" and rest and " " not in rest:
            self.outbox.put(Outgoing(request="nick", nickname=rest))
        elif word == "/history" and (not rest or rest.isdigit() and int(rest) > 0):
            self.page_back(int(rest) if rest else None)
        elif word == "/search" and rest:
            self.outbox.put(Outgoing(request="search", room=self.current or None,
                                     fields={"words": rest}))
        elif word == "/login" and rest and " " not in rest:
            password = self.session.prompt(f"password for {rest}: ", is_password=True)
            self.outbox.put(Outgoing(request="login", fields={"account": rest,
                                                              "password": password}))
        elif word == "/kick" and rest:
            nickname, _, reason = rest.partition(" ")
            self.outbox.put(Outgoing(request="kick", nickname=nickname,
                                     room=self.current or None,
                                     fields={"reason": reason} if reason.strip() else {}))
        elif word == "/ban" and rest:
            target, _, more = rest.partition(" ")
            first, _, after = more.strip().partition(" ")
            fields = {"target": target}
            if DURATION.match(first):
                fields["duration"], more = first, after
            if more.strip():
                fields["reason"] = more.strip()
            self.outbox.put(Outgoing(request="ban", fields=fields))
        elif word == "/unban" and rest and " " not in rest:
            self.outbox.put(Outgoing(request="unban", fields={"target": rest}))
        elif word in USAGE:
            self.say(f"usage: {USAGE[word]}")
        else:
            self.say(f"unknown command {word}; /help lists them (//text sends /text)")
        return False


def key_bindings(page_up: Callable[[], None] = lambda: None) -> KeyBindings:
    """Alt+Enter (Esc then Enter) adds a new line to the message; Enter sends it; Page Up
    asks for the page of history before what is shown."""
    bindings = KeyBindings()

    @bindings.add("pageup")
    def _page_up(event) -> None:
        page_up()

    @bindings.add("escape", "enter")
    def _new_line(event) -> None:
        event.current_buffer.insert_text("\n")
    return bindings


def colour_wanted() -> bool:
    """Colours unless NO_COLOR is set (no-color.org) or the output is not a terminal."""
    return not os.environ.get("NO_COLOR") and sys.stdout.isatty()


def run_interactive(args: argparse.Namespace) -> int:
    shown: list[Terminal] = []  # the terminal, once there is one (Page Up before: nothing)
    session: PromptSession = PromptSession(key_bindings=key_bindings(
        lambda: shown[0].page_back() if shown else None))
    first = [None if args.account else args.nick]  # (an account's: see join_interactively)

    def ask() -> str:
        if first[0]:
            nick, first[0] = first[0], None
            return nick
        while True:
            nick = session.prompt("Choose your nickname: ").strip()
            if nick:
                return nick

    try:  # the nickname first, then the connection: no server clock runs at the prompt
        conn = join_interactively(
            args, ask, lambda reason: print(f"Nickname rejected: {reason}", flush=True))
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        return EXIT_OK
    account = f", logged in to {conn.account}" + ("" if conn.role == "user" else
                                                 f" ({conn.role})") if conn.account else ""
    print(f"Joined as {conn.nickname}{account}{' (TLS)' if args.tls else ''}. Type "
          "messages; /help "
          "lists commands; Alt+Enter starts a new line; /quit, Ctrl-D or Ctrl-C leaves.",
          flush=True)
    if args.room:
        try:
            conn.enter(args.room)
        except ServerGone as exc:
            conn.close()
            print(f"tcpchat-client: {exc}", file=sys.stderr)
            return EXIT_FAILED
    terminal = Terminal(conn, session, args, colour_wanted())
    shown.append(terminal)
    if args.room:
        terminal.current = conn.room_of(args.room) or terminal.current
    session.completer = NicknameCompleter(terminal)
    try:
        with patch_stdout(raw=True):
            return terminal.loop()
    finally:
        terminal.conn.close()


__all__ = ["run_interactive", "Terminal", "connect_and_join"]
