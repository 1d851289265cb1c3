"""The engine: `io_threads` event loops that own every client connection for life.

Each connection is given to the least-loaded loop when accepted. Its loop does every
read, write and timer for it (session.py); no other thread touches a client
socket. Other threads only append: a broadcast to its room's channel (a broadcast log
of its own: under the chat's lock, an O(1) append, no system call), a frame to one
connection's own queue; then they wake the loops that sleep, one wake-up per loop
however many frames came.

In a turn a loop takes what other threads handed it (new connections, connections
with frames of their own, close requests, the channels that have news), sends each of
its connections subscribed to those channels what is new in them in one non-blocking
send (caught-up connections of a channel share one joined chunk), reads the sockets
that have data (one read per connection per turn: a busy client cannot starve the
others), and fires its timers (handshake timeouts, final frames that do not go out in
time, departing clients' receipts). A connection in several rooms has a cursor in each
of their channels; a room's broadcasts cost nothing to the connections of other rooms.

Lock order, where two are taken: the hall's lock, then a connection's or a loop's;
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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .broadcastlog import BroadcastLog

LOOP_TICK = 0.5  # the longest a loop sleeps: its heartbeat for the watchdog
# A round of a channel whose news since its last round are notices alone (joins, leaves,
# nick changes, topics: no chat message) waits until this long after that round: in a
# storm of joins a member is sent them together, in one write, instead of one write each
# (10,000 joins over 100 rooms: 500,000 sends otherwise). A chat message never waits.
NOTICE_COALESCE = 0.25
# ... and while the storm lasts (a round of notices alone right after another), each wait
# is twice the one before, up to this: 100 rooms filling for 6 s sent each member its
# room's notices 24 times at 250 ms, 6 times so. A chat message takes them at once.
NOTICE_COALESCE_MAX = 2.0
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

    def flush(self, news: Sequence[Channel] | None = None) -> None:
        """Send what is due (news: of these channels alone, a round's; None: of all)."""

    def timer(self, now: float) -> float | None: ...

    def caught_up(self) -> bool: ...

    def backlog(self) -> int: ...

    def overflow(self) -> None: ...

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None, drop_queue: bool = False) -> bool: ...

    def release(self) -> None: ...

    def positions(self) -> list[tuple[Channel, int]]:
        """(channel, cursor) of every channel it reads (the oldest frame it still needs)."""

    def subscribe(self, channel: Channel, position: int, chat_base: int) -> None: ...

    def unsubscribe(self, channel: Channel, position: int) -> None: ...


# serves a loop's deferred reads together: (connections, the loop's guard(conn, method, *args))
ServeReads = Callable[[list[Client], Callable[..., None]], None]


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
        # channel -> its connections on this loop (a dict: ordered, O(1) removal)
        self._subscribers: dict[Channel, dict[Client, None]] = {}
        self._changed: dict[Channel, None] = {}  # channels published to since the last turn
        self._dropped: list[Channel] = []  # channels of rooms that are gone
        self._sleeping = False  # (about to be) blocked in epoll: a producer must wake it
        self._stopping = False
        self._closed = False    # its epoll set and wake-up pipe are closed
        # --- the loop thread's own
        self.connections: set[Client] = set()
        self._masks: dict[Client, int] = {}
        self._lagging: set[Client] = set()  # waiting for room in the kernel's buffer
        self._deferred: list[Client] = []  # read this turn, served after the next round
        self._serve_deferred: ServeReads | None = None  # ... by what their server gave
        self._timers: list[tuple[float, int, Timer]] = []  # heap
        self._timer_order = itertools.count()
        self.round_end: dict[Channel, int] = {}  # each channel's end at its last round
        # ... and its count of chat messages then, when it was, and how long a round of
        # notices alone waits after it (NOTICE_COALESCE)
        self._round_chats: dict[Channel, tuple[int, float, float]] = {}
        # channels whose notices wait, out of the turns, and their chat count then (any
        # thread reads it: published()); when the first of them is due, or later
        self._held: dict[Channel, int] = {}
        self._held_until = 0.0
        self.heartbeat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"io loop {index}", daemon=True)

    def load(self) -> int:
        return len(self.connections) + len(self._incoming)

    # --- any thread

    def _hand(self, queue: str, item: object,
              unsubscribe: tuple[Channel, Client] | None = None) -> None:
        """Hand the loop an item on one of its lists (named: the loop swaps the lists
        themselves), and wake it if it sleeps; one wake-up however many items come."""
        with self._lock:
            if unsubscribe is not None:
                channel, conn = unsubscribe
                self._subscribers.get(channel, {}).pop(conn, None)
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

    def serve_later(self, conn: Client, serve: ServeReads) -> None:
        """(The loop thread:) serve what conn read after the next turn's round: frames
        without a chat message (confirms, mostly) wait for the messages read beside them
        to go out first (see _run). `serve(conns, guard)` serves them all together
        (session.py's serve_deferred_reads)."""
        self._deferred.append(conn)
        self._serve_deferred = serve

    def in_thread(self) -> bool:
        """True on this loop's own thread."""
        return threading.get_ident() == self.thread.ident

    def add_subscriber(self, channel: Channel, conn: Client) -> None:
        with self._lock:
            self._subscribers.setdefault(channel, {})[conn] = None

    def remove_subscriber(self, channel: Channel, conn: Client) -> None:
        """No more of that channel's broadcasts; what was published in it before still
        goes out (flushed soon)."""
        self._hand("_ready", conn, unsubscribe=(channel, conn))

    def published(self, channel: Channel) -> None:
        """The channel has news: a round for it in the next turn (and a wake-up), or,
        held with notices alone and still without a chat message, when it is due."""
        held = self._held.get(channel)
        if held is None:
            if channel in self._changed:
                # not taken yet (a stale look at a dict the loop just swapped out is safe
                # too: it reads each channel's end after taking them)
                return
        elif channel.log.chat_total == held:
            return  # the loop un-holds a channel before it reads its end: none is lost
        with self._lock:
            self._changed[channel] = None
            wake, self._sleeping = self._sleeping, False
        if wake:
            self._wake()

    def drop_channel(self, channel: Channel) -> None:
        """A room that is gone: its channel is forgotten (its subscribers left before)."""
        with self._lock:
            self._subscribers.pop(channel, None)
            self._changed.pop(channel, None)
            self._held.pop(channel, None)
            self._dropped.append(channel)  # the loop's own round_end: its thread's

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
        channels = [channel for channel, _ in conn.positions()]
        with self._lock:
            for channel in channels:
                self._subscribers.get(channel, {}).pop(conn, None)

    def _run(self) -> None:
        name_os_thread(f"tcpchatd io {self.index}")
        try:
            self._turns()
        finally:  # what was read is served before an upgrade records the connections
            self._serve_reads()

    def _turns(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            self.heartbeat = now
            with self._lock:
                incoming, self._incoming = self._incoming, []
                ready, self._ready = self._ready, []
                timers, self._new_timers = self._new_timers, []
                calls, self._calls = self._calls, []
                changed, self._changed = self._changed, {}
                dropped, self._dropped = self._dropped, []
                # each channel's end, then who reads it: a later subscriber starts later;
                # a channel notified with nothing new since its last round has none (a
                # join above announce_joins_max publishes nothing, yet notifies)
                rounds, held_until = self._rounds(changed, now)
                subscribers = self._round(rounds)
            for conn in incoming:
                self.connections.add(conn)
                self._guard(conn, conn.adopted, self)
                self._guard(conn, self.watch, conn)
            for timer in timers:
                heapq.heappush(self._timers, (timer.deadline, next(self._timer_order), timer))
            for conn, call in calls:
                if not conn.closed:
                    self._guard(conn, call)
            for channel in dropped:
                self.round_end.pop(channel, None)
                self._round_chats.pop(channel, None)
                self._held.pop(channel, None)
            news: list[Channel] = []  # the channels of this turn's round, if it has one
            if rounds:  # a broadcast round
                news = [channel for channel, _, _, _ in rounds]
                self._fan_out(subscribers, news)
                for channel, end, _, chats in rounds:
                    self.round_end[channel] = end
                    self._round_chats[channel] = (chats, now, self._hold_after(channel, chats,
                                                                               now))
            # What the last turn read without a chat message, confirms mostly, is served
            # after the round that sends the messages read beside it: at 20 senders x 20
            # msg/s to 200 members a turn reads 180 confirms a message, and settling them
            # first made each message wait for all of them. A connection's deferred frames
            # are served before its next read (the next turn's), so its order is kept; the
            # receipts they complete go out in this turn still (a sender's window reopens
            # no later than when its confirms were settled as they were read).
            if self._serve_reads():
                with self._lock:
                    ready += self._ready
                    self._ready = []
            for conn in ready:
                self._guard(conn, conn.flush)
            if rounds or ready:
                self._settle(news)
            self._fire_timers(now)
            with self._lock:
                self._sleeping = not (self._incoming or self._ready or self._new_timers
                                      or self._calls or self._changed)
            timeout = 0.0
            if self._sleeping:
                timeout = LOOP_TICK
                if self._timers:
                    timeout = min(timeout, self._timers[0][0] - time.monotonic())
                if held_until is not None:
                    timeout = min(timeout, held_until - time.monotonic())
                timeout = max(0.0, timeout)
            try:
                events = self.selector.select(timeout)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed under us: stopping
            self._sleeping = False
            self._dispatch(events)

    def _serve_reads(self) -> bool:
        """The deferred reads served (serve_later); False if there were none."""
        deferred, self._deferred = self._deferred, []
        if not deferred or self._serve_deferred is None:
            return False
        self._serve_deferred(deferred, self._guard)
        return True

    def _rounds(self, changed: dict[Channel, None], now: float,
                ) -> tuple[list[tuple[Channel, int, dict[Client, None] | None, int]],
                           float | None]:
        """Under the loop's lock: (channel, end, its subscribers, its chat count) of each
        channel with news, and when the first held back (notices alone, a round of it
        NOTICE_COALESCE ago or less: see there) is due, if any is.

        A held channel waits in _held, out of the turns, until it is due or a chat
        message comes to it (published() hands it back then): in a storm of joins into
        100 rooms every turn looked at every held room again (12 % of the loop's time)."""
        held, round_chats = self._held, self._round_chats
        if held and now >= self._held_until:  # the due come back; when the next is due
            following = None
            for channel in list(held):
                _, when, hold = round_chats[channel]
                due = when + hold
                if now >= due:
                    del held[channel]  # before its end is read below: see published()
                    changed[channel] = None
                elif following is None or due < following:
                    following = due
            self._held_until = following or 0.0
        rounds = []
        for channel in changed:
            held.pop(channel, None)
            log = channel.log
            end, chats = log.end, log.chat_total
            if end == self.round_end.get(channel):
                continue
            last = round_chats.get(channel)
            if last is not None and last[0] == chats and now < last[1] + last[2]:
                held[channel] = chats
                due = last[1] + last[2]
                if len(held) == 1 or due < self._held_until:
                    self._held_until = due
                continue
            rounds.append((channel, end, self._subscribers.get(channel), chats))
        return rounds, (self._held_until if held else None)

    def _hold_after(self, channel: Channel, chats: int, now: float) -> float:
        """How long notices alone wait after this round: NOTICE_COALESCE, or twice the
        last wait (up to NOTICE_COALESCE_MAX) when this round was of notices alone and
        came when that wait ended (a storm of joins goes on)."""
        last = self._round_chats.get(channel)
        if last is not None and last[0] == chats and now < last[1] + 2 * last[2]:
            return min(2 * last[2], NOTICE_COALESCE_MAX)
        return NOTICE_COALESCE

    @staticmethod
    def _round(rounds: list[tuple[Channel, int, dict[Client, None] | None, int]],
               ) -> list[Client]:
        """Under the loop's lock: the connections a broadcast round sends to, each once
        however many of its channels have news."""
        if len(rounds) == 1:
            return list(rounds[0][2] or ())
        everyone: dict[Client, None] = {}
        for _, _, subscribers, _ in rounds:
            if subscribers:
                everyone.update(subscribers)
        return list(everyone)

    def _dispatch(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """What select() found: each connection's writable() then readable(), and the
        wake-up pipe emptied. One try around the loop, not a guarded call an event (with
        receipts a message brings a read from each member): a failure ends that
        connection alone, as _guard does, and the loop goes on with the next event."""
        remaining = iter(events)
        conn = None
        while True:
            try:
                for key, mask in remaining:
                    conn = key.data
                    if conn is None:
                        try:
                            os.read(self._wake_read, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    if mask & WRITE:
                        conn.writable()
                    if mask & READ and not conn.closed:
                        conn.readable()
                return
            except Exception:
                if conn is None:  # the wake-up pipe's: the loop's own, as before
                    raise
                self._fail(conn)

    def _fan_out(self, subscribers: list[Client], news: list[Channel]) -> None:
        """A round's sends: flush() each subscriber not waiting on the kernel already,
        of the round's channels (news). One try around the loop, as _dispatch, not a
        guarded call a connection (a round makes 200 and more)."""
        remaining = iter(subscribers)
        while True:
            try:
                for conn in remaining:
                    if not conn.want_write:
                        conn.flush(news)
                return
            except Exception:
                self._fail(conn)

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

    def _settle(self, channels: list[Channel]) -> None:
        """Disconnect connections over send_queue; note how far the channels of this
        round, and those a lagging connection reads, may be trimmed."""
        lows: dict[Channel, int] = {channel: self.round_end[channel] for channel in channels}
        over = []
        for conn in list(self._lagging):
            if conn.closed or (not conn.want_write and conn.caught_up()):
                self._lagging.discard(conn)
                continue
            if not conn.closing and conn.backlog() > conn.config.send_queue:
                over.append(conn)
            for channel, cursor in conn.positions():
                low = lows.get(channel)
                if low is None:
                    low = self.round_end.get(channel, cursor)
                lows[channel] = min(low, cursor)
        for conn in over:
            self._guard(conn, conn.overflow)
        for channel, low in lows.items():
            channel.trim(self.index, low)

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
    """The loops, and the channels (each room's broadcasts) into them."""

    def __init__(self, io_threads: int,
                 error_log: Callable[[str], None] | None = None) -> None:
        self.error_log = error_log
        self.loops = [EventLoop(self, index) for index in range(io_threads)]

    def channel(self) -> Channel:
        """A new room's channel."""
        return Channel(self)

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



class Channel:
    """One room's broadcasts: a broadcast log of its own, read by the connections that
    subscribed to it, on every loop. What the room calls is called under the chat's
    lock (no system call there); notify() after it is released."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.log = BroadcastLog()
        # per loop: none of its connections needs a frame before this; the log is
        # trimmed behind the lowest
        self.low_water = [0] * len(engine.loops)

    def subscribe(self, member: Client) -> None:
        member.subscribe(self, self.log.end, self.log.chat_total)
        member.loop.add_subscriber(self, member)

    def unsubscribe(self, member: Client) -> None:
        member.unsubscribe(self, self.log.end)
        member.loop.remove_subscriber(self, member)

    def publish(self, frame: bytes, sender: Client | None = None,
                chat: bool = False) -> None:
        """A frame for every subscriber but its sender."""
        if sender is not None and chat:
            sender.own_chats += 1
        self.log.append(frame, sender, chat)

    def notify(self) -> None:
        """After the chat's lock is released: every loop has a round for this channel
        (one that has no subscriber of it only moves its low-water mark)."""
        for loop in self.engine.loops:
            loop.published(self)

    def trim(self, loop_index: int, low: int) -> None:
        """A loop's connections need nothing of this channel before `low`."""
        self.low_water[loop_index] = low
        self.log.trim(min(self.low_water))

    def close(self) -> None:
        """The room is gone: every loop forgets this channel."""
        for loop in self.engine.loops:
            loop.drop_channel(self)
