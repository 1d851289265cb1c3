"""Frames on their way to clients: one broadcast log, one queue per client, one sender thread.

A broadcast (a chat message, a join or leave notice, an announcement) is appended ONCE
to the pool's log, whatever the number of recipients; every subscribed client has a
cursor into that log. Frames for one client alone (receipts, errors, the kick notice)
go into its own Outbox, each marked with the log position it follows, so a client
sees everything in the order it happened.

The WriterPool's one thread does all the sending. In a round it sends every client
what is new for it in one non-blocking send (MSG_DONTWAIT: the socket itself stays
blocking for its reader thread). Clients that are caught up share one joined chunk,
so a round over N clients joins the new frames once, not N times. Whatever the kernel
does not take waits, per client, until epoll says there is room; a client whose
backlog passes `send_queue` bytes is disconnected. No producer ever waits on a socket
or loops over the recipients.

Why not a writer thread per client, or a frame queue per client: measured with 200
clients, waking 199 writer threads per message made thread switches the main cost of
a delivery, and putting each frame into 199 queues made the sending thread loop over
the recipients under load (see BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
from typing import Callable

SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class Outbox:
    """One client's way out: its cursor into the broadcast log and its private frames.

    Only the pool thread sends and moves the cursor; any thread may put a frame.
    """

    def __init__(self, sock: socket.socket, pool: "WriterPool",
                 limit: Callable[[], int], on_overflow: Callable[[], None]) -> None:
        self.sock = sock
        self.pool = pool
        self.limit = limit              # the send_queue setting now (it may be reloaded)
        self.on_overflow = on_overflow  # called by the pool thread, no lock held
        self._lock = threading.Lock()
        self._private: collections.deque[tuple[int, bytes]] = collections.deque()
        self.private_bytes = 0
        # the next broadcast frame (log position) to send, and where broadcasts stop for
        # this client: it receives none before it joins (subscribes) or after it leaves
        self.cursor = pool.end
        self.until: int | None = self.cursor
        self.partial = b""        # what the kernel did not take of the last send
        self.chat_base = 0        # chat broadcasts before this client subscribed
        self.own_chats = 0        # chat broadcasts this client published
        self.waiting = False      # registered in epoll for room to write (pool thread)
        self._scheduled = False   # on the pool's ready list
        self._sending = False     # the pool thread is inside send() on this socket
        self._closing = False     # shut the socket down once everything is sent
        self._dead = False        # the socket failed or was shut down: drop everything
        self._released = False    # the session is over: close the socket when not sending

    @property
    def chat_frames(self) -> int:
        """Chat messages queued for this client (the `received` of `tcpchatctl who`)."""
        return self.pool.chat_count(self.until) - self.chat_base - self.own_chats

    def put(self, frame: bytes) -> bool:
        """Queue a frame for this client alone; False when that passes the bound."""
        with self._lock:
            if self._dead or self._closing:
                return True
            if self.private_bytes + len(self.partial) + len(frame) > self.limit():
                return False
            self._private.append((self.pool.end, frame))
            self.private_bytes += len(frame)
            if self._scheduled:
                return True
            self._scheduled = True
        self.pool.schedule(self)
        return True

    def finish(self, final_frame: bytes | None = None, drop: bool = False) -> None:
        """Send what is queued (and final_frame, the last thing), then shut the socket down."""
        with self._lock:
            if self._dead:
                return
            end = self.pool.end
            if drop:
                self._private.clear()
                self.private_bytes = 0
                self.cursor = max(self.cursor, end)
            if final_frame is not None:
                self._private.append((end, final_frame))
                self.private_bytes += len(final_frame)
            self.until = end if self.until is None else min(self.until, end)
            self._closing = True
            if self._scheduled:
                return
            self._scheduled = True
        self.pool.schedule(self)

    def subscribe(self, position: int, chat_base: int) -> None:
        """Broadcast frames from `position` on are for this client too."""
        with self._lock:
            self.cursor, self.until, self.chat_base = position, None, chat_base

    def stop_broadcasts(self) -> None:
        """Unsubscribed: what was published before now still goes out, nothing after."""
        with self._lock:
            if self.until is None:
                self.until = self.pool.end

    @property
    def done(self) -> bool:
        """Nothing is left to send (or nothing can be sent any more)."""
        return self._dead or (not self._private and not self.partial and not self._sending
                              and self.until is not None and self.cursor >= self.until)

    def drain(self) -> None:
        """Send what is due; only the pool thread calls this."""
        pool = self.pool
        with self._lock:
            self._scheduled = False
            waiting = self.waiting
            data = b"" if self._dead or waiting else self._collect(pool)
            if not data:
                finished = self._closing and self.done
                release = self._released and not self._sending
            else:
                self._sending = True
        if not data:
            if not waiting:  # caught up: it holds no place in the log
                pool.drop_holder(self)
            if finished:
                self.shutdown()
            if release:
                self._close_socket()
            return
        try:
            sent = self.sock.send(data, SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer is gone: drop the rest, leave through the reader
            sent = -1
        with self._lock:
            self._sending = False
            if sent < 0:
                self._dead = True
                self._private.clear()
                self.private_bytes = 0
                self.partial = b""
            elif sent < len(data):
                self.partial = data[sent:]
                self.waiting = True
            released = self._released
        if sent < 0 or released:
            pool.drop_holder(self)
            if released:
                self._close_socket()
            return
        if sent < len(data):
            pool.wait_writable(self)
            return
        pool.drop_holder(self)
        if self._closing:
            self.drain()  # nothing more may come: shut down now if all is out

    def _collect(self, pool: "WriterPool") -> bytes:
        """Under the lock: the bytes due now, in order; moves the cursor past them."""
        stop = pool.end if self.until is None else self.until
        parts = [self.partial] if self.partial else []
        self.partial = b""
        for seq, frame in self._private:
            upto = min(seq, stop)
            if upto > self.cursor:  # broadcasts published before this frame go first
                parts.append(pool.chunk(self, self.cursor, upto))
                self.cursor = upto
            parts.append(frame)
        self._private.clear()
        self.private_bytes = 0
        if stop > self.cursor:
            parts.append(pool.chunk(self, self.cursor, stop))
            self.cursor = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def writable(self) -> None:
        """epoll says there is room: send the rest, then whatever came meanwhile."""
        with self._lock:
            self.waiting = False
        self.drain()

    def backlog(self) -> int:
        """Bytes due to this client and not yet taken by the kernel."""
        return self.pool.bytes_after(self.cursor, self.until) + self.private_bytes + len(
            self.partial)

    def wait_sent(self, timeout: float) -> None:
        """Wait (bounded) until the pool has sent what is queued, or the socket died."""
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            time.sleep(0.01)

    def release(self) -> None:
        """The session is over: close the socket now, or when the pool's send returns.

        Closing it under a send would let a new client reuse the fd number and
        receive frames meant for this one.
        """
        with self._lock:
            self._released = self._dead = True
            self._private.clear()
            self.private_bytes = 0
            self.partial = b""
            sending = self._sending
        self.pool.drop_holder(self)
        self.shutdown()
        if not sending:
            self._close_socket()

    def _close_socket(self) -> None:
        self.pool.forget(self)
        self.sock.close()

    def kill(self) -> None:
        """Drop everything and shut the socket down (send failed, or a deadline passed)."""
        with self._lock:
            self._dead = True
            self._private.clear()
            self.private_bytes = 0
            self.partial = b""
        self.pool.drop_holder(self)
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


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
        """Have the pool drain this outbox soon."""
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
        key = (start, stop)
        cached = self._chunks.get(key)
        log = self._log
        if cached is None:
            frames = log.frames[start - log.base:stop - log.base]
            cached = (b"".join(frames),
                      set(log.senders[start - log.base:stop - log.base]))
            self._chunks[key] = cached
        if outbox not in cached[1]:
            return cached[0]
        first = start - log.base
        return b"".join(frame for frame, sender in zip(log.frames[first:stop - log.base],
                                                       log.senders[first:stop - log.base])
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
