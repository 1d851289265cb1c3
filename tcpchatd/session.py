"""One chat client: handshake, reader loop, flood limit; its frames go through an Outbox.

One thread per client, the reader (handshake, then frames). Frames for a client
only go into its Outbox (outbox.py), which the writer-pool thread sends, so a
client that stops reading delays nobody: past the bound it is disconnected with
reason `send_queue_exceeded`.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from . import errors, nicknames, protocol
from .confirms import take_confirms
from .errors import ProtocolError
from .outbox import Outbox
from .protocol import ChatMessage, FrameReader, PeerClosedMidFrame, Request

if TYPE_CHECKING:
    from .server import ChatServer

NICKNAME_ATTEMPTS = 3
FLOOD_STRIKES = 3          # dropped messages ...
FLOOD_STRIKE_WINDOW = 10.0  # ... within this many seconds disconnect
ERROR_WINDOW = 10.0         # error_limit counts the protocol errors of this many seconds
# unknown_uuid is not held against a client: a laptop that wakes after confirm_timeout
# confirms its backlog honestly.
UNCOUNTED_ERRORS = frozenset({errors.UNKNOWN_UUID})
COALESCE_WINDOW = 10.0      # identical error lines within it become one `repeated=N` line
READER_NICENESS = 5         # relative to the writer pool and accept loops (see _run)


def _count_recent(times: collections.deque[float], window: float) -> int:
    """Note one event now; how many fell within the last `window` seconds."""
    now = time.monotonic()
    times.append(now)
    while times[0] < now - window:
        times.popleft()
    return len(times)


class Session:
    """A connected client; a room Member once its nickname is accepted."""

    def __init__(self, sock: socket.socket, address: tuple, server: ChatServer) -> None:
        self.sock = sock
        self.server = server
        self.room = server.room
        self.log = server.log
        self.ip = address[0]
        self.address = (f"[{address[0]}]:{address[1]}" if ":" in address[0]
                        else f"{address[0]}:{address[1]}")
        self.nickname: str | None = None
        self.joined = False
        self.connected = time.time()
        self.last_active = time.monotonic()
        self.sent = 0       # messages this client sent
        self.close_deadline: float | None = None
        self.outbox = Outbox(sock, server.pool, limit=lambda: self.config.send_queue,
                             on_overflow=self._overflow)
        self._state_lock = threading.Lock()
        self._closing = False
        self._tokens: float | None = None  # the bucket starts full
        self._tokens_at = 0.0
        self._flood_strikes: collections.deque[float] = collections.deque()
        self._errors: collections.deque[float] = collections.deque()  # counted, recent
        self._logged_error: tuple[str, float] | None = None  # (code, when) of the last line
        self._error_repeats = 0  # identical errors since that line, not logged yet
        self._ending: tuple[str, bytes] | None = None  # (reason, final frame): stop reading
        self._reader = threading.Thread(target=self._run, daemon=True,
                                        name=f"reader {self.address}")

    @property
    def config(self):
        return self.server.config

    @property
    def received(self) -> int:
        """Chat messages delivered to this client."""
        return self.outbox.chat_frames

    def start(self) -> None:
        self._reader.start()

    def join_threads(self, timeout: float) -> None:
        self._reader.join(timeout)

    # --- outbound: any thread may call these

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this client; past the bound, disconnect the client."""
        if not self.outbox.put(frame):
            self._overflow()

    def _overflow(self) -> None:
        """Over send_queue bytes (found by deliver, or by the pool for broadcasts)."""
        self.room.count_send_queue_disconnect()
        self.close(errors.SEND_QUEUE_EXCEEDED, protocol.error_frame(
            errors.SEND_QUEUE_EXCEEDED, "you are not reading: disconnected"), drop_queue=True)

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None, drop_queue: bool = False) -> None:
        """Leave the room and disconnect once; final_frame is flushed first (bounded)."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
        if final_frame is None:
            self.outbox.kill()
        else:  # the server's reaper shuts it down if the flush takes too long
            self.close_deadline = time.monotonic() + self.config.shutdown_grace
            self.outbox.finish(final_frame, drop=drop_queue)
        if self.joined:  # the room logs the leave, in its order of events
            self.room.leave(self, reason, detail)

    def shutdown_socket(self) -> None:
        self.outbox.kill()

    # --- reader thread

    def _run(self) -> None:
        reason = "error"
        try:
            # Readers yield the CPU to the writer pool: when 10,000 confirms come in at
            # once, sending the message to the last recipients matters more than reading
            # the first receipts (fan-out to 10,000 was sooner in most runs here, but the
            # spread between runs is wide; see BENCHMARKS.md).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICENESS)
            self._configure_socket()
            reader = self._handshake()
            if reader is not None:
                reason, final_frame = self._serve(reader)
                if reason in ("quit", "flood"):  # it may still read its receipts
                    self._leave_keeping_receipts(reason, final_frame)
                else:
                    self.close(reason, final_frame)
        except OSError:
            reason = "error"
        except Exception:  # never die silently: log the traceback, disconnect this client only
            self.server.handle_error(self)
            reason = "error"
        finally:
            self._flush_error_repeats()
            self.close(reason)
            if self.close_deadline is not None:  # a final frame (kick, error) is on its way
                self.outbox.wait_sent(max(0.0, self.close_deadline - time.monotonic()))
            self.outbox.release()
            self.server.session_ended(self)

    def _configure_socket(self) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.keepalive:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)

    def _handshake(self) -> FrameReader | None:
        """Ask for a nickname up to three times; the reader for the frame stream, or None."""
        deadline = time.monotonic() + self.config.handshake_timeout
        self.deliver(protocol.NICKNAME_PROMPT)
        for attempt in range(1, NICKNAME_ATTEMPTS + 1):
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            remaining = deadline - time.monotonic()
            if remaining > 0 and poller.poll(remaining * 1000):
                data = self.sock.recv(protocol.RECV_SIZE)
            else:
                self.log.event("protocol_error", addr=self.address, code=errors.HANDSHAKE_TIMEOUT)
                self.close("timeout", protocol.error_frame(
                    errors.HANDSHAKE_TIMEOUT, "no nickname was sent in time"))
                return None
            if not data:
                return None
            raw, rest = protocol.take_nickname(data)
            try:
                self.room.join(self, nicknames.check_nickname(raw, self.config.max_nickname))
            except ProtocolError as exc:
                self.nickname = None
                self.log.event("nick_rejected", addr=self.address,
                               nick=raw.decode("utf-8", "replace"), code=exc.code)
                if attempt == NICKNAME_ATTEMPTS:
                    self.close("error", protocol.error_frame(
                        exc.code, f"{exc.message}; too many attempts, closing"))
                    return None
                self.deliver(protocol.error_frame(exc.code, exc.message))
                self.deliver(protocol.NICKNAME_PROMPT)
                continue
            self.joined = True
            if self._closing:  # closed by another thread while joining: close() saw
                self.room.leave(self, "error")  # joined=False, so leave here (idempotent)
                return None
            return FrameReader(self.sock.recv, rest)
        return None

    def _serve(self, reader: FrameReader) -> tuple[str, bytes | None]:
        """Read frames until the client leaves: (leave reason, final frame or None).

        Whatever was valid before the end takes effect: the confirms read with a fatal
        frame (a bad header) are settled before the connection closes.
        """
        confirms: list[str] = []  # confirms read together are settled together
        try:
            while True:
                confirms += take_confirms(reader)  # the common case under load, in bulk
                if confirms and not reader.has_frame():
                    self._confirm(confirms)
                    confirms = []
                try:
                    body = reader.next_body(self.config.max_frame)
                    if body is None:
                        return "quit", None
                    self.last_active = time.monotonic()
                    # the settings now, not from before the wait: a reload may change them
                    config = self.config
                    frame = protocol.parse_client_frame(body, config.max_text,
                                                        config.max_json_depth)
                    if isinstance(frame, protocol.Confirm):
                        confirms.append(frame.uuid)
                        continue
                    if confirms:  # what was confirmed before takes effect first
                        self._confirm(confirms)
                        confirms = []
                    if isinstance(frame, ChatMessage):
                        self._on_message(frame)
                    else:
                        self._on_request(frame)
                except PeerClosedMidFrame:
                    return "error", None
                except ProtocolError as exc:
                    report = protocol.error_frame(exc.code, exc.message, exc.uuid,
                                                  exc.request_id)
                    if exc.fatal:
                        self._log_error(exc.code)
                        return "error", report
                    if self._count_error(exc.code):
                        return "errors", self._too_many_errors(exc)
                    self.deliver(report)
                if self._ending is not None:
                    return self._ending
                if self._closing:
                    return "error", None
        finally:
            if confirms:
                self._confirm(confirms)

    def _leave_keeping_receipts(self, reason: str, final_frame: bytes | None) -> None:
        """The client leaves the room, but it may still read: it ended its side (EOF),
        or it was disconnected for flooding after its first messages went out.

        Its connection stays open for writing until the receipts of its own messages
        are sent, or shutdown_grace passes; what was queued for it (its own join notice,
        say) and final_frame are flushed before the socket is shut down.
        """
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
        if self.joined:
            self.room.leave(self, reason, keep_receipts=True)
        grace = self.config.shutdown_grace
        deadline = time.monotonic() + grace
        while self.room.awaiting_receipts(self) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.close_deadline = time.monotonic() + grace
        self.outbox.finish(final_frame)

    # --- protocol errors: logged (identical ones coalesced) and counted

    def _count_error(self, code: str) -> bool:
        """Log and count one recoverable error; True when the client is over error_limit."""
        self._log_error(code)
        if code in UNCOUNTED_ERRORS:
            return False
        return _count_recent(self._errors, ERROR_WINDOW) > self.config.error_limit

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
        last = self._logged_error
        if last is not None and last[0] == code and now - last[1] < COALESCE_WINDOW:
            self._error_repeats += 1
            return
        self._flush_error_repeats()
        self.log.event("protocol_error", nick=self.nickname, addr=self.address, code=code)
        self._logged_error = (code, now)

    def _flush_error_repeats(self) -> None:
        if self._error_repeats:
            self.log.event("protocol_error", nick=self.nickname, addr=self.address,
                           code=self._logged_error[0], repeated=self._error_repeats)
            self._error_repeats = 0

    def _confirm(self, uuids: list[str]) -> None:
        for frame_uuid in self.room.confirm_many(self, uuids):
            self._count_error(errors.UNKNOWN_UUID)
            self.deliver(protocol.error_frame(
                errors.UNKNOWN_UUID, f"no pending message {frame_uuid} for you to confirm",
                frame_uuid))

    def _on_message(self, message: ChatMessage) -> None:
        if not self._take_token():
            self._flooded(message.uuid)
            return
        self.room.message(self, message.uuid, message.text, message.to, message.action)
        self.sent += 1

    def _on_request(self, request: Request) -> None:
        """`who` and `nick`; they count against the flood limit like messages."""
        if not self._take_token():
            self._flooded(None, request.id)
            return
        if request.cmd == "who":
            self.deliver(self.room.names(request.id))
        elif request.cmd == "nick":
            try:
                new = nicknames.check_nickname(request.nickname.encode("utf-8", "replace"),
                                               self.config.max_nickname)
                self.room.rename(self, new)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, request_id=request.id) from None
        else:
            raise ProtocolError(errors.UNKNOWN_COMMAND, f"unknown command {request.cmd!r}: "
                                "this server knows 'who' and 'nick'", request_id=request.id)

    def _flooded(self, frame_uuid: str | None, request_id: int | str | None = None) -> None:
        """A message or request over the flood limit: dropped; three in 10 s disconnect."""
        self.log.event("flood", nick=self.nickname, uuid=frame_uuid)
        if _count_recent(self._flood_strikes, FLOOD_STRIKE_WINDOW) >= FLOOD_STRIKES:  # _serve ends, receipts still go out
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
