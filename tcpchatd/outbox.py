"""Frames on their way to one client: bounded, sent without ever blocking a caller.

Any thread may put a frame. If nobody is sending to that client, the caller sends at
once with a non-blocking send (MSG_DONTWAIT: the socket itself stays blocking for its
reader thread); whatever the kernel does not take waits in the queue and is handed to
the WriterPool, one epoll thread for every client whose socket is full. So a broadcast
costs one non-blocking send per recipient and no thread wake-up in the common case,
and a client that stops reading costs only its own queue, up to its bound.

Why not a writer thread per client: measured with 200 clients, waking 199 writer
threads per message made thread switches the main cost of a delivery (see BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading


class Outbox:
    """One client's outbound queue; at most one thread sends at a time (the `busy` one)."""

    def __init__(self, sock: socket.socket, pool: "WriterPool") -> None:
        self.sock = sock
        self.pool = pool
        self._lock = threading.Lock()
        self._frames: collections.deque[bytes] = collections.deque()
        self.queued = 0          # bytes queued, including a partly sent frame
        self._busy = False       # a thread is sending, or the pool waits for room
        self._closing = False    # shut the socket down once the queue is empty
        self._dead = False       # the socket failed or was shut down: drop everything
        self._released = False   # the session is over: close the socket when not busy
        self.chat_frames = 0     # chat messages queued for this client (`who` received)

    def put(self, frame: bytes, limit: int, chat: bool = False) -> bool:
        """Queue a frame and send what can go now; False when over `limit` bytes."""
        with self._lock:
            if self._dead or self._closing:
                return True
            if self.queued + len(frame) > limit:
                return False
            self._frames.append(frame)
            self.queued += len(frame)
            if chat:
                self.chat_frames += 1
            if self._busy:
                return True  # the sending thread (or the pool) takes it along
            self._busy = True
        self.drain()
        return True

    def finish(self, final_frame: bytes | None = None, drop: bool = False) -> None:
        """Send what is queued (and final_frame), then shut the socket down."""
        with self._lock:
            if self._dead:
                return
            if drop:
                self._frames.clear()
                self.queued = 0
            if final_frame is not None:
                self._frames.append(final_frame)
                self.queued += len(final_frame)
            self._closing = True
            if self._busy:
                return
            self._busy = True
        self.drain()

    def drain(self) -> None:
        """Send until the queue is empty or the kernel is full; only the busy thread calls it."""
        while True:
            with self._lock:
                if not self._frames or self._dead:
                    self._busy = False
                    shut = self._closing or self._dead
                    release = self._released
                    break
                data = self._frames[0] if len(self._frames) == 1 else b"".join(self._frames)
                self._frames.clear()
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the peer is gone: drop the rest, leave through the top
                with self._lock:
                    self._dead = True
                    self._frames.clear()
                    self.queued = 0
                continue
            with self._lock:
                self.queued -= sent
                if sent < len(data):
                    self._frames.appendleft(data[sent:])
                    full = True
                else:
                    full = False
            if full:
                self.pool.wait_writable(self)  # still busy: the pool drains it later
                return
        if shut:
            self.shutdown()
        if release:
            self._close_socket()

    def release(self) -> None:
        """The session is over: close the socket now, or when the busy sender is done.

        Closing it under a sender would let a new client reuse the fd number and
        receive frames meant for this one.
        """
        with self._lock:
            self._released = self._dead = True
            self._frames.clear()
            self.queued = 0
            busy = self._busy
        self.shutdown()
        if not busy:
            self._close_socket()

    def _close_socket(self) -> None:
        self.pool.forget(self)
        self.sock.close()

    def kill(self) -> None:
        """Drop everything and shut the socket down (send failed, or a deadline passed)."""
        with self._lock:
            self._dead = True
            self._frames.clear()
            self.queued = 0
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class WriterPool:
    """One thread that finishes sends for clients whose socket buffer was full."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._waiting: dict[int, Outbox] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="writer pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_writable(self, outbox: Outbox) -> None:
        fd = outbox.sock.fileno()
        if fd < 0:
            return
        with self._lock:
            known = fd in self._waiting
            self._waiting[fd] = outbox
        mask = select.EPOLLOUT | select.EPOLLONESHOT
        try:
            if known:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.register(fd, mask)
        except OSError:
            outbox.kill()
            outbox.drain()  # the caller was the busy sender: finish (and maybe close) now

    def forget(self, outbox: Outbox) -> None:
        """Before the socket is closed: its fd number may soon belong to another client."""
        fd = outbox.sock.fileno()
        with self._lock:
            if self._waiting.get(fd) is outbox:
                del self._waiting[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def _run(self) -> None:
        while not self._stopping:
            try:
                events = self._epoll.poll(0.5)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed
            for fd, _ in events:
                with self._lock:
                    outbox = self._waiting.get(fd)
                if outbox is not None:
                    outbox.drain()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        self._thread.join(1.0)
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
