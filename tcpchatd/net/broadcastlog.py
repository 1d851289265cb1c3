"""The broadcast log: every frame for the whole room, appended once, read by every loop.

A broadcast (a chat message, a join or leave notice, an announcement) is encoded once
and appended once, whatever the number of recipients: O(1), no system call, under the
room's lock, so every client sees the room's order. Each connection keeps a cursor (a
position) into the log; its event loop sends it what lies between its cursor and the
log's end in one send. The log is trimmed behind the slowest connection.

Positions only grow; `base` is the position of the oldest frame still held.
"""

from __future__ import annotations

import threading
from collections.abc import Set as AbstractSet
from typing import Any

CHUNK_CACHE = 64  # joined ranges kept for connections that ask for the same one
NOTHING_JOINED: tuple = (0, 0, b"", frozenset())  # `latest` before a range is joined


class BroadcastLog:
    """Frames published to every subscriber, by position; thread-safe.

    Caught-up connections ask for the same range [start, stop): it is joined once and
    shared (a broadcast round over N connections joins the new frames once, not N
    times). A frame is never sent to its own sender: that connection gets the range
    without it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.base = 0              # position of _frames[0]
        self.end = 0               # position after the last frame
        self._frames: list[bytes] = []
        self._senders: list[Any] = []   # who published each frame (it does not receive it)
        self._offsets: list[int] = []   # bytes published before each frame
        self._chats: list[int] = []     # chat frames published before each frame
        self.total_bytes = 0
        self.chat_total = 0
        self.base_chats = 0        # chat frames before base (trimmed)
        self._chunks: dict[tuple[int, int], tuple[bytes, set]] = {}
        # The range joined last (start, stop, bytes, senders): what the rest of a round's
        # readers ask for, read by Session._collect without a call (a client in five
        # rooms with news asks five logs a round: the call and the dict cost a quarter
        # of a microsecond each). A range's bytes never change, so an old one is right.
        self.latest: tuple[int, int, bytes, AbstractSet[Any]] = NOTHING_JOINED

    def append(self, frame: bytes, sender: Any = None, chat: bool = False) -> int:
        """Publish a frame; returns its position."""
        with self._lock:
            self._frames.append(frame)
            self._senders.append(sender)
            self._offsets.append(self.total_bytes)
            self._chats.append(self.chat_total)
            self.total_bytes += len(frame)
            self.chat_total += chat
            self.end += 1  # last: a reader of `end` finds the frame in place
            return self.end - 1

    def chunk(self, start: int, stop: int, reader: Any = None) -> bytes:
        """The frames [start, stop) joined, leaving out those `reader` published."""
        # The common case without the lock: a range joined before for another reader
        # (a position's frame never changes, so a cached range stays right; dict.get is
        # atomic). A client in several rooms asks once per room that has news.
        cached = self._chunks.get((start, stop))
        if cached is not None and (reader is None or reader not in cached[1]):
            return cached[0]
        with self._lock:
            if start < self.base or stop > self.end:
                raise IndexError(f"[{start}, {stop}) is not in the log "
                                 f"[{self.base}, {self.end})")
            cached = self._chunks.get((start, stop))
            first, last = start - self.base, stop - self.base
            if cached is None:
                if len(self._chunks) >= CHUNK_CACHE:
                    self._chunks.clear()
                cached = (b"".join(self._frames[first:last]), set(self._senders[first:last]))
                self._chunks[(start, stop)] = cached
                self.latest = (start, stop, *cached)
            if reader is None or reader not in cached[1]:
                return cached[0]
            return b"".join(frame for frame, sender in zip(self._frames[first:last],
                                                           self._senders[first:last],
                                                           strict=True)
                            if sender is not reader)

    def bytes_between(self, start: int, stop: int) -> int:
        """Bytes of the frames [start, stop) (those `start` has not been sent yet)."""
        with self._lock:
            stop = min(stop, self.end)
            if start >= stop:
                return 0
            start = max(start, self.base)
            stop_bytes = self.total_bytes if stop == self.end else \
                self._offsets[stop - self.base]
            return stop_bytes - self._offsets[start - self.base]

    def chats_before(self, position: int | None) -> int:
        """Chat frames published before `position` (None: all of them); for a position
        already trimmed, those before the oldest frame still held."""
        with self._lock:
            if position is None or position >= self.end:
                return self.chat_total
            if position <= self.base:
                return self.base_chats
            return self._chats[position - self.base]

    def trim(self, keep_from: int) -> None:
        """Forget the frames before `keep_from` (every connection has been sent them)."""
        with self._lock:
            cut = min(keep_from, self.end) - self.base
            if cut > 0:
                self.base_chats = self._chats[cut] if cut < len(self._chats) \
                    else self.chat_total
                del self._frames[:cut], self._senders[:cut], self._offsets[:cut], \
                    self._chats[:cut]
                self.base += cut
                self._chunks.clear()
                self.latest = NOTHING_JOINED  # (not to hold a large range's bytes)

    def __len__(self) -> int:
        """Frames held now (published and not yet trimmed)."""
        return self.end - self.base
