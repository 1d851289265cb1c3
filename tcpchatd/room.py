"""The room: members, broadcast, delivery receipts, kick, counters.

One lock guards membership and pending receipts and nothing else: frames are
encoded before it is taken and handed to members after it is released, so no
socket I/O (nor a slow member) ever happens under it. The room knows a member
only by the Member protocol, so it can be tested without sockets.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import errors, protocol
from .errors import AdminError, ProtocolError


class Member(Protocol):
    nickname: str | None

    def deliver(self, frame: bytes, chat: bool = False) -> None:
        """Queue a frame for the member; never blocks (it may close the member)."""

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None) -> None:
        """Leave the room and disconnect, after sending final_frame if given."""


class EventLog(Protocol):
    def event(self, name: str, **fields: Any) -> None: ...


@dataclass(eq=False)
class Pending:
    """A message whose recipients have not all confirmed yet."""

    uuid: str
    sender: Member
    waiting: set = field(repr=False)
    recipients: int
    deadline: float
    delivered: int = 0


@dataclass
class Counters:
    messages: int = 0
    deliveries: int = 0
    confirms: int = 0
    undelivered: int = 0
    send_queue_disconnects: int = 0


class Room:
    """One chat room; `config` is replaced as a whole on reload."""

    def __init__(self, config: Any, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.lock = threading.Lock()
        self.counters = Counters()
        self._members: dict[str, Member] = {}        # casefolded nickname -> member
        self._pending: dict[str, Pending] = {}       # uuid -> pending receipt
        self._awaiting: dict[Member, OrderedDict] = {}  # recipient -> uuids it may confirm
        self._sent: dict[Member, set[str]] = {}      # sender -> its pending uuids
        self._deadlines: deque[tuple[float, str]] = deque()

    # --- membership

    def join(self, member: Member, nickname: str) -> None:
        """Add a member under its nickname, or raise nickname_taken."""
        with self.lock:
            key = nickname.casefold()
            if key in self._members:
                raise ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")
            member.nickname = nickname
            self._members[key] = member
            self._awaiting[member] = OrderedDict()
            self._sent[member] = set()
            audience = self._audience(member)
        # logged before anyone hears of it, so the log keeps the room's order of joins
        self.log.event("join", nick=nickname, addr=getattr(member, "address", None))
        frame = protocol.join_frame(nickname)
        for other in audience:
            other.deliver(frame)

    def leave(self, member: Member, reason: str, detail: str | None = None) -> None:
        """Remove a member (idempotent); settle the receipts that waited on it."""
        with self.lock:
            key = (member.nickname or "").casefold()
            if self._members.get(key) is not member:
                return
            del self._members[key]
            finished = []
            for frame_uuid in self._awaiting.pop(member):
                pending = self._pending[frame_uuid]
                pending.waiting.discard(member)
                if not pending.waiting:
                    finished.append(self._finish(pending))
            for frame_uuid in list(self._sent[member]):  # nobody is left to tell
                self._forget(self._pending[frame_uuid])
            del self._sent[member]
            # At shutdown everyone gets the shutdown notice instead of N leave notices.
            quiet = reason == "shutdown" or len(self._members) >= self.config.announce_joins_max
            audience = [] if quiet else list(self._members.values())
        frame = protocol.leave_frame(member.nickname, reason, detail)
        for other in audience:
            other.deliver(frame)
        self._report(finished)

    def _audience(self, newcomer: Member) -> list[Member]:
        """Who hears of a join: everyone, or only the newcomer in a very large room."""
        if len(self._members) > self.config.announce_joins_max:
            return [newcomer]
        return list(self._members.values())

    def find(self, nickname: str) -> Member:
        with self.lock:
            member = self._members.get(nickname.casefold())
        if member is None:
            raise AdminError(errors.NO_SUCH_NICKNAME, f"no such nickname: {nickname}")
        return member

    def members(self) -> list[Member]:
        with self.lock:
            return list(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    # --- messages and receipts

    def message(self, sender: Member, frame_uuid: str, text: str) -> int:
        """Broadcast a message to everyone but its sender; returns the recipient count."""
        frame = protocol.chat_frame(frame_uuid, sender.nickname, text)
        now = time.monotonic()
        with self.lock:
            if frame_uuid in self._pending:
                raise ProtocolError(errors.BAD_UUID, "uuid is already in use by a pending "
                                    "message", frame_uuid)
            if sender not in self._awaiting:
                return 0  # left while this was read
            recipients = [m for m in self._members.values() if m is not sender]
            self.counters.messages += 1
            self.counters.deliveries += len(recipients)
            finished = []
            if recipients:
                pending = Pending(frame_uuid, sender, set(recipients), len(recipients),
                                  now + self.config.confirm_timeout)
                self._pending[frame_uuid] = pending
                self._sent[sender].add(frame_uuid)
                self._deadlines.append((pending.deadline, frame_uuid))
                limit = self.config.pending_confirms
                for member in recipients:
                    awaiting = self._awaiting[member]
                    awaiting[frame_uuid] = None
                    if len(awaiting) > limit:  # the oldest receipt expires for this one
                        old = self._pending[awaiting.popitem(last=False)[0]]
                        old.waiting.discard(member)
                        if not old.waiting:
                            finished.append(self._finish(old))
            else:
                self.counters.undelivered += 1
        self.log.event("message", nick=sender.nickname, uuid=frame_uuid,
                       recipients=len(recipients), text=text)
        if not recipients:
            sender.deliver(protocol.undelivered_frame(frame_uuid, protocol.NOBODY_HERE))
            self.log.event("undelivered", uuid=frame_uuid, reason="nobody_here")
        for member in recipients:
            member.deliver(frame, chat=True)
        self._report(finished)
        return len(recipients)

    def confirm(self, member: Member, frame_uuid: str) -> None:
        """A recipient confirms a message; only once, and only if it was sent to it."""
        if self.confirm_many(member, [frame_uuid]):
            raise ProtocolError(errors.UNKNOWN_UUID, f"no pending message {frame_uuid} "
                                "for you to confirm", frame_uuid)

    def confirm_many(self, member: Member, uuids: list[str]) -> list[str]:
        """Confirms that arrived together, under one lock; returns the unknown uuids.

        Under load a reader finds many confirms in one read: taking the room lock once
        for all of them keeps 200 reader threads from queueing on it 200 times.
        """
        unknown, finished = [], []
        with self.lock:
            awaiting = self._awaiting.get(member)
            for frame_uuid in uuids:
                if awaiting is None or frame_uuid not in awaiting:
                    unknown.append(frame_uuid)
                    continue
                del awaiting[frame_uuid]
                pending = self._pending[frame_uuid]
                pending.delivered += 1
                pending.waiting.discard(member)
                self.counters.confirms += 1
                if not pending.waiting:
                    finished.append(self._finish(pending))
        if self.config.log_confirms == "each":
            for frame_uuid in uuids:
                if frame_uuid not in unknown:
                    self.log.event("confirm", uuid=frame_uuid, nick=member.nickname)
        self._report(finished)
        return unknown

    def expire(self, now: float | None = None) -> None:
        """Settle every pending receipt whose confirm timeout has passed."""
        now = time.monotonic() if now is None else now
        finished = []
        with self.lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, frame_uuid = self._deadlines.popleft()
                pending = self._pending.get(frame_uuid)
                if pending is not None and pending.deadline == deadline:
                    finished.append(self._finish(pending))
        self._report(finished)

    def _finish(self, pending: Pending) -> Pending:
        """Under the lock: drop the pending receipt; _report tells the sender later."""
        self._forget(pending)
        if pending.delivered == 0:
            self.counters.undelivered += 1
        return pending

    def _forget(self, pending: Pending) -> None:
        del self._pending[pending.uuid]
        self._sent[pending.sender].discard(pending.uuid)
        for member in pending.waiting:  # those that timed out
            self._awaiting[member].pop(pending.uuid, None)

    def _report(self, finished: list[Pending]) -> None:
        for pending in finished:
            if pending.delivered:
                frame = protocol.receipt_frame(pending.uuid, pending.delivered,
                                               pending.recipients)
                self.log.event("delivery", uuid=pending.uuid, delivered=pending.delivered,
                               recipients=pending.recipients)
            else:
                frame = protocol.undelivered_frame(pending.uuid, protocol.NOBODY_CONFIRMED)
                self.log.event("undelivered", uuid=pending.uuid, reason="nobody_confirmed")
            pending.sender.deliver(frame)

    # --- operator actions

    def kick(self, nickname: str, reason: str) -> str:
        member = self.find(nickname)
        member.close("kicked", protocol.kick_frame(reason), detail=reason)
        return member.nickname

    def announce(self, text: str) -> int:
        members = self.members()
        frame = protocol.announce_frame(text)
        for member in members:
            member.deliver(frame)
        return len(members)

    def count_send_queue_disconnect(self) -> None:
        with self.lock:
            self.counters.send_queue_disconnects += 1

    def probe(self, timeout: float) -> bool:
        """True when the lock can be taken within `timeout` (the watchdog's check)."""
        if not self.lock.acquire(timeout=timeout):
            return False
        self.lock.release()
        return True

    def pending_count(self) -> int:
        return len(self._pending)
