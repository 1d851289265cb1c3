"""One chat client: the native chat protocol on a transport (transport.py), all of its
state in one object, served by the event loop that owns it.

The session never touches a socket: its transport reads, writes (partly, when the
kernel's buffer is full), shakes hands (TLS) and closes; the same session runs on a
plain socket, inside TLS, or on two buffers in a test. The loop (engine.py) does every
read, write and timer of the session; no other thread touches its transport. Other
threads (another client's loop finishing a receipt, the admin server kicking, the main
thread shutting down) only call deliver() and close(), which queue under the session's
own lock and wake its loop.

Lock order, where two are taken: the hall's, then a loop's, then a connection's
(never the other way round): the hall subscribes and unsubscribes members under its
lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..chat.accounts import Account
from ..chat.hall import AddressBanned, EventLog, Hall
from ..chat.logins import GUEST
from ..wire import errors, nicknames, protocol
from ..wire.confirms import take_confirms
from ..wire.errors import ProtocolError
from ..wire.protocol import ChatMessage, FrameReader, Request
from .handover import b64, unb64
from .irctransport import IrcTransport
from .settings import NetSettings
from .tls import CLIENT_HELLO_START
from .transport import PlainTransport, TransportError
from .websocket import HandshakeEnded, WebSocketTransport

if TYPE_CHECKING:
    from .engine import Channel, EventLoop, Timer
    from .transport import MemoryTransport, TlsTransport

    Transport = PlainTransport | TlsTransport | MemoryTransport | WebSocketTransport | \
        IrcTransport

NICKNAME_ATTEMPTS = 3
ROOM_REFUSALS = frozenset({errors.ROOM_NAME_INVALID, errors.ROOM_NAME_TAKEN,
                           errors.NO_SUCH_ROOM, errors.ROOM_LIMIT})
POST_VARIANTS = 8  # a poster whose name is taken tries NAME-2 ... NAME-9
LOGGED_NICKNAME = 256  # bytes of a refused nickname the log shows (an attacker's input)
FLOOD_STRIKES = 3          # dropped messages ...
FLOOD_STRIKE_WINDOW = 10.0  # ... within this many seconds disconnect
ERROR_WINDOW = 10.0         # error_limit counts the protocol errors of this many seconds
COALESCE_WINDOW = 10.0      # identical error lines within it become one `repeated=N` line

# states; the loop moves a connection forward only (but for a refused nickname:
# JOINING back to HANDSHAKE). JOINING: the nickname waits for the broker's claim, and
# nothing more is read meanwhile.
TLS_HANDSHAKE, HANDSHAKE, JOINING, CHAT, DEPARTING, CLOSED = (
    "tls_handshake", "handshake", "joining", "chat", "departing", "closed")
READING = (TLS_HANDSHAKE, HANDSHAKE, CHAT)


NO_VARIANTS: Iterator[str] = iter(())  # shared: exhausted for everyone
NO_TIMES: list[float] = []  # shared, never appended to (count_recent copies it)
NO_GAPS: list[tuple[int, int]] = []  # shared, never appended to: a list is 56 bytes a member


class Subscription:
    """A session's place in one room's channel."""

    __slots__ = ("cursor", "until", "chat_base", "gaps")

    def __init__(self, cursor: int, chat_base: int) -> None:
        self.cursor = cursor          # the next broadcast (log position) to send
        self.until: int | None = None  # broadcasts stop here (None: subscribed)
        self.chat_base = chat_base    # chat broadcasts before it subscribed
        # [start, stop) ranges published while it was out (it parted and came back
        # before the frames before its part had all gone out): never sent to it
        self.gaps: list[tuple[int, int]] = NO_GAPS  # (a list of its own once one comes)


def count_recent(times: list[float], window: float) -> list[float]:
    """Note one event now in `times`; those of the last `window` seconds (a new list
    when `times` is the shared empty one). A list, not a deque: it holds a few times at
    most, and an empty deque costs 624 bytes a client."""
    now = time.monotonic()
    if times is NO_TIMES:
        times = []
    times.append(now)
    old = 0
    while times[old] < now - window:
        old += 1
    del times[:old]
    return times


class SessionServer(Protocol):
    """What a session needs of the server that accepted it (listeners.py)."""

    hall: Hall
    log: EventLog
    errors: dict[str, int]  # protocol errors by code, every session's (metrics)
    flood_drops: int
    flood_disconnects: int
    http_answers: dict[int, int]  # the web door's answers that end at it, by status

    @property
    def config(self) -> NetSettings: ...

    def connection_ended(self, conn: Session) -> None: ...


class Session:
    """A connected client; a Member of the hall once its nickname is accepted."""

    # One per client (10,000 and more): with more than 30 attributes an instance's dict
    # cannot share its keys with the others', and cost 1.6 KiB a client.
    __slots__ = ("_abort", "_deferred", "_departure", "_drop_to", "_ending", "_error_repeats",
                 "_errors", "_first_room", "_flood_strikes", "_joining", "_lock", "_logged_error",
                 "_private", "_resumed", "_scheduled", "_timers", "_tokens", "_tokens_at",
                 "_variants", "account", "address", "attempts", "close_deadline", "closing",
                 "connected", "depart_deadline", "hall", "handshake_deadline", "ip", "joined",
                 "last_active", "log", "loop", "nickname", "own_chats", "partial", "port",
                 "private_bytes", "quiet", "reader", "received_before", "role", "sent",
                 "server", "stalled_since", "started", "state", "subscriptions", "tls",
                 "tls_heard", "tls_hello_deadline", "transport", "via", "want_write")

    def __init__(self, transport: Transport, address: tuple, server: SessionServer) -> None:
        self.transport = transport
        self.tls = transport.tls
        self.via = transport.kind        # tcp, tls, web, wss, irc, ircs (`who`, the join line)
        self.tls_heard = False           # the peer sent something on the TLS port
        self.tls_hello_deadline = 0.0
        self.server = server
        self.hall = server.hall
        self.log = server.log
        self.ip, self.port = address[0], address[1]
        self.address = (f"[{address[0]}]:{address[1]}" if ":" in address[0]
                        else f"{address[0]}:{address[1]}")
        self.nickname = ""  # once joined (the hall keeps its key)
        self.connected = time.time()
        self.last_active = time.monotonic()
        self.sent = 0               # messages this client sent
        # set once, when the engine gives it a loop, before any call that uses it
        self.loop: EventLoop = None  # type: ignore[assignment]
        self.started = False        # its loop has run adopted(): the prompt went out
        self.state = HANDSHAKE
        # --- only the owning loop reads or writes these
        self.reader = FrameReader()
        self.partial = b""          # what the kernel did not take of the last send
        self.want_write = False     # registered for EPOLLOUT: the kernel's buffer is full
        self.stalled_since: float | None = None  # since when the kernel took nothing
        self.attempts = 0           # nicknames tried
        self.handshake_deadline = 0.0
        self.close_deadline: float | None = None
        self.depart_deadline = 0.0  # when DEPARTING ends at the latest
        self._departure: tuple[str, bytes | None] = ("quit", None)  # (reason, final frame)
        self._tokens: float | None = None  # the flood bucket starts full
        self._tokens_at = 0.0
        self._flood_strikes: list[float] = NO_TIMES  # (a list of its own at the first)
        self._errors: list[float] = NO_TIMES  # counted, recent
        self._logged_error: tuple[str, float] | None = None  # (code, when) of the last line
        self._error_repeats = 0  # identical errors since that line, not logged yet
        self._ending: tuple[str, bytes] | None = None  # flood: stop reading
        self._joining: tuple[str, bool, ProtocolError | None] | None = None  # (raw nickname
        #   shown in the log, settled, the refusal) while JOINING
        self.quiet = False          # a poster (hello mode post): no notices, `accepted`
        self.account: str | None = None  # the account it logged in to (None: a guest)
        self.role = GUEST           # ... and that account's role
        self._variants: Iterator[str] = NO_VARIANTS  # a poster's next names to try
        self._first_room: str | None = None  # the hello's room (None: the default room)
        # --- any thread, under _lock
        self._lock = threading.Lock()
        # its own frames, each with the channels' ends when it was queued: what was
        # broadcast before it goes out before it
        self._private: list[tuple[tuple[tuple[Channel, int], ...], bytes]] = []
        self.private_bytes = 0
        self.subscriptions: dict[Channel, Subscription] = {}  # the rooms' channels it reads
        self._drop_to: dict[Channel, int] | None = None
        self._scheduled = False     # on its loop's ready list
        self._deferred = False      # on its loop's list of reads served after the round
        self.joined = False
        self.closing = False        # close() was called: nothing more is queued
        self._abort = False         # ... and nothing more is sent
        # --- counters for `who` (written under the hall's lock)
        self.received_before = 0    # chat broadcasts of the channels it no longer reads
        self.own_chats = 0          # chat broadcasts it published
        self._resumed: dict | None = None  # its record, from the image before an upgrade
        self._timers: list[Timer] = []  # what it asked its loop for (cancelled at release)

    @property
    def config(self) -> NetSettings:
        return self.server.config

    def _at(self, deadline: float) -> None:
        """A deadline on its loop (timer() is called then); all cancelled at release (a
        handle lost to a close from another thread only fires into a closed session,
        which the loop skips)."""
        self._timers = [t for t in self._timers if not t.cancelled]
        self._timers.append(self.loop.call_at(deadline, self))

    @property
    def received(self) -> int:
        """Chat messages queued for this client (the `received` of `tcpchatctl who`)."""
        with self._lock:
            subscriptions = list(self.subscriptions.items())
        return self.received_before - self.own_chats + sum(
            channel.log.chats_before(sub.until) - sub.chat_base
            for channel, sub in subscriptions)

    def _ends(self) -> tuple[tuple[Channel, int], ...]:
        """Under the lock: where each channel it reads ends now, for those with
        broadcasts not yet sent to it (a caught-up channel has none to go first)."""
        return tuple((channel, end) for channel, sub in self.subscriptions.items()
                     if sub.cursor < (end := channel.log.end))

    # --- any thread

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this client alone; past send_queue, disconnect it."""
        with self._lock:
            if self.closing:
                return
            over = self.private_bytes + len(self.partial) + len(frame) > self.config.send_queue
            if not over:
                self._private.append((self._ends(), frame))
                self.private_bytes += len(frame)
                schedule, self._scheduled = not self._scheduled, True
        if over:
            self.overflow()
        elif schedule:
            self.loop.schedule(self)

    def overflow(self) -> None:
        """Over send_queue bytes (found by deliver, or by the loop for broadcasts)."""
        if self.close(errors.SEND_QUEUE_EXCEEDED, protocol.error_frame(
                errors.SEND_QUEUE_EXCEEDED, "you are not reading: disconnected"),
                drop_queue=True):
            self.hall.count_send_queue_disconnect()

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None, drop_queue: bool = False) -> bool:
        """Leave the hall and disconnect, once (False if it was closed before). With
        final_frame, what is queued and then final_frame are sent first, within
        shutdown_grace; without, at once."""
        if not self._end(final_frame, flush=final_frame is not None, drop=drop_queue):
            return False
        self._flush_error_repeats()  # the count of its repeated errors, before its leave
        if self.joined:  # the hall logs the leave, in its rooms' order of events
            self.hall.leave(self, reason, detail)
        return True

    def _end(self, final_frame: bytes | None, flush: bool, drop: bool = False) -> bool:
        """Stop queueing; send what is due (if flush), then shut down. False if done before."""
        with self._lock:
            if self.closing:
                return False
            self.closing = True
            ends = tuple((channel, channel.log.end) for channel in self.subscriptions)
            if not flush:
                self._abort = True
            else:
                if drop:
                    self._private.clear()
                    self.private_bytes = 0
                    self._drop_to = dict(ends)
                if final_frame is not None:
                    self._private.append((ends, final_frame))
                    self.private_bytes += len(final_frame)
                for channel, end in ends:
                    sub = self.subscriptions[channel]
                    sub.until = end if sub.until is None else min(sub.until, end)
            schedule, self._scheduled = not self._scheduled, True
        self.close_deadline = time.monotonic() + self.config.shutdown_grace
        if self.loop is not None:
            self._at(self.close_deadline)
            if schedule:
                self.loop.schedule(self)
        return True

    # --- the rooms' channels (the engine calls these under the hall's lock)

    def subscribe(self, channel: Channel, position: int, chat_base: int) -> None:
        with self._lock:
            sub = self.subscriptions.get(channel)
            if sub is None:
                self.subscriptions[channel] = Subscription(position, chat_base)
                return
            # back before what it was due before it left had all gone out: the frames
            # published meanwhile are skipped, and not counted as received
            if sub.until is not None and sub.until < position:
                if sub.gaps is NO_GAPS:
                    sub.gaps = []
                sub.gaps.append((sub.until, position))
                sub.chat_base += chat_base - channel.log.chats_before(sub.until)
            sub.until = None

    def unsubscribe(self, channel: Channel, position: int) -> None:
        with self._lock:
            sub = self.subscriptions.get(channel)
            if sub is not None and sub.until is None:
                sub.until = position

    def positions(self) -> list[tuple[Channel, int]]:
        with self._lock:
            return [(channel, sub.cursor) for channel, sub in self.subscriptions.items()]

    # --- the owning loop

    def adopted(self, loop: EventLoop) -> None:
        """First thing on its loop: the TLS handshake if on a TLS port, then ask for a
        nickname; both within handshake_timeout. A connection carried through an upgrade
        goes on where it was."""
        self.started = True
        if self._resumed is not None:
            self._resume_on(loop)
            return
        self.loop = loop
        self.transport.configure(self.config)
        self.handshake_deadline = time.monotonic() + self.config.handshake_timeout
        self._at(self.handshake_deadline)
        if not self.transport.start():  # TLS, a web door: the handshake first
            self.state = TLS_HANDSHAKE
            if self.via != "tls":  # a browser asks first; its silence is the timeout's
                self.tls_heard = True
                return
            # a TLS client speaks first, at once; a plaintext one waits for `_nickname_`
            self.tls_hello_deadline = time.monotonic() + self.config.tls_hello_wait
            self._at(self.tls_hello_deadline)
        else:
            self.deliver(protocol.NICKNAME_PROMPT)

    # --- what the loop asks of any of its clients

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def wants_read(self) -> bool:
        return self.state in READING and not self.closing

    def wants_write(self) -> bool:
        return self.want_write or self.transport.handshake_wants_write

    def timer(self, now: float) -> float | None:
        """A deadline of this connection may have passed; the next one, or None."""
        if self.state == CLOSED:
            return None
        if (self.stalled_since is not None and not self.closing
                and now - self.stalled_since >= self.config.stall_timeout):
            # it reads nothing: what it pins in the kernel is freed, its place is given up
            self.close("stalled")
            return None
        if self.close_deadline is not None:
            if now >= self.close_deadline:  # the final frame did not go out in time
                self.release()
                return None
            return self.close_deadline
        if self.state == TLS_HANDSHAKE:
            if not self.tls_heard and now >= self.tls_hello_deadline:
                self._tls_silent()
                return None
            if now < self.handshake_deadline:
                return self.tls_hello_deadline if not self.tls_heard and \
                    self.tls_hello_deadline < self.handshake_deadline else \
                    self.handshake_deadline
            self._tls_failed("timeout")
            return None
        if self.state == HANDSHAKE:
            if now < self.handshake_deadline:
                return self.handshake_deadline
            self.log.event("protocol_error", addr=self.address, code=errors.HANDSHAKE_TIMEOUT)
            self.close("timeout", protocol.error_frame(
                errors.HANDSHAKE_TIMEOUT, "no nickname was sent in time"))
            return None
        if self.state == DEPARTING and now >= self.depart_deadline:
            self._departed()  # its last receipts did not all come in time
        return None

    def readable(self) -> None:
        if self.state == TLS_HANDSHAKE:
            self.tls_heard = True
            self._tls_handshake()
            return
        try:
            data = self.transport.recv()
        except TransportError as exc:
            self.close("timeout" if exc.timed_out else "error")
            return
        if data is None:  # nothing after all (a TLS record not yet whole)
            return
        if self.closing:  # reading has ended: the rest is thrown away
            self.loop.watch(self)
            return
        if self.state == HANDSHAKE:
            self._handshake(data)
        elif not data:  # the end of its stream: a frame cut short is an error
            self._peer_ended()
        else:
            self.last_active = time.monotonic()
            reader = self.reader
            reader.buffer += data
            # a read without a chat message in it (confirms, mostly) is served after the
            # loop's next round, so that the messages read beside it go out first
            if reader.buffer.find(b'"message"') >= 0 or self.transport.at_end:
                self._serve()
            elif not self._deferred:
                self._deferred = True
                self.loop.serve_later(self, serve_deferred_reads)
            if self.transport.at_end and not self.closing:  # a WebSocket's close came
                self._peer_ended()                       # after its last messages

    def _peer_ended(self) -> None:
        """Its end of the stream; a transport that ended it itself says why (an IRC
        client over its lines' flood limit)."""
        if self.transport.end_code == errors.FLOOD:
            self.log.event("flood", nick=self.nickname or None, transport=self.via)
            self.server.flood_drops += 1
            self.server.flood_disconnects += 1
            self._depart("flood", None)
        else:
            self._depart("error" if self.reader.buffer else "quit", None)

    def writable(self) -> None:
        if self.state == TLS_HANDSHAKE:
            self._tls_handshake()
            return
        self.want_write = False
        self.loop.watch(self)
        self.flush()

    def flush(self, news: Sequence[Channel] | None = None) -> None:
        """Send what is due in one non-blocking send; shut down once a close is done.
        news: a broadcast round's channels; its other rooms are not looked at (their own
        rounds send their news). None: every room."""
        if self.state == CLOSED:
            return
        if self.state == TLS_HANDSHAKE:  # nothing is sent before the handshake is done
            if self.closing:
                self.release()
            return
        with self._lock:
            self._scheduled = False
            if self._abort:
                data = None
            elif self.want_write:
                data = b""
            else:
                data = self._collect(news)
        if data is None:
            self.release()
            return
        if data:
            try:
                sent = self.transport.send(data)
            except TransportError as exc:  # the peer is gone
                self.close("timeout" if exc.timed_out else "error")
                self.release()
                return
            if sent:
                self.stalled_since = None
            if sent < len(data):
                self.partial = data[sent:]
                self.want_write = True
                if self.stalled_since is None and self.config.stall_timeout:
                    self.stalled_since = time.monotonic()
                    self._at(self.stalled_since + self.config.stall_timeout)
                self.loop.watch(self)
                return
            self.partial = b""
            if self.transport.buffered() and self.state == CHAT:  # frames the sending
                self.readable()  # made (an IRC member's confirms): read now, not at a read
        if self.closing and not self.want_write and self.caught_up():
            self.release()

    def caught_up(self) -> bool:
        """Nothing is left to send that this client is due."""
        with self._lock:
            if self._private or self.partial:
                return False
            for channel, sub in self.subscriptions.items():
                if sub.cursor < (channel.log.end if sub.until is None else sub.until):
                    return False
            return True

    def backlog(self) -> int:
        """Bytes due to this client and not yet taken by the kernel."""
        with self._lock:
            subscriptions = list(self.subscriptions.items())
        due = sum(channel.log.bytes_between(sub.cursor, channel.log.end if sub.until is None
                                            else sub.until)
                  for channel, sub in subscriptions)
        return due + self.private_bytes + len(self.partial)

    def _collect(self, news: Sequence[Channel] | None = None) -> bytes:
        """Under the lock: the bytes due now, in order; moves the cursors past them.
        news: only these channels' broadcasts (a round's), besides private frames."""
        subscriptions = self.subscriptions
        if self._drop_to is not None:  # disconnected for not reading: skip the backlog,
            # but finish the frame the kernel took a part of (a cut frame would corrupt
            # the stream before the final notice)
            for channel, end in self._drop_to.items():
                sub = subscriptions.get(channel)
                if sub is not None:
                    sub.cursor = max(sub.cursor, end)
            self._drop_to = None
        parts = [self.partial] if self.partial else []
        for ends, frame in self._private:
            for channel, end in ends:  # broadcasts published before this frame go first
                sub = subscriptions.get(channel)
                if sub is not None:
                    self._take(channel, sub, end, parts)
            parts.append(frame)
        self._private.clear()
        self.private_bytes = 0
        finished = []
        visit: Iterable[tuple[Channel, Subscription]] = subscriptions.items()
        if news is not None and len(news) < len(subscriptions):
            # a member of five rooms need not look at the four without news (a round
            # comes to each room's own): 45 ns each, at every round of every member
            visit = []
            for channel in news:
                sub = subscriptions.get(channel)
                if sub is not None:
                    visit.append((channel, sub))
        for channel, sub in visit:
            log = channel.log
            end = log.end
            if sub.cursor >= end:  # (most of a client's rooms have no news in a turn)
                pass
            elif sub.until is None and not sub.gaps:  # the common case, inline
                start, stop, joined, senders = log.latest  # this round's, most often
                if start == sub.cursor and stop == end and self not in senders:
                    parts.append(joined)
                else:
                    parts.append(log.chunk(sub.cursor, end, self))
                sub.cursor = end
            else:
                self._take(channel, sub, end, parts)
            if sub.until is not None and sub.cursor >= sub.until:
                finished.append((channel, sub))
        for channel, sub in finished:  # out of that room, and sent all it was due of it
            del subscriptions[channel]
            self.received_before += channel.log.chats_before(sub.until) - sub.chat_base
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _take(self, channel: Channel, sub: Subscription, upto: int,
              parts: list[bytes]) -> None:
        """Under the lock: the channel's broadcasts from the cursor to `upto` (or its
        `until`), but for its gaps."""
        if sub.until is not None:
            upto = min(upto, sub.until)
        while sub.cursor < upto:
            stop = upto
            if sub.gaps:
                start, end = sub.gaps[0]
                if start <= sub.cursor:  # inside a gap: skipped
                    sub.cursor = max(sub.cursor, min(end, upto))
                    if end <= upto:
                        sub.gaps.pop(0)
                    continue
                stop = min(upto, start)
            parts.append(channel.log.chunk(sub.cursor, stop, self))
            sub.cursor = stop

    def release(self) -> None:
        """The end: the socket closed, the slot given back. Only the owning loop calls it."""
        if self.state == CLOSED:
            return
        if not self.closing:
            self.close("error")
        self.state = CLOSED
        self._flush_error_repeats()
        with self._lock:
            self._private.clear()
            self.private_bytes = 0
            self.partial = b""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.loop.forget(self)  # before the close: its fd number may soon be another's
        with self._lock:
            self.subscriptions.clear()
        self.transport.close()
        self.server.connection_ended(self)

    # --- the handshakes

    def _tls_handshake(self) -> None:
        """One non-blocking step of the transport's handshake (TLS's, then a web door's
        HTTP request and answer); never waits."""
        try:
            done = self.transport.handshake()
        except HandshakeEnded as ended:  # a page's file served, a refusal: the end
            self._http_answered(ended)
            return
        except TransportError as exc:  # plaintext, garbage, a peer that vanished
            self._tls_failed(str(exc))
            return
        if done:
            self.state = HANDSHAKE
            self.deliver(protocol.NICKNAME_PROMPT)
        self.loop.watch(self)
        if done and self.transport.buffered():  # a WebSocket's first frames came with
            self.readable()                     # its request: no readiness says so

    def _http_answered(self, ended: HandshakeEnded) -> None:
        """The web door's access line (none for a connection that asked nothing)."""
        outcome = ended.outcome
        if outcome is not None:
            answers = self.server.http_answers
            answers[outcome.status] = answers.get(outcome.status, 0) + 1
            self.log.event("http", addr=self.address, method=outcome.method or None,
                           path=(outcome.path or "")[:LOGGED_NICKNAME] or None,
                           status=outcome.status,
                           origin=outcome.origin[:LOGGED_NICKNAME]
                           if outcome.origin and outcome.status == 403 else None)
        self.close("http")

    def _tls_silent(self) -> None:
        """Nothing came on the TLS port within tls_hello_wait: a plaintext client waiting
        for `_nickname_`. Nothing of TLS was said yet, so one plaintext frame tells it
        what to do instead of a silent close at handshake_timeout."""
        self.log.event("protocol_error", addr=self.address, code=errors.TLS_REQUIRED)
        frame = protocol.error_frame(errors.TLS_REQUIRED, "this port speaks TLS: connect "
                                     "with TLS (tcpchat-client --tls)")
        self.transport.send_plain(frame)  # under the TLS object, raw
        self.close("error")

    def _tls_failed(self, why: str) -> None:
        if self.via == "web":  # no TLS: an HTTP request that never came whole
            answers = self.server.http_answers
            answers[408] = answers.get(408, 0) + 1
            self.log.event("http", addr=self.address, status=408, error=str(why).lower())
        else:
            self.log.event("protocol_error", addr=self.address, code=errors.TLS_HANDSHAKE,
                           error=str(why).lower())
        self.close("error")

    def _handshake(self, data: bytes) -> None:
        if not data:
            self.close("error")
            return
        if not self.tls and data.startswith(CLIENT_HELLO_START):  # never a nickname
            self.log.event("protocol_error", addr=self.address, code=errors.TLS_ON_PLAIN)
            self.close("error")
            return
        if self.reader.buffer or protocol.looks_like_a_frame(data):  # a hello frame
            self.reader.buffer += data
            self._hello()
            return
        raw, rest = protocol.take_nickname(data)
        self.reader.buffer += rest  # the frames that came with it wait for the join
        shown = raw[:LOGGED_NICKNAME].decode("utf-8", "replace")  # attacker's input: capped
        refusal = self.hall.logins.guest_refused() if self.hall.logins else None
        if refusal is not None:  # require_account: the original client is told why
            self.log.event("refused", addr=self.address, nick=shown, code=refusal.code)
            self.close("error", protocol.error_frame(refusal.code, refusal.message))
            return
        try:
            nickname = nicknames.check_nickname(raw, self.config.max_nickname)
        except ProtocolError as exc:
            self._nickname_refused(shown, exc)
            return
        self._join(nickname, shown)

    def _hello(self) -> None:
        """A hello frame in place of the nickname (protocol.py): a poster, or a login."""
        try:
            body = self.reader.take_body(self.config.max_frame)
            if body is None:
                return  # the rest of it comes with the next read
            hello = protocol.parse_hello(body, self.config.max_json_depth)
            # no nickname: the account's own, as it was registered (after the login; a
            # name that is no account is a failed login, logged, whatever it holds)
            nickname = nicknames.check_nickname(hello.nickname.encode("utf-8", "replace"),
                                                self.config.max_nickname) \
                if hello.nickname is not None else ""
            refusal = self.hall.logins.guest_refused() \
                if self.hall.logins and hello.account is None else None
            if refusal is not None:
                raise refusal
        except ProtocolError as exc:
            self.reader.buffer.clear()
            self.log.event("nick_rejected", addr=self.address, code=exc.code)
            self.close("error", protocol.error_frame(exc.code, exc.message))
            return
        self.quiet = hello.mode == "post"  # it joins and leaves without notices
        self._first_room = hello.room
        if self.quiet and nickname:
            self._use_variants(nickname)
        if hello.account is None:
            self._join(nickname, nickname)
            return
        self.state = JOINING  # nothing more is read until the password is checked
        self.loop.watch(self)
        self._login(hello.account[:LOGGED_NICKNAME], hello.password or "", None,
                    lambda: self._join_logged_in(nickname or self.account or ""))

    def _join_logged_in(self, nickname: str) -> None:
        if self.role == "bot" or self.quiet:  # several connections: NAME-2 ...
            self._use_variants(nickname)
        self._join(nickname, nickname)

    def _use_variants(self, nickname: str) -> None:
        """A poster (or a bot) whose name is taken tries NAME-2 ... NAME-9."""
        self._variants = iter([f"{nickname}-{n}" for n in range(2, POST_VARIANTS + 2)
                               if len(f"{nickname}-{n}") <= self.config.max_nickname])

    def _login(self, name: str, password: str, request_id: int | str | None,
               then: Callable[[], None] | None = None) -> None:
        """Check a login off the loop (the accounts' pool); at the hello (`then`: the
        join that follows) or asked for by a request of a member."""
        logins = self.hall.logins
        if logins is None:
            self._logged_in(None, ProtocolError(errors.LOGIN_FAILED, "this server keeps no "
                                                "accounts", request_id=request_id),
                            request_id, then)
            return
        if self.account is not None and then is None:
            raise ProtocolError(errors.LOGIN_FAILED, f"you are logged in as {self.account} "
                                "already", request_id=request_id)

        def done(account: Account | None, refusal: ProtocolError | None) -> None:
            self.loop.call_soon(self, lambda: self._logged_in(account, refusal, request_id,
                                                              then))
        logins.login(name, password, self.ip, done, request_id)

    def _logged_in(self, account: Account | None, refusal: ProtocolError | None,
                   request_id: int | str | None, then: Callable[[], None] | None) -> None:
        """On its loop: the login's answer."""
        if self.closing:
            return
        if account is not None and refusal is None:  # the password was right; a ban holds
            refusal = self.hall.account_banned(account.name)
            if refusal is not None:
                account = None
                refusal = ProtocolError(refusal.code, refusal.message, request_id=request_id)
        if then is not None:  # at the hello: in, or told why and closed
            if refusal is not None or account is None:
                refusal = refusal or ProtocolError(errors.LOGIN_FAILED, "login failed")
                self.close("error", protocol.error_frame(refusal.code, refusal.message))
                return
            self.account, self.role = account.name, account.role
            self.deliver(protocol.login_frame(account.name, account.role))
            then()
            return
        if refusal is None and account is not None:
            before = self.account, self.role
            self.account, self.role = account.name, account.role
            try:
                self.hall.logged_in(self)
            except ProtocolError as exc:
                self.account, self.role = before
                refusal = ProtocolError(exc.code, exc.message, request_id=request_id)
            else:
                self.deliver(protocol.login_frame(account.name, account.role, request_id))
                return
        assert refusal is not None
        if self._count_error(refusal.code):
            self.close("errors", self._too_many_errors(refusal))
        else:
            self.deliver(protocol.error_frame(refusal.code, refusal.message,
                                              request_id=request_id))

    def _join(self, nickname: str, shown: str) -> None:
        """Ask the hall for the nickname; its answer comes to _join_settled."""
        try:
            with self._lock:
                self._joining = (shown, False, None)
            self.state = JOINING
            self.loop.watch(self)  # nothing more is read until the claim is settled
            self.hall.join(self, nickname, self._join_settled, self._first_room)
        except ProtocolError as exc:  # refused at once: no claim was asked for
            with self._lock:
                self._joining = None
            self.state = HANDSHAKE
            self.loop.watch(self)
            if isinstance(exc, AddressBanned):  # no other nickname helps
                self.log.event("refused", addr=self.ip, code=errors.BANNED)
                self.close("error", protocol.error_frame(exc.code, exc.message))
            else:
                self._nickname_refused(shown, exc)

    def _join_settled(self, error: ProtocolError | None) -> None:
        """The hall's answer to the join (any thread): in the default room now, or refused."""
        with self._lock:
            shown = self._joining[0] if self._joining is not None else ""
            self._joining = (shown, True, error)
            self.joined = error is None
            closed_meanwhile = self.closing and error is None
        if closed_meanwhile:  # close() saw joined=False: leave here (idempotent)
            self.hall.leave(self, "error")
            return
        if self.loop.in_thread():
            self._after_join()
        else:
            self.loop.call_soon(self, self._after_join)

    def _after_join(self, serve: bool = True) -> None:
        """On its loop: go on chatting, or ask for another nickname. With serve=False
        (an upgrade's record, no loop running) only the state moves on: the new image
        serves what is buffered."""
        with self._lock:
            joining = self._joining
            if joining is None or not joining[1]:
                return  # not settled yet
            self._joining = None
        if self.closing or self.state != JOINING:
            return
        error = joining[2]
        if error is not None:
            self.state = HANDSHAKE
            self._nickname_refused(joining[0], error)
        else:
            self.state = CHAT
        if serve:
            self.loop.watch(self)
            if self.state == CHAT and self.reader.buffer:
                self._serve()

    def _nickname_refused(self, shown: str, exc: ProtocolError) -> None:
        self.nickname = ""
        if exc.code in ROOM_REFUSALS:  # the hello's room: no other nickname helps
            self.log.event("refused", addr=self.address, nick=shown, code=exc.code)
            self.close("error", protocol.error_frame(exc.code, exc.message))
            return
        self.log.event("nick_rejected", addr=self.address, nick=shown, code=exc.code)
        if self.quiet or self.role == "bot":  # the next free variant of its name, or the
            #                                   refusal
            variant = next(self._variants, None) if exc.code == errors.NICKNAME_TAKEN else None
            if variant is not None:
                self._join(variant, variant)
            else:
                self.close("error", protocol.error_frame(exc.code, exc.message))
            return
        self.attempts += 1
        if self.attempts >= NICKNAME_ATTEMPTS:
            self.close("error", protocol.error_frame(
                exc.code, f"{exc.message}; too many attempts, closing"))
            return
        self.reader.buffer.clear()
        self.deliver(protocol.error_frame(exc.code, exc.message))
        self.deliver(protocol.NICKNAME_PROMPT)

    # --- frames

    def deferred_confirms(self) -> tuple[list[str], bool] | None:
        """For serve_deferred_reads: None when nothing of it waits (or it is ending);
        else the confirms at the head of its buffer, taken out, and whether anything
        else is left in it."""
        if not self._deferred:
            return None
        self._deferred = False
        if self.state != CHAT or self.closing:
            return None
        uuids = take_confirms(self.reader)
        return uuids, bool(self.reader.buffer)

    def confirms_unknown(self, unknown: list[str]) -> None:
        """The uuids of a batch of its confirms that the hall did not know: each an error
        that counts, and past error_limit the end."""
        self._unknown_confirms(unknown)
        if self._ending is not None:
            self._end_with(self._ending)

    def serve_after(self, confirms: list[str]) -> None:
        """Its buffer, after the confirms taken from its head (deferred_confirms)."""
        self._serve(confirms)

    def _serve(self, confirms: list[str] | None = None) -> None:
        """Take every whole frame buffered; whatever was valid before an end takes
        effect (the confirms read with a fatal frame are settled first). `confirms`:
        taken from the head of the buffer already (serve_deferred_reads)."""
        self._deferred = False  # all of the buffer, what was deferred too
        config = self.config  # the settings now: a reload may change them
        reader = self.reader
        confirms = confirms or []  # confirms read together are settled together
        ending: tuple[str, bytes | None] | None = None
        try:
            while ending is None and not self.closing:
                confirms += take_confirms(reader)  # the common case under load, in bulk
                try:
                    body = reader.take_body(config.max_frame)
                    if body is None:
                        break
                    frame = protocol.parse_client_frame(body, config.max_text,
                                                        config.max_json_depth)
                    if isinstance(frame, protocol.Confirm):
                        confirms.append(frame.uuid)
                        continue
                    if isinstance(frame, protocol.Confirms):
                        confirms += frame.uuids
                        continue
                    if confirms:  # what was confirmed before takes effect first
                        self._confirm(confirms)
                        confirms = []
                        if self._ending is not None:
                            break
                    if isinstance(frame, ChatMessage):
                        self._on_message(frame)
                    else:
                        self._on_request(frame)
                except ProtocolError as exc:
                    report = protocol.error_frame(exc.code, exc.message, exc.uuid,
                                                  exc.request_id)
                    if exc.fatal:
                        self._log_error(exc.code)
                        ending = ("error", report)
                    elif self._count_error(exc.code):
                        ending = ("errors", self._too_many_errors(exc))
                    else:
                        self.deliver(report)
                if self._ending is not None:
                    ending = self._ending
        finally:
            if confirms and self._ending is None:
                self._confirm(confirms)
        if ending is None:
            ending = self._ending
        if ending is not None:
            self._end_with(ending)

    def _end_with(self, ending: tuple[str, bytes | None]) -> None:
        reason, final_frame = ending
        if reason == "flood":  # it may still read the receipts of what it sent
            self._depart(reason, final_frame)
        else:
            self.close(reason, final_frame)

    def _depart(self, reason: str, final_frame: bytes | None) -> None:
        """The client leaves the hall, but it may still read: it ended its side (EOF),
        or it was disconnected for flooding after its first messages went out.

        Its connection stays open for writing until the receipts of its own messages
        are sent, or shutdown_grace passes; then what was queued for it and
        final_frame go out before the socket is shut down.
        """
        if reason == "error":  # a frame cut short: nothing more to wait for
            self.close(reason, final_frame)
            return
        with self._lock:
            if self.closing:
                return
        self.state = DEPARTING
        self.loop.watch(self)  # no more reading
        self._departure = (reason, final_frame)
        self.depart_deadline = time.monotonic() + self.config.shutdown_grace
        if self.joined:
            self.hall.leave(self, reason, keep_receipts=True)
        if self.hall.awaiting_receipts(self):  # receipts_done() ends it, or the deadline
            self._at(self.depart_deadline)
        else:
            self._departed()

    def receipts_done(self) -> None:
        """The hall has handed this departed member its last receipt (any thread)."""
        if self.loop.in_thread():
            self._departed()
        else:
            self.loop.call_soon(self, self._departed)

    def _departed(self) -> None:
        """On its loop: what was queued and the final frame go out, then the close."""
        if self.state != DEPARTING or self.closing:
            return
        reason, final_frame = self._departure
        self._end(final_frame, flush=True)

    # --- protocol errors: logged (identical ones coalesced) and counted

    def _count_error(self, code: str) -> bool:
        """Log and count one recoverable error; True when the client is over error_limit."""
        self._log_error(code)
        # unknown_uuid counts too (confirms for nothing cost the loop more than frames do);
        # a laptop that wakes after confirm_timeout is not held to it: the hall takes
        # confirms of what it settled recently silently
        self._errors = count_recent(self._errors, ERROR_WINDOW)
        return len(self._errors) > self.config.error_limit

    def _too_many_errors(self, exc: ProtocolError) -> bytes:
        self._flush_error_repeats()  # the `leave reason=errors` line follows
        return protocol.error_frame(
            exc.code, f"{exc.message}; too many errors ({len(self._errors)} in "
            f"{ERROR_WINDOW:.0f} s): disconnected", exc.uuid)

    def _log_error(self, code: str) -> None:
        """One `protocol_error` line, or a count towards the next `repeated=N` line.

        A client that repeats one mistake (300,000 confirms for unknown uuids, say)
        must not fill the traffic log's queue and push other clients' events out.
        """
        now = time.monotonic()
        self.server.errors[code] = self.server.errors.get(code, 0) + 1  # (metrics)
        last = self._logged_error
        if last is not None and last[0] == code and now - last[1] < COALESCE_WINDOW:
            self._error_repeats += 1
            return
        self._flush_error_repeats()
        self.log.event("protocol_error", nick=self.nickname or None, addr=self.address, code=code)
        self._logged_error = (code, now)

    def _flush_error_repeats(self) -> None:
        repeats, self._error_repeats = self._error_repeats, 0  # close() may run elsewhere
        if repeats and self._logged_error is not None:
            self.log.event("protocol_error", nick=self.nickname or None, addr=self.address,
                           code=self._logged_error[0], repeated=repeats)

    def _confirm(self, uuids: list[str]) -> None:
        """Settle confirms read together; each for nothing is an error that counts (past
        error_limit the client leaves and the rest are not answered)."""
        self._unknown_confirms(self.hall.confirm_many(self, uuids))

    def _unknown_confirms(self, unknown: list[str]) -> None:
        for frame_uuid in unknown:
            error = ProtocolError(errors.UNKNOWN_UUID, f"no pending message {frame_uuid} "
                                  "for you to confirm", frame_uuid)
            if self._count_error(error.code):
                self._ending = ("errors", self._too_many_errors(error))
                return
            self.deliver(protocol.error_frame(error.code, error.message, frame_uuid))

    def _on_message(self, message: ChatMessage) -> None:
        if not self._take_token():
            self._flooded(message.uuid)
            return
        recipients = self.hall.message(self, message.uuid, message.text, message.to,
                                       message.action, message.room)
        self.sent += 1
        if self.quiet:  # a poster is told at once that the server took it
            self.deliver(protocol.accepted_frame(message.uuid, recipients))

    def _on_request(self, request: Request) -> None:
        """A request (protocol.REQUESTS); they count against the flood limit like
        messages. The hall's refusals carry the request's id."""
        if not self._take_token():
            self._flooded(None, request.id)
            return
        hall, cmd = self.hall, request.cmd
        if cmd == "who":
            self.deliver(hall.names(request.id, request.room))
        elif cmd == "rooms":
            self.deliver(protocol.rooms_frame(hall.room_list(), request.id))
        elif cmd == "join":
            hall.enter(self, request.room or "", request.id)
        elif cmd == "part":
            hall.part(self, request.room or "", request.id)
        elif cmd == "topic":
            if request.topic is not None and self.config.topic_by == "moderator":
                self._moderator_only(request)
            hall.topic(self, request.room or "", request.topic, request.id)
        elif cmd == "login":
            self._login(request.account or "", request.password or "", request.id)
        elif cmd == "away":
            hall.set_away(self, request.text, request.id)
        elif cmd == "history":
            hall.scroll(self, request.room, request.before, request.limit, request.id)
        elif cmd == "search":
            hall.search(self, request.room, request.words or "", request.syntax == "fts5",
                        request.limit, request.id)
        elif cmd in ("kick", "ban", "unban"):
            self._moderator_only(request)
            if hall.moderation is None:
                raise ProtocolError(errors.NOT_PERMITTED, "moderation is not ready yet",
                                    request_id=request.id)
            try:
                done = hall.moderation.moderate(self, cmd, {
                    "nickname": request.nickname, "room": request.room,
                    "reason": request.reason, "target": request.target,
                    "duration": request.duration})
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, request_id=request.id) from None
            self.deliver(protocol.done_frame(cmd, done, request.id))
        elif cmd == "nick":
            try:
                new = nicknames.check_nickname((request.nickname or "").encode("utf-8",
                                                                               "replace"),
                                               self.config.max_nickname)
                hall.rename(self, new, lambda error: self._renamed(error, request.id))
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, request_id=request.id) from None

    def _moderator_only(self, request: Request) -> None:
        if self.role != "moderator":
            raise ProtocolError(errors.NOT_PERMITTED, f"only a moderator may {request.cmd}"
                                + ("" if self.account else ": log in to a moderator's "
                                   "account"), request_id=request.id)

    def _renamed(self, error: ProtocolError | None, request_id: int | str | None) -> None:
        """The broker's answer to a `nick` request (any thread): a refusal goes to the
        asker; a rename goes to everyone (the hall published it)."""
        if error is not None:
            self.deliver(protocol.error_frame(error.code, error.message,
                                              request_id=request_id))

    def _flooded(self, frame_uuid: str | None, request_id: int | str | None = None) -> None:
        """A message or request over the flood limit: dropped; three in 10 s disconnect."""
        self.log.event("flood", nick=self.nickname or None, uuid=frame_uuid)
        self.server.flood_drops += 1
        self._flood_strikes = count_recent(self._flood_strikes, FLOOD_STRIKE_WINDOW)
        if len(self._flood_strikes) >= FLOOD_STRIKES:
            self.server.flood_disconnects += 1
            self._ending = ("flood", protocol.error_frame(
                errors.FLOOD, "too many messages: disconnected", frame_uuid, request_id))
        else:
            self.deliver(protocol.error_frame(
                errors.FLOOD, "too many messages: this one was dropped", frame_uuid,
                request_id))

    def _take_token(self) -> bool:
        """Token bucket: flood_rate per second, up to flood_burst at once."""
        rate = self.config.flood_rate
        if rate == 0:
            return True
        now = time.monotonic()
        burst = self.config.flood_burst
        if self._tokens is None:
            self._tokens = float(burst)
        else:
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


    # --- hitless upgrade: the session as a plain record, and back

    def record(self) -> dict:
        """Everything needed to go on in a new image; only while no loop runs. The bytes
        due to the client (its own frames and the broadcasts it was not sent yet) are
        flattened into `unsent`: the new image starts a new broadcast log."""
        now = time.monotonic()
        if self.state == JOINING:  # the broker has settled every claim by now
            self._after_join(serve=False)
            if self.state == JOINING:  # never answered: the new image asks again
                self.state = HANDSHAKE
                self.deliver(protocol.NICKNAME_PROMPT)
        received = self.received if self.joined else 0
        fresh = not self.started  # accepted, never run by a loop: the new image starts it
        with self._lock:
            unsent = b"" if self._abort or self.loop is None else self._collect()
        departure = None
        if self.state == DEPARTING:
            reason, final_frame = self._departure
            departure = [reason, b64(final_frame) if final_frame else None,
                         max(0.0, self.depart_deadline - now)]
        carried = self.transport.record()
        if carried is None:  # the upgrade carries plaintext sessions only
            raise RuntimeError("a TLS session cannot cross an exec")
        return {
            **carried, "ip": self.ip,
            "port": self.port, "state": self.state,
            "fresh": fresh, "nickname": self.nickname, "joined": self.joined,
            "closing": self.closing, "connected": self.connected,
            "idle": now - self.last_active, "sent": self.sent, "received": received,
            "rbuf": b64(bytes(self.reader.buffer)), "unsent": b64(unsent),
            "attempts": self.attempts,
            "handshake_left": max(0.0, self.handshake_deadline - now),
            "tokens": self._tokens, "tokens_age": now - self._tokens_at,
            "departure": departure, "quiet": self.quiet,
            "account": self.account, "role": self.role,
        }

    @classmethod
    def resumed(cls, record: dict, server: SessionServer) -> Session:
        """The session a record describes, on the same socket (fd kept across exec)."""
        transport: Transport = WebSocketTransport.resumed(record) if "web" in record else \
            IrcTransport.resumed(record, server.config) if "irc" in record else \
            PlainTransport.resumed(record)
        conn = cls(transport, (record["ip"], record["port"]), server)
        conn.restore(record)
        return conn

    def restore(self, record: dict) -> None:
        """Take the state of a record (before any loop adopts this connection)."""
        now = time.monotonic()
        self.nickname = record["nickname"] or ""
        self.joined = record["joined"]
        self.connected = record["connected"]
        self.last_active = now - record["idle"]
        self.sent = record["sent"]
        self.received_before = record["received"]  # `received` goes on counting from there
        self.reader.buffer += unb64(record["rbuf"])
        unsent = unb64(record["unsent"])
        if unsent:  # before anything the new image sends
            self._private.append(((), unsent))
            self.private_bytes = len(unsent)
        self.attempts = record["attempts"]
        self.quiet = record.get("quiet", False)
        self.account, self.role = record.get("account"), record.get("role", GUEST)
        self._tokens = record["tokens"]
        self._tokens_at = now - record["tokens_age"]
        if not record["fresh"]:
            self._resumed = record

    def _resume_on(self, loop: EventLoop) -> None:
        record, self._resumed = self._resumed, None
        assert record is not None
        self.loop = loop
        now = time.monotonic()
        self.state = record["state"]
        if self.state == HANDSHAKE:
            self.handshake_deadline = now + record["handshake_left"]
            self._at(self.handshake_deadline)
        elif self.state == DEPARTING:
            reason, final_frame, left = record["departure"]
            self._departure = (reason, unb64(final_frame) if final_frame else None)
            self.depart_deadline = now + left
        if record["closing"]:
            self._end(None, flush=True)
        if self.state == DEPARTING:  # the hall's receipts for it came along
            if self.hall.awaiting_receipts(self):
                self._at(self.depart_deadline)
            else:
                self._departed()
        loop.watch(self)
        loop.schedule(self)  # what was due goes out first
        if self.state == CHAT and self.reader.has_frame():  # a whole frame came meanwhile
            self._serve()


def serve_deferred_reads(sessions: Sequence[Any], guard: Callable[..., None]) -> None:
    """A loop's deferred reads (EventLoop.serve_later), served after its round: the
    confirms alone that most of them hold are settled together, in one call to the
    hall; a session with other frames besides has them served after its confirms.
    `guard(session, method, *args)` runs a session's handler (a failure ends it alone)."""
    batch: list[tuple[Session, list[str]]] = []
    others: list[tuple[Session, list[str]]] = []
    for session in sessions:
        taken = session.deferred_confirms()
        if taken is None:
            continue
        uuids, more = taken
        if more:  # a frame of another kind, or one not yet whole
            others.append((session, uuids))
        elif uuids:
            batch.append((session, uuids))
    if batch:
        settled: list[list[str]] = []
        hall = batch[0][0].hall
        guard(batch[0][0], lambda: settled.extend(hall.confirm_batch(batch)))
        for (session, _), unknown in zip(batch, settled, strict=False):  # [] if it failed
            if unknown:
                guard(session, session.confirms_unknown, unknown)
    for session, uuids in others:
        guard(session, session.serve_after, uuids)
