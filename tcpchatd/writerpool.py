"""The broadcast log and the writer pool: the one thread that sends to every client.

See outbox.py for the design: a broadcast is appended once to the log, each client's
Outbox holds its cursor into it and its own frames, and this thread sends each client
what is new for it in one system call per round.
"""

from __future__ import annotations

import os
import select
import threading
import time

from .outbox import Outbox


class BroadcastLog:
    """Frames published to every subscriber, by position; trimmed once all have sent them.

    Appended under the pool's lock; read and trimmed only by the pool thread.
    """

    def __init__(self) -> None:
        self.base = 0          # position of frames[0]
        self.end = 0           # position after the last frame
        self.frames: list[bytes] = []
        self.senders: list[Outbox | None] = []  # who published it (does not receive it)
        self.offsets: list[int] = []  # bytes published before each frame
        self.total = 0         # bytes published in all
        self.chats: list[int] = []  # chat frames published before each frame
        self.chat_total = 0

    def append(self, frame: bytes, sender: Outbox | None, chat: bool) -> None:
        self.frames.append(frame)
        self.senders.append(sender)
        self.offsets.append(self.total)
        self.chats.append(self.chat_total)
        self.total += len(frame)
        self.chat_total += chat
        self.end += 1  # last: a reader of `end` finds the frame in place

    def trim(self, keep_from: int) -> None:
        cut = keep_from - self.base
        if cut > 0:
            del self.frames[:cut], self.senders[:cut], self.offsets[:cut], self.chats[:cut]
            self.base = keep_from


class WriterPool:
    """The broadcast log and the one thread that sends to every client.

    Producers only append: a broadcast to the log (under the room's lock, so the log's
    order and its subscribers are the room's), a private frame to one Outbox. The
    pool wakes when it was idle, sends each client what is new for it in one system
    call (ngircd does the same in its event loop), and trims the log behind the
    slowest client.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._waiting: dict[int, Outbox] = {}
        self._ready: list[Outbox] = []
        self._subscribers: dict[Outbox, None] = {}
        self._holders: set[Outbox] = set()  # behind the log's end outside of rounds
        self._log = BroadcastLog()
        self._sleeping = False  # the pool thread is (about to be) blocked in epoll
        self._must_wake = False
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="writer pool", daemon=True)
        self._chunks: dict[tuple[int, int], tuple[bytes, set]] = {}  # this round's joins
        self.heartbeat = 0.0

    @property
    def end(self) -> int:
        return self._log.end

    def start(self) -> None:
        self._thread.start()

    # --- the room's channel (called under the room's lock: no system call here)

    def subscribe(self, member) -> None:
        outbox = member.outbox
        with self._lock:
            outbox.subscribe(self._log.end, self._log.chat_total)
            self._subscribers[outbox] = None

    def unsubscribe(self, member) -> None:
        outbox = member.outbox
        with self._lock:
            self._subscribers.pop(outbox, None)
            outbox.stop_broadcasts()
            self._holders.add(outbox)  # what it has not been sent yet stays in the log
            self._ready.append(outbox)
            self._note_work()

    def publish(self, frame: bytes, sender=None, chat: bool = False) -> None:
        """Queue a frame for every subscriber except the sender's."""
        outbox = sender.outbox if sender is not None else None
        with self._lock:
            if outbox is not None and chat:
                outbox.own_chats += 1
            self._log.append(frame, outbox, chat)
            self._note_work()

    def notify(self) -> None:
        """After the room's lock is released: wake the pool if a publish found it idle."""
        if self._must_wake:
            with self._lock:
                wake, self._must_wake = self._must_wake, False
            if wake:
                self._wake()

    # --- for outboxes

    def schedule(self, outbox: Outbox) -> None:
        """Have the pool drain this outbox soon.

        It wakes the pool itself rather than through _note_work() and notify(): that way
        measured two to five times the CPU per delivery (see the review commit).
        """
        with self._lock:
            self._ready.append(outbox)
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._wake()

    def chat_count(self, until: int | None) -> int:
        log = self._log
        if until is None or until >= log.end:
            return log.chat_total
        return log.chats[max(0, until - log.base)]

    def bytes_after(self, cursor: int, until: int | None) -> int:
        log = self._log
        stop = log.end if until is None else min(until, log.end)
        if cursor >= stop:
            return 0
        stop_bytes = log.total if stop == log.end else log.offsets[stop - log.base]
        return stop_bytes - log.offsets[cursor - log.base]

    def chunk(self, outbox: Outbox, start: int, stop: int) -> bytes:
        """The broadcast frames [start, stop) for this outbox: all but its own."""
        log = self._log
        first, last = start - log.base, stop - log.base
        cached = self._chunks.get((start, stop))
        if cached is None:
            cached = (b"".join(log.frames[first:last]), set(log.senders[first:last]))
            self._chunks[(start, stop)] = cached
        if outbox not in cached[1]:
            return cached[0]
        return b"".join(frame for frame, sender in zip(log.frames[first:last],
                                                       log.senders[first:last])
                        if sender is not outbox)

    def wait_writable(self, outbox: Outbox) -> None:
        fd = outbox.sock.fileno()
        if fd < 0:
            return
        with self._lock:
            known = fd in self._waiting
            self._waiting[fd] = outbox
            self._holders.add(outbox)
        mask = select.EPOLLOUT | select.EPOLLONESHOT
        try:
            if known:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.register(fd, mask)
        except OSError:
            outbox.kill()

    def drop_holder(self, outbox: Outbox) -> None:
        if outbox in self._holders:  # the common case, no lock: not a holder
            with self._lock:
                self._holders.discard(outbox)

    def forget(self, outbox: Outbox) -> None:
        """Before the socket is closed: its fd number may soon belong to another client."""
        fd = outbox.sock.fileno()
        with self._lock:
            self._subscribers.pop(outbox, None)
            self._holders.discard(outbox)
            if self._waiting.get(fd) is outbox:
                del self._waiting[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    # --- the pool thread

    def _note_work(self) -> None:
        """Under the lock: there is work; wake the pool (later, in notify) if it sleeps."""
        if self._sleeping:
            self._sleeping = False
            self._must_wake = True

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _run(self) -> None:
        round_end = 0
        while not self._stopping:
            self.heartbeat = time.monotonic()
            with self._lock:
                ready, self._ready = self._ready, []
                fresh = self._log.end != round_end
                round_end = self._log.end
                members = list(self._subscribers) if fresh else []
                self._sleeping = not ready and not fresh
            self._chunks.clear()
            for outbox in members:
                if not outbox.waiting:
                    outbox.drain()
            for outbox in ready:
                outbox.drain()
            self._chunks.clear()
            if fresh or ready:
                self._settle_holders(round_end)
            try:
                events = self._epoll.poll(0.5 if self._sleeping else 0)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed
            for fd, _ in events:
                if fd == self._wake_read:
                    try:
                        os.read(self._wake_read, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    outbox = self._waiting.get(fd)
                if outbox is not None:
                    outbox.writable()

    def _settle_holders(self, round_end: int) -> None:
        """Disconnect clients whose backlog is over the bound; trim the log behind the rest."""
        with self._lock:
            holders = list(self._holders)
        over = [outbox for outbox in holders if outbox.backlog() > outbox.limit()]
        for outbox in over:
            outbox.on_overflow()
        with self._lock:
            keep = min([round_end] + [outbox.cursor for outbox in self._holders])
            self._log.trim(keep)

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(1.0)
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
