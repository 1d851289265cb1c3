"""One client's way out: its cursor into the broadcast log and its own frames.

A broadcast (a chat message, a join or leave notice, an announcement) is appended ONCE
to the pool's log, whatever the number of recipients; every subscribed client has a
cursor into that log. Frames for one client alone (receipts, errors, the kick notice)
go into its own Outbox, each marked with the log position it follows, so a client
sees everything in the order it happened.

The WriterPool's one thread (writerpool.py) does all the sending. In a round it sends every client
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
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .writerpool import WriterPool

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
