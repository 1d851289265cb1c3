"""The traffic log: one `EVENT key=value ...` line per event, sent to syslog.

Callers never wait on syslog: `event()` puts the event on a bounded queue and
returns; one writer thread formats and sends the lines. When syslog is slow,
absent or restarting, the writer holds its line and retries, the queue fills,
and events beyond its bound are dropped and counted; a `log_dropped count=N`
line follows as soon as syslog takes lines again.

Imports nothing of the package but console.py, the one way to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import socket
import threading
from typing import TYPE_CHECKING, Any, TextIO

from . import console

if TYPE_CHECKING:
    import regex

MAX_LINE = 8000  # rsyslog's default message limit is 8 KiB, header included
FACILITIES = {
    "user": 1, "daemon": 3, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
SEVERITY_INFO = 6

# The events of the chat itself: while the queue is full of anything else (a client's
# protocol errors, say), these are kept and the oldest other line is dropped instead.
CHAT_EVENTS = frozenset({"join", "leave", "message", "delivery", "undelivered", "kick"})

_BARE = re.compile(r"[A-Za-z0-9._:@/+-]+\Z")
# JSON leaves these unescaped with ensure_ascii=False; none may reach the log: controls,
# bidi and other format characters, zero-width and other invisible ones, line and
# paragraph separators, lone surrogates, unassigned code points.
# ASCII holds only one of them, DEL (JSON escapes the others): plain ASCII text needs
# no `regex`, which is imported at the first line that does (not with the module: the
# new image of a hitless upgrade would import it during its clients' pause).
_UNSAFE = (r"[\p{Cc}\p{Cf}\p{Cs}\p{Cn}\p{Zl}\p{Zp}"
           r"\p{Default_Ignorable_Code_Point}]")
_STOP = object()
# json.dumps(text, ensure_ascii=False) without making an encoder at every call (1 µs)
_quote = json.JSONEncoder(ensure_ascii=False).encode


@functools.cache
def _unsafe() -> regex.Pattern:
    import regex
    return regex.compile(_UNSAFE)


def _escape(match: regex.Match) -> str:
    return _escaped(match.group())


@functools.lru_cache(maxsize=4096)
def _escaped(char: str) -> str:
    return json.dumps(char)[1:-1]  # \u escapes; a surrogate pair beyond the BMP


def format_value(value: Any) -> str:
    """A value bare when it is safe, else as a JSON string with every control char escaped."""
    if isinstance(value, int):  # a count: digits (a bool: True, False), always bare
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if _BARE.match(text):
        return text
    quoted = _quote(text)
    if quoted.isascii() and "\x7f" not in quoted:
        return quoted
    return _unsafe().sub(_escape, quoted)


# One character of a JSON string as format_value writes it: an escaped surrogate pair (a
# character beyond the BMP made visible), another escape, or a character as it is.
_QUOTED_TOKEN = re.compile(r'\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|\\u[0-9a-fA-F]{4}|\\.|.',
                           re.DOTALL)


def format_line(event: str, fields: dict[str, Any], limit: int = MAX_LINE) -> str:
    """`EVENT k=v ...`, cut to `limit` bytes by shortening the longest value (and saying
    `truncated=yes`). The value is cut to what could fit before it is formatted, and the
    formatted value is cut once, between whole escapes: a line of 64 KiB of hostile text
    costs two formats, not one per step of a search."""
    # a value of more characters than the line's bytes cannot fit: capped before it is
    # formatted (a hostile 64 KiB value costs what 8,000 characters cost)
    parts = {key: format_value(value[:limit + 1] if isinstance(value, str) else value)
             for key, value in fields.items() if value is not None}
    line = _join(event, parts)
    if len(line) <= limit // 4 or len(line.encode("utf-8")) <= limit:  # (4 bytes at most
        return line                                                  # a character)
    longest = max(parts, key=lambda key: len(parts[key]))
    parts["truncated"] = "yes"
    parts[longest] = ""
    budget = limit - len(_join(event, parts).encode("utf-8"))
    raw = fields[longest] if isinstance(fields[longest], str) else str(fields[longest])
    shown = format_value(raw[:max(budget, 0)])  # no character is shorter than one byte
    parts[longest] = shown if len(shown.encode("utf-8")) <= budget else _cut_quoted(
        shown, budget)
    return _join(event, parts)


def _cut_quoted(shown: str, budget: int) -> str:
    """A formatted value cut to `budget` bytes: a bare one anywhere, a quoted one between
    whole escapes (so it parses back), with its closing quote."""
    if not shown.startswith('"'):
        return shown[:budget]
    room, kept = budget - 2, []
    for token in _QUOTED_TOKEN.finditer(shown, 1, len(shown) - 1):
        room -= len(token.group().encode("utf-8"))
        if room < 0:
            break
        kept.append(token.group())
    return '"' + "".join(kept) + '"'


def _join(event: str, parts: dict[str, str]) -> str:
    return " ".join([event, *[f"{key}={value}" for key, value in parts.items()]])


class TrafficLog:
    """Asynchronous event log to a syslog socket (or stderr)."""

    def __init__(self, target: str = "syslog", address: str = "/dev/log",
                 facility: str = "local6", queue_size: int = 10_000,
                 ident: str = "tcpchatd", stderr: TextIO | None = None,
                 gather: float = 0.0) -> None:
        self.target = target
        self.address = address
        self.facility = facility
        self.queue_size = queue_size
        self.gather = gather
        self.ident = ident
        self._stderr = stderr  # None: the process's stderr, through console.py
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sock: socket.socket | None = None
        self._connected_address: str | None = None
        self._drop_lock = threading.Lock()
        self.dropped = 0            # every event ever dropped (stats)
        self._unreported = 0        # dropped since the last log_dropped line
        self._others_queued = 0     # lines queued that are not CHAT_EVENTS
        self._others_to_drop = 0    # of those, how many the writer drops (see event)
        self._stopping = threading.Event()
        self._hurry = threading.Event()  # set when closing: no more gathering
        self._thread: threading.Thread | None = None
        self._current: tuple | None = None  # the event the writer holds until it is sent
        self._tag = f"{ident}[{os.getpid()}]: "

    def reconfigure(self, target: str, address: str, facility: str, queue_size: int,
                    gather: float) -> None:
        """Apply new log settings (reload); the writer reconnects when the address changed."""
        self.target, self.address = target, address
        self.facility, self.queue_size, self.gather = facility, queue_size, gather

    def start(self) -> None:
        """Start the writer; warn once on stderr when syslog cannot be reached now."""
        self._tag = f"{self.ident}[{os.getpid()}]: "
        if self.target == "syslog" and not self._connect():
            console.say(f"tcpchatd: warning: syslog at {self.address} cannot be reached; "
                        "the chat runs on and log lines wait for it (dropped beyond the queue)")
        self._thread = threading.Thread(target=self._run, name="trafficlog", daemon=True)
        self._thread.start()

    def event(self, name: str, **fields: Any) -> None:
        """Queue one event; never blocks. Over the bound an event is dropped and counted:
        the new one, unless it is a chat event and other lines wait, of which the oldest
        is dropped instead (so the chat is never what a flood of errors pushes out)."""
        chat = name in CHAT_EVENTS
        if self._queue.qsize() >= self.queue_size:
            with self._drop_lock:
                if not chat or self._others_queued <= self._others_to_drop:
                    self.dropped += 1
                    self._unreported += 1
                    return
                self._others_to_drop += 1
        if not chat:
            with self._drop_lock:
                self._others_queued += 1
        self._queue.put((name, fields))

    def hand_over(self, timeout: float) -> list:
        """Write what is queued for at most `timeout` seconds, stop, and return the
        events still waiting, the one the writer held first (an upgrade's new image
        logs them first)."""
        self._queue.put(_STOP)
        self._hurry.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        left = [list(self._current)] if self._current is not None else []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            if item is not _STOP:
                left.append(list(item))

    def close(self, timeout: float = 1.0) -> int:
        """Flush what is queued for at most `timeout` seconds, then stop the writer; the
        number of lines that syslog did not take in that time (counted as dropped)."""
        self._queue.put(_STOP)
        self._hurry.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)  # a send in progress times out within 1 s
        if self._sock is not None:
            self._sock.close()
        unwritten = 1 if self._current is not None else 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            unwritten += item is not _STOP
        with self._drop_lock:
            self.dropped += unwritten
        return unwritten

    # --- writer thread

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = self._queue.get()
                if item is not _STOP and self.gather:
                    # Idle until now: the events of the next `gather` seconds come along
                    # before anything is written. Each wake-up of this thread takes the
                    # interpreter's lock from the event loop, and at 400 messages a
                    # second (two lines each) a wake-up per line kept the loop waiting
                    # for a thread the busy cores had not run yet (BENCHMARKS.md, "p99
                    # on an independent generator"). The event is held meanwhile, so an
                    # upgrade's hand_over still finds it; closing cuts the wait short.
                    self._current = item
                    self._hurry.wait(self.gather)
            if item is _STOP:
                return
            name, fields = item
            if name not in CHAT_EVENTS:
                with self._drop_lock:
                    self._others_queued -= 1
                    if self._others_to_drop:  # a chat event took its place
                        self._others_to_drop -= 1
                        self.dropped += 1
                        self._unreported += 1
                        self._current = None
                        continue
            self._current = item
            if not self._deliver(format_line(name, fields)):
                return  # stopped while syslog was away: _current was not written
            self._current = None
            if self._unreported:
                with self._drop_lock:
                    count, self._unreported = self._unreported, 0
                self._deliver(format_line("log_dropped", {"count": count}))

    def _deliver(self, line: str) -> bool:
        """Send one line, retrying with backoff until it goes or the log is closed."""
        backoff = 0.05
        while not self._stopping.is_set():
            if self._emit(line):
                return True
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 1.0)
        return False

    def _emit(self, line: str) -> bool:
        if self.target == "stderr":
            try:
                console.write(line, self._stderr)
                return True
            except (OSError, ValueError):
                return False
        if self._connected_address != self.address and not self._connect():
            return False
        priority = FACILITIES[self.facility] * 8 + SEVERITY_INFO
        data = f"<{priority}>{self._tag}{line}".encode("utf-8", "replace")
        if self._sock is None:
            return False
        try:
            self._sock.send(data)
            return True
        except OSError:
            self._disconnect()
            return False

    def _connect(self) -> bool:
        self._disconnect()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(1.0)  # a stuck syslog delays only this thread, and never forever
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            return False
        self._sock, self._connected_address = sock, self.address
        return True

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._connected_address = None, None
