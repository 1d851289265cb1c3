"""Frames on their way to one client: bounded, sent without ever blocking a caller.

Any thread may put a frame; it never waits. The WriterPool's one thread sends: each
client's queued frames in one non-blocking send (MSG_DONTWAIT: the socket itself stays
blocking for its reader thread), and whatever the kernel does not take waits until
epoll says there is room. A client that stops reading costs only its own queue, up
to its bound.

Why not a writer thread per client: measured with 200 clients, waking 199 writer
threads per message made thread switches the main cost of a delivery; sending inline
from the producing thread cost a system call per frame; one pool thread coalesces the
frames of many messages into one call per client (see BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time


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
                return True  # already scheduled, being sent, or waiting for room
            self._busy = True
        self.pool.schedule(self)
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
        self.pool.schedule(self)

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

    def wait_sent(self, timeout: float) -> None:
        """Wait (bounded) until the pool has sent what is queued, or the socket died."""
        deadline = time.monotonic() + timeout
        while self._busy and not self._dead and time.monotonic() < deadline:
            time.sleep(0.01)

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
    """The one thread that sends to every client.

    Producers only queue: a frame for a client goes into its Outbox, and the Outbox is
    put on the ready list when it was idle. The pool sends each ready Outbox's frames in
    one system call, so under load the frames of many messages for one client go out
    together (ngircd does the same in its event loop), and no producer ever waits on a
    socket. Clients whose socket is full wait in epoll for room.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._waiting: dict[int, Outbox] = {}
        self._ready: collections.deque[Outbox] = collections.deque()
        self._sleeping = False  # the pool thread is (about to be) blocked in epoll
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="writer pool", daemon=True)
        self.heartbeat = 0.0

    def start(self) -> None:
        self._thread.start()

    def schedule(self, outbox: Outbox) -> None:
        """Have the pool drain this (busy) outbox soon."""
        with self._lock:
            self._ready.append(outbox)
            wake, self._sleeping = self._sleeping, False
        if wake:
            try:
                os.write(self._wake_write, b"x")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

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
            self.heartbeat = time.monotonic()
            with self._lock:
                ready, self._ready = self._ready, collections.deque()
                self._sleeping = not ready
            for outbox in ready:
                outbox.drain()
            try:
                events = self._epoll.poll(0.5 if not ready else 0)
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
                    outbox.drain()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        self._thread.join(1.0)
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
