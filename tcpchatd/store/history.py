"""History that lasts: every public message in SQLite (`history.sqlite3` in state_dir).

One writer thread owns the writing connection (WAL, synchronous=NORMAL): the chat hands it
messages through a bounded queue and never waits; it writes them in batches, one
transaction each, so what it committed survives a `kill -9` of the daemon (the window is
what is queued: at most WRITE_WAIT seconds of messages, or a batch being written). A
message is written once: its uuid is unique (an `INSERT OR IGNORE`), so the cluster's
nodes may each write what the stream brings, and a replay writes nothing twice.

Search is SQLite's FTS5 over the messages' text (an external-content index kept by
triggers). Words are searched as words: each is quoted, so nothing a person types is
taken for an FTS5 operator (NEAR, OR, `*`, column filters) unless the request asks for
the query syntax. Reads (pages, searches) run on a reader thread with its own
connection, never on an event loop or under the chat's lock.

A disk that fills, a database that is locked or corrupt: the error is logged
(`history_error`), counted (`stats`), the batch is given up, and the chat runs on.
Imports nothing of the chat: rooms and senders are strings here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

FILE_NAME = "history.sqlite3"
WRITE_BATCH = 500     # messages in one transaction at most
WRITE_WAIT = 0.05     # seconds the writer gathers a batch
# Rows in one INSERT statement: 9 columns x 100 = 900 values, under SQLite's oldest limit
# on a statement's parameters (999). The sqlite3 module lets go of the interpreter's lock
# around each step of a statement, and executemany steps once a row: each row made this
# thread take the lock back from the event loop (BENCHMARKS.md, "p99 on an independent
# generator"); a statement of many rows is one step.
ROWS_PER_INSERT = 100
EXPIRE_EVERY = 60.0   # seconds between two passes of retention
BUSY_TIMEOUT = 2.0    # seconds SQLite waits on a lock before it says `locked`

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    room TEXT,              -- the room's key; NULL: a private message
    room_name TEXT,
    sender TEXT NOT NULL,   -- the nickname as shown
    sender_key TEXT NOT NULL,
    account TEXT,           -- the account's key when the sender had logged in
    at REAL NOT NULL,       -- epoch seconds
    text TEXT NOT NULL,
    kind TEXT NOT NULL      -- message, action, announcement
);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id);
-- no index of senders or accounts: each would cost every message a third more of the
-- writer's time, for `forget` alone (a scan of the table on the writer's thread)
-- the room rides along, not indexed: a search of one room walks the matches newest
-- first and stops at its limit, never sorting them all
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    text, room UNINDEXED, content='messages', content_rowid='id', columnsize=0);
-- a batch is indexed in one statement after it is written (a trigger per row cost as
-- much again as the rest of the write); a deletion keeps the index by its trigger
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text, room)
        VALUES ('delete', old.id, old.text, old.room);
END;
"""


class EventLog(Protocol):
    def event(self, name: str, **fields: Any) -> None: ...


class Kept(NamedTuple):
    """One message as history keeps it (a tuple: made cheaply on the chat's hot path, and
    written as it is, in the order of INSERT's columns)."""

    uuid: str
    room: str | None        # the room's key (None: private)
    room_name: str | None
    sender: str
    sender_key: str
    account: str | None
    at: float
    text: str
    kind: str = "message"

    def shown(self) -> dict:
        """As a history page or a search result carries it (the text as the message frame
        showed it: `NICK: text`)."""
        shown = self.text if self.kind == "announcement" else f"{self.sender}: {self.text}"
        return {"uuid": self.uuid, "nickname": self.sender, "time": _iso(self.at),
                "message": shown, "kind": self.kind}


class Forget(NamedTuple):
    """A `forget` for the writer, in the order of the messages."""

    key: str
    done: Future


class HistoryError(Exception):
    """The history database cannot be opened (one line naming the file)."""


def search_query(words: str, raw: bool = False) -> str:
    """FTS5's query for what a person typed: each word quoted (a phrase of one word, `"`
    doubled), all of them required; `raw` passes FTS5's own syntax through."""
    if raw:
        return words
    return " ".join('"' + word.replace('"', '""') + '"' for word in words.split())


class HistoryStore:
    """The database, its writer and its reader. Settings: `days` (0: kept for ever) and
    `per_room` (0: no limit) of retention, `queue_size` messages waiting at most."""

    def __init__(self, state_dir: str, log: EventLog, days: float = 0.0, per_room: int = 0,
                 queue_size: int = 100_000, error_log: Callable[[str], None] = print) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self.state_dir = state_dir
        self.log, self.error_log = log, error_log
        self.days, self.per_room = days, per_room
        # what the writer has to do: a deque the chat appends to (no lock on its side) and
        # an event that wakes the writer when it sleeps
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        self.queue_size = queue_size
        self._thread: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self.written = 0    # messages committed
        self.errors = 0     # failed writes or reads
        self.dropped = 0    # messages the full queue could not take
        self._stop = object()
        self._handing = False  # an upgrade: the writer stops after its batch
        self._last_expiry = time.monotonic()

    # --- opening and closing

    def open(self) -> None:
        """Create or open the database (schema, WAL); HistoryError if it cannot be."""
        try:
            os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
            conn = self._connect()
            conn.executescript(SCHEMA)
            # FTS5 merges its segments less eagerly (8 at a level, not 4): a tenth less of
            # the writer's time, searches as fast (measured at 100,000 messages)
            conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('automerge', 8)")
            conn.execute("PRAGMA quick_check(1)").fetchone()
            conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"the history {self.path} cannot be used: {exc}") from None
        self._thread = threading.Thread(target=self._write_loop, name="history", daemon=True)
        self._thread.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="history-read")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash of
        return conn                                 # the process, fsync at checkpoints

    def hand_over(self, timeout: float = 1.0) -> list[list]:
        """An upgrade: the writer stops after the batch it is writing; what it had not
        taken yet, as rows the new image queues first (nothing is written twice)."""
        self._handing = True
        if self._thread is not None:
            self._items.append(self._stop)
            self._wake.set()
            self._thread.join(timeout)
        rows = [list(item) for item in self._items if isinstance(item, Kept)]
        self._items.clear()
        if self._reader is not None:
            self._reader.shutdown(wait=False)
        return rows

    def take_over(self, rows: list[list]) -> None:
        """The rows the old image handed over, queued before anything new."""
        for row in rows:
            self.put(Kept(*row))

    def close(self, timeout: float = 5.0) -> int:
        """Write what is queued (for at most `timeout` seconds), then stop; the messages
        left unwritten."""
        if self._thread is not None:
            self._items.append(self._stop)
            self._wake.set()
            self._thread.join(timeout)
        left = sum(isinstance(item, Kept) for item in self._items)
        if self._reader is not None:
            self._reader.shutdown(wait=True)
        return left

    # --- writing (the chat's side: never waits)

    def put(self, kept: Kept) -> None:
        if len(self._items) >= self.queue_size:
            self.dropped += 1
            return
        self._items.append(kept)  # (deque.append is atomic)
        if not self._wake.is_set():  # the writer sleeps: the first message wakes it
            self._wake.set()

    def forget(self, key: str) -> Future:
        """Remove every message of the sender whose nickname_key, or account key, is
        `key` (history and search alike); a Future of how many went."""
        future: Future = Future()
        self._items.append(Forget(key, future))
        self._wake.set()
        return future

    def _write_loop(self) -> None:
        conn = self._connect()
        items = self._items
        stopping = False
        while not stopping and not self._handing:
            if not items:
                self._wake.wait(EXPIRE_EVERY)
                self._wake.clear()
                if items and items[-1] is not self._stop:
                    time.sleep(WRITE_WAIT)  # a batch gathers (a commit per message would
                    #                         cost more than its message)
            batch: list = []
            while items and len(batch) < WRITE_BATCH:
                item = items.popleft()
                if item is self._stop:  # (an upgrade's: what follows stays queued)
                    stopping = True
                    break
                batch.append(item)
            messages = [item for item in batch if isinstance(item, Kept)]
            if messages:
                self._write(conn, messages)
            for item in batch:
                if isinstance(item, Forget):
                    self._forget(conn, item.key, item.done)
            if time.monotonic() - self._last_expiry >= EXPIRE_EVERY:
                self.expire(conn)
        conn.close()

    def _write(self, conn: sqlite3.Connection, messages: list[Kept]) -> None:
        try:
            conn.execute("BEGIN")
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
            written = 0
            for start in range(0, len(messages), ROWS_PER_INSERT):
                rows = messages[start:start + ROWS_PER_INSERT]
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO messages ({COLUMNS}) VALUES "
                    + ", ".join([_ROW] * len(rows)), [value for row in rows for value in row])
                written += max(0, cursor.rowcount)
            conn.execute("INSERT INTO messages_fts (rowid, text, room) SELECT id, text, room "
                         "FROM messages WHERE id > ?", (last,))
            conn.execute("COMMIT")
            self.written += written
        except sqlite3.Error as exc:
            self._failed("write", exc, lost=len(messages))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _forget(self, conn: sqlite3.Connection, key: str, future: Future) -> None:
        try:
            cursor = conn.execute("DELETE FROM messages WHERE sender_key = ? OR account = ?",
                                  (key, key))
            future.set_result(cursor.rowcount)
        except sqlite3.Error as exc:
            self._failed("forget", exc)
            future.set_exception(HistoryError(f"history: {exc}"))

    def expire(self, conn: sqlite3.Connection | None = None) -> int:
        """Retention: messages older than `days`, and beyond the newest `per_room` of
        each room; how many went."""
        self._last_expiry = time.monotonic()
        own = conn is None
        conn = conn or self._connect()
        gone = 0
        try:
            if self.days:
                gone += conn.execute("DELETE FROM messages WHERE at < ?",
                                     (time.time() - self.days * 86400,)).rowcount
            if self.per_room:
                rooms = [r for (r,) in conn.execute(
                    "SELECT room FROM messages WHERE room IS NOT NULL GROUP BY room "
                    "HAVING count(*) > ?", (self.per_room,))]
                for room in rooms:
                    gone += conn.execute(
                        "DELETE FROM messages WHERE room = ? AND id <= (SELECT id FROM "
                        "messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (room, room, self.per_room)).rowcount
        except sqlite3.Error as exc:
            self._failed("expire", exc)
        finally:
            if own:
                conn.close()
        if gone:
            self.log.event("history_expired", count=gone)
        return gone

    def _failed(self, what: str, exc: sqlite3.Error, lost: int = 0) -> None:
        self.errors += 1
        self.log.event("history_error", op=what, error=str(exc), lost=lost or None)

    # --- reading (a reader thread of its own)

    def _read(self, job: Callable[[sqlite3.Connection], Any]) -> Future:
        def run() -> Any:
            if self._read_conn is None:
                self._read_conn = self._connect()
            try:
                return job(self._read_conn)
            except sqlite3.Error as exc:
                self._failed("read", exc)
                raise HistoryError(f"history: {exc}") from None
        if self._reader is None:
            future: Future = Future()
            future.set_exception(HistoryError("history is off"))
            return future
        return self._reader.submit(run)

    def page(self, room: str, before: str | None, limit: int) -> Future:
        """A Future of (the `limit` messages of `room` before `before` (a uuid or an ISO
        time; None: the newest), oldest first, and whether older ones remain)."""
        def job(conn: sqlite3.Connection) -> tuple[list[Kept], bool]:
            bound = ""
            args: list[str | float] = [room]
            if before:
                at = parse_time(before)
                if at is None:
                    bound = " AND id < coalesce((SELECT id FROM messages WHERE uuid = ?), -1)"
                else:
                    bound = " AND at < ?"
                args.append(before if at is None else at)
            rows = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE room = ?{bound} "
                                "ORDER BY id DESC LIMIT ?", (*args, limit + 1)).fetchall()
            more = len(rows) > limit
            return [Kept(*row) for row in reversed(rows[:limit])], more
        return self._read(job)

    def search(self, room: str | None, words: str, limit: int, raw: bool = False) -> Future:
        """A Future of the newest `limit` matches (in `room`, or every room), newest first."""
        def job(conn: sqlite3.Connection) -> list[Kept]:
            # FTS5 walks its matches by rowid, newest first, and stops at the limit; the
            # messages are then read by their ids
            query = search_query(words, raw)
            where = "room = ?" if room is not None else "room IS NOT NULL"
            args: tuple = (query, room, limit) if room is not None else (query, limit)
            ids = [rowid for (rowid,) in conn.execute(
                f"SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? AND {where} "
                "ORDER BY rowid DESC LIMIT ?", args)]
            if not ids:
                return []
            rows = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id IN "
                                f"({', '.join('?' * len(ids))}) ORDER BY id DESC",
                                ids).fetchall()
            return [Kept(*row) for row in rows]
        return self._read(job)

    def since(self, room: str, at: float, limit: int) -> Future:
        """A Future of the messages of `room` from `at` on, oldest first (at most limit)."""
        def job(conn: sqlite3.Connection) -> list[Kept]:
            rows = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE room = ? AND at >= ? "
                                "ORDER BY id LIMIT ?", (room, at, limit)).fetchall()
            return [Kept(*row) for row in rows]
        return self._read(job)

    def queued(self) -> int:
        return len(self._items)


COLUMNS = "uuid, room, room_name, sender, sender_key, account, at, text, kind"
_ROW = "(" + ", ".join("?" * len(COLUMNS.split(", "))) + ")"  # one message's values


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + \
        f".{int(moment * 1000) % 1000:03d}Z"


def parse_time(text: str) -> float | None:
    """An ISO 8601 time (UTC, as the frames write it) in epoch seconds; None if `text` is
    not one (then it is a uuid)."""
    from datetime import UTC, datetime
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
