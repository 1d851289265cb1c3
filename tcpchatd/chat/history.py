"""A room's recent history: the last public messages, shown to a joiner in one frame.

Kept in memory (a node of a cluster takes its own from the cluster's stream at start).
The frame is built once for every joiner until the next public message. Not thread-safe
on its own: the hall calls it under its lock.
"""

from __future__ import annotations

from collections import deque

from ..wire import protocol

# (nickname, time, text as recipients saw it[, uuid]): seeds from the stream have no uuid
Entry = tuple[str, ...]


class History:
    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self._frame: tuple[bytes | None, int] | None = None  # built for the settings below
        self._built_for: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self._entries)

    def remember(self, entry: Entry, keep: int) -> None:
        """A public message; at most `keep` are kept (0: history is off)."""
        if not keep:
            return
        self._entries.append(entry)
        while len(self._entries) > keep:
            self._entries.popleft()
        self._frame = None

    def frame(self, count: int, max_bytes: int,
              room: str | None = None) -> tuple[bytes | None, int]:
        """(the history frame of the last `count` messages within max_bytes, how many it
        holds); (None, 0) when there is none."""
        if self._frame is None or self._built_for != (count, max_bytes):
            entries = list(self._entries)[-count:] if count else []
            self._frame = protocol.history_frame(entries, max_bytes, room)
            self._built_for = (count, max_bytes)
        return self._frame

    def seed(self, entries: list[Entry], keep: int) -> None:
        """The stream's last public messages, for a node that starts empty."""
        if not self._entries:
            for entry in entries:
                self.remember(entry, keep)

    def export(self) -> list[list[str]]:
        return [list(entry) for entry in self._entries]

    def restore(self, rows: list) -> None:
        self._entries = deque(tuple(row) for row in rows)
        self._frame = None
