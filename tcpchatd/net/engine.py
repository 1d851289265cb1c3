"""The engine: `io_threads` event loops that own every client connection for life.

Each connection is given to the least-loaded loop when accepted. Its loop does every
read, write and timer for it (connection.py); no other thread touches a client
socket. Other threads only append: a broadcast to the broadcast log (under the room's
lock: an O(1) append, no system call), a frame to one connection's own queue; then
they wake the loops that sleep, one wake-up per loop however many frames came.

In a turn a loop takes what other threads handed it (new connections, connections
with frames of their own, close requests), sends each of its subscribed connections
what is new in the log in one non-blocking send (caught-up connections share one
joined chunk), reads the sockets that have data (one read per connection per turn:
a busy client cannot starve the others), and fires its timers (handshake timeouts,
final frames that do not go out in time, departing clients' receipts).

Lock order, where two are taken: the room's lock, then a connection's or a loop's;
the broadcast log's lock last. A loop's lock and a connection's are never held
together, and no socket I/O happens under any of them.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import selectors
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from .broadcastlog import BroadcastLog

LOOP_TICK = 0.5  # the longest a loop sleeps: its heartbeat for the watchdog
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_PR_SET_NAME = 15


class Client(Protocol):
    """What a loop asks of each connection it owns (session.py's Session): the loop knows
    nothing more of the chat, and nothing of a socket but the one to wait on."""

    transport: Any  # .sock: what the loop's epoll set waits on
    loop: EventLoop  # its loop, given once by the engine
    own_chats: int   # chat broadcasts it published (the room's channel counts them)
    tls: bool        # inside TLS: cannot cross an upgrade's exec
    closing: bool
    want_write: bool
    cursor: int
    address: str

    @property
    def config(self) -> Any: ...

    @property
    def closed(self) -> bool: ...

    def wants_read(self) -> bool: ...

    def wants_write(self) -> bool: ...

    def adopted(self, loop: EventLoop) -> None: ...

    def readable(self) -> None: ...

    def writable(self) -> None: ...

    def flush(self) -> None: ...

    def timer(self, now: float) -> float | None: ...

    def caught_up(self) -> bool: ...

    def backlog(self) -> int: ...

    def overflow(self) -> None: ...

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None, drop_queue: bool = False) -> bool: ...

    def release(self) -> None: ...

    def subscribe(self, position: int, chat_base: int) -> None: ...

    def unsubscribe(self, position: int) -> None: ...


class Timer:
    """A client's deadline on its loop: conn.timer() is called then; cancel() stops it
    (a session that ends cancels what it set), re-armed with the deadline timer() gives."""

    __slots__ = ("conn", "deadline", "cancelled")

    def __init__(self, conn: Client, deadline: float) -> None:
        self.conn, self.deadline, self.cancelled = conn, deadline, False

    def cancel(self) -> None:
        self.cancelled = True


def name_os_thread(name: str) -> None:
    """Give the calling thread a name the OS shows (top -H, ps -L, /proc/PID/task/TID/comm).

    Python 3.11 names its threads for itself only; an operator (and a test) looking
    at a busy or stuck thread of the daemon should see which one it is.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class EventLoop:
    """One thread, one epoll set, the connections it owns."""

    def __init__(self, engine: Engine, index: int) -> None:
        self.engine = engine
        self.index = index
        self.selector = selectors.EpollSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_read, READ, None)
        self._lock = threading.Lock()  # guards the lists other threads hand over
        self._incoming: list[Client] = []
        self._ready: list[Client] = []
        self._new_timers: list[Timer] = []
        self._calls: list[tuple[Client, Callable[[], None]]] = []
        self._subscribers: dict[Client, None] = {}
        self._sleeping = False  # (about to be) blocked in epoll: a producer must wake it
        self._stopping = False
        self._closed = False    # its epoll set and wake-up pipe are closed
        # --- the loop thread's own
        self.connections: set[Client] = set()
        self._masks: dict[Client, int] = {}
        self._lagging: set[Client] = set()  # waiting for room in the kernel's buffer
        self._timers: list[tuple[float, int, Timer]] = []  # heap
        self._timer_order = itertools.count()
        self.round_end = 0     # the log's end at the last broadcast round
        self.low_water = 0     # no connection of this loop needs a frame before it
        self.heartbeat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"io loop {index}", daemon=True)

    def load(self) -> int:
        return len(self.connections) + len(self._incoming)

    # --- any thread

    def _hand(self, queue: str, item: object, unsubscribe: Client | None = None) -> None:
        """Hand the loop an item on one of its lists (named: the loop swaps the lists
        themselves), and wake it if it sleeps; one wake-up however many items come."""
        with self._lock:
            if unsubscribe is not None:
                self._subscribers.pop(unsubscribe, None)
            getattr(self, queue).append(item)
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._wake()

    def adopt(self, conn: Client) -> None:
        self._hand("_incoming", conn)

    def schedule(self, conn: Client) -> None:
        """Flush this connection soon (it has frames of its own, or it is closing)."""
        self._hand("_ready", conn)

    def call_at(self, deadline: float, conn: Client) -> Timer:
        """Call conn.timer() at the deadline (or soon after), unless cancelled."""
        timer = Timer(conn, deadline)
        self._hand("_new_timers", timer)
        return timer

    def call_soon(self, conn: Client, call: Callable[[], None]) -> None:
        """Run call() on this loop's thread soon (another thread's news for conn: the
        broker's answer to its join)."""
        self._hand("_calls", (conn, call))

    def in_thread(self) -> bool:
        """True on this loop's own thread."""
        return threading.get_ident() == self.thread.ident

    def add_subscriber(self, conn: Client) -> None:
        with self._lock:
            self._subscribers[conn] = None

    def remove_subscriber(self, conn: Client) -> None:
        """No more broadcasts; what was published before still goes out (flushed soon)."""
        self._hand("_ready", conn, unsubscribe=conn)

    def wake_for_broadcast(self) -> None:
        if self._sleeping:
            with self._lock:
                wake, self._sleeping = self._sleeping, False
            if wake:
                self._wake()

    def _wake(self) -> None:
        if self._closed:  # stopped (an upgrade's broker may still publish): its pipe's
            return        # number may belong to another file by now
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending anyway
        except OSError:
            if not self._closed:  # after stop() nobody waits on the pipe
                raise

    # --- the loop thread

    def watch(self, conn: Client) -> None:
        """Register the events this connection waits for now."""
        mask = (READ if conn.wants_read() else 0) | (WRITE if conn.wants_write() else 0)
        if conn.want_write:
            self._lagging.add(conn)
        old = self._masks.get(conn, 0)
        if mask == old or conn.closed:
            return
        sock = conn.transport.sock
        try:
            if not old:
                self.selector.register(sock, mask, conn)
            elif not mask:
                self.selector.unregister(sock)
            else:
                self.selector.modify(sock, mask, conn)
            self._masks[conn] = mask
        except (OSError, ValueError, KeyError):
            conn.close("error")

    def forget(self, conn: Client) -> None:
        """Before its socket is closed: its fd number may soon belong to another client."""
        if self._masks.pop(conn, 0):
            try:
                self.selector.unregister(conn.transport.sock)
            except (OSError, ValueError, KeyError):
                pass
        self.connections.discard(conn)
        self._lagging.discard(conn)
        with self._lock:
            self._subscribers.pop(conn, None)

    def _run(self) -> None:
        name_os_thread(f"tcpchatd io {self.index}")
        log = self.engine.log
        while not self._stopping:
            now = time.monotonic()
            self.heartbeat = now
            with self._lock:
                incoming, self._incoming = self._incoming, []
                ready, self._ready = self._ready, []
                timers, self._new_timers = self._new_timers, []
                calls, self._calls = self._calls, []
                end = log.end
                subscribers = list(self._subscribers) if end != self.round_end else None
            for conn in incoming:
                self.connections.add(conn)
                self._guard(conn, conn.adopted, self)
                self._guard(conn, self.watch, conn)
            for timer in timers:
                heapq.heappush(self._timers, (timer.deadline, next(self._timer_order), timer))
            for conn, call in calls:
                if not conn.closed:
                    self._guard(conn, call)
            if subscribers is not None:  # a broadcast round
                for conn in subscribers:
                    if not conn.want_write:
                        self._guard(conn, conn.flush)
                self.round_end = end
            for conn in ready:
                self._guard(conn, conn.flush)
            if subscribers is not None or ready:
                self._settle()
            self._fire_timers(now)
            with self._lock:
                self._sleeping = not (self._incoming or self._ready or self._new_timers
                                      or self._calls)
            if self._sleeping and log.end != self.round_end:  # published meanwhile
                self._sleeping = False
            timeout = 0.0
            if self._sleeping:
                timeout = LOOP_TICK
                if self._timers:
                    timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            try:
                events = self.selector.select(timeout)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed under us: stopping
            self._sleeping = False
            for key, mask in events:
                conn = key.data
                if conn is None:
                    try:
                        os.read(self._wake_read, 4096)
                    except BlockingIOError:
                        pass
                    continue
                if mask & WRITE:
                    self._guard(conn, conn.writable)
                if mask & READ and not conn.closed:
                    self._guard(conn, conn.readable)

    def _guard(self, conn: Client, method: Callable, *args: Any) -> None:
        """Run a connection's handler; a failure ends that connection only, with its
        traceback in the error log, never shown to a peer."""
        try:
            method(*args)
        except Exception:
            self._fail(conn)

    def _fail(self, conn: Client) -> None:
        """Inside an except block: log the traceback, end the connection whatever it takes."""
        self.engine.report_error(conn)
        try:
            conn.close("error")
            conn.release()
        except Exception:
            self.forget(conn)

    def _settle(self) -> None:
        """Disconnect connections over send_queue; note how far the log may be trimmed."""
        low = self.round_end
        over = []
        for conn in list(self._lagging):
            if conn.closed or (not conn.want_write and conn.caught_up()):
                self._lagging.discard(conn)
                continue
            if not conn.closing and conn.backlog() > conn.config.send_queue:
                over.append(conn)
            low = min(low, conn.cursor)
        self.low_water = low
        for conn in over:
            self._guard(conn, conn.overflow)
        self.engine.trim()

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            conn = timer.conn
            if timer.cancelled or conn.closed:
                continue
            try:
                following = conn.timer(now)
            except Exception:
                self._fail(conn)
                continue
            if following is not None:
                timer.deadline = following
                heapq.heappush(timers, (following, next(self._timer_order), timer))

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float, keep_connections: bool = False) -> list[Client]:
        """End the loop; its connections are closed, or with keep_connections (an
        upgrade) left as they are and returned, those not yet adopted too."""
        if self._closed:  # stopped before (an upgrade that failed half-way, then the end)
            return []
        self._stopping = True
        self._wake()
        if self.thread.is_alive():
            self.thread.join(timeout)
        kept = list(self.connections) + self._incoming
        if self.thread.is_alive():  # wedged: an upgrade still carries its connections (the
            return kept if keep_connections else []  # exec ends the thread), else leave it
        if not keep_connections:
            for conn in kept:  # past the grace time: closed as they are
                try:
                    conn.transport.close()
                except OSError:
                    pass
        self._closed = True
        self.selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        return kept if keep_connections else []


class Engine:
    """The loops, the broadcast log, and the room's channel into them."""

    def __init__(self, io_threads: int,
                 error_log: Callable[[str], None] | None = None) -> None:
        self.log = BroadcastLog()
        self.error_log = error_log
        self.loops = [EventLoop(self, index) for index in range(io_threads)]

    def start(self) -> None:
        for loop in self.loops:
            loop.start()

    def stop(self, timeout: float = 2.0) -> None:
        for loop in self.loops:
            loop.stop(timeout)

    def pause(self, timeout: float = 2.0) -> list[Client]:
        """Stop every loop at the end of its turn (whole reads, whole sends), leaving the
        connections open; all of them (an upgrade carries them)."""
        kept = []
        for loop in self.loops:
            kept += loop.stop(timeout, keep_connections=True)
        return kept

    def connections(self) -> list[Client]:
        return [conn for loop in self.loops for conn in list(loop.connections)]

    def adopt(self, conn: Client) -> None:
        """Hand a new connection to the least-loaded loop, for life."""
        loop = min(self.loops, key=EventLoop.load)
        conn.loop = loop
        loop.adopt(conn)

    def report_error(self, conn: Client) -> None:
        """Inside an except block: a handler failed; its traceback goes to the error log,
        never to a peer."""
        if self.error_log is not None:
            self.error_log(f"internal error in {conn.address}:\n{traceback.format_exc()}")

    def ticking(self, max_age: float = 8 * LOOP_TICK) -> bool:
        """True when every loop has turned within max_age seconds (the watchdog's check;
        an idle loop turns every LOOP_TICK)."""
        now = time.monotonic()
        return all(now - loop.heartbeat <= max_age for loop in self.loops)

    def trim(self) -> None:
        self.log.trim(min(loop.low_water for loop in self.loops))

    # --- the room's channel: called under the room's lock (no system call here)

    def subscribe(self, member: Client) -> None:
        member.subscribe(self.log.end, self.log.chat_total)
        member.loop.add_subscriber(member)

    def unsubscribe(self, member: Client) -> None:
        member.unsubscribe(self.log.end)
        member.loop.remove_subscriber(member)

    def publish(self, frame: bytes, sender: Client | None = None,
                chat: bool = False) -> None:
        """A frame for every subscriber but its sender."""
        if sender is not None and chat:
            sender.own_chats += 1
        self.log.append(frame, sender, chat)

    def notify(self) -> None:
        """After the room's lock is released: wake the loops that sleep."""
        for loop in self.loops:
            loop.wake_for_broadcast()
