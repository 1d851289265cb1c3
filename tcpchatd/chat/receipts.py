"""Delivery receipts waiting to be settled: the pending messages in the order sent, their
deadlines in heaps, and the recently settled ones.

The room decides who owes what (its members' accounts) and when a receipt is settled;
this keeps the messages and the clocks. A confirm_timeout deadline and a receipt_wait
deadline are each a heap, not a queue: a reload that shortens either puts new deadlines
before old ones. Not thread-safe on its own: the room calls it under its lock.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# How many settled messages are remembered, per pending_confirms, so that a confirm that
# comes after its message was settled (the sender left, or confirm_timeout passed while a
# laptop slept) is taken silently instead of drawing unknown_uuid.
SETTLED_MEMORY_FACTOR = 10


@dataclass(eq=False)
class Pending:
    """A message whose recipients have not all confirmed yet."""

    uuid: str
    sender: Any  # the room's member; None for another node's message
    waiting: set = field(repr=False)
    recipients: int
    deadline: float
    delivered: int = 0
    reported: bool = False  # the sender has its receipt (receipt_wait passed); log pending
    to_departed: bool = False  # settled after its sender left half-closed
    nodes: set = field(default_factory=set)  # other nodes whose tally is still due
    origin: str | None = None  # relayed: the node whose member sent it (sender is None)
    room: Any = None  # the room it was sent in (room.py's Room); None: a private message

    def done(self) -> bool:
        return not self.waiting and not self.nodes


class Receipts:
    def __init__(self) -> None:
        self.pending: dict[str, Pending] = {}  # uuid -> pending receipt, oldest first
        self._deadlines: list[tuple[float, str]] = []      # heap: confirm_timeout
        self._receipt_times: list[tuple[float, str]] = []  # heap: receipt_wait
        self._settled: OrderedDict[str, None] = OrderedDict()
        # after the bound's check (Hall._expire_oldest_for_laggards) nobody can be over
        # it before this many receipts were added (each adds at most one to what a member
        # owes; a receipt settled only lowers it)
        self._added = 0
        self._check_at = 0

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, frame_uuid: str) -> bool:
        return frame_uuid in self.pending

    def get(self, frame_uuid: str) -> Pending | None:
        return self.pending.get(frame_uuid)

    def newest_first(self) -> Iterator[Pending]:
        return reversed(self.pending.values())

    def bound_check_due(self) -> bool:
        return self._added >= self._check_at

    def no_bound_check_for(self, added: int) -> None:
        """Nobody can be over the bound until `added` more receipts are added."""
        self._check_at = self._added + added

    def oldest(self, count: int = 1) -> list[Pending]:
        """The `count` oldest pending messages (fewer when fewer are pending)."""
        return list(itertools.islice(self.pending.values(), count))

    def add(self, pending: Pending) -> None:
        self.pending[pending.uuid] = pending
        self._added += 1
        heapq.heappush(self._deadlines, (pending.deadline, pending.uuid))

    def wait_for_more(self, pending: Pending, until: float) -> None:
        """Its first confirm came: the sender hears at `until` (receipt_wait) at the latest."""
        heapq.heappush(self._receipt_times, (until, pending.uuid))

    def drop(self, pending: Pending, remembered: int) -> None:
        """No longer pending; remembered as settled (at most `remembered` are) when some
        recipients may still confirm it late."""
        del self.pending[pending.uuid]
        if pending.delivered < pending.recipients:
            self._settled[pending.uuid] = None
            if len(self._settled) > remembered:
                self._settled.popitem(last=False)

    def was_settled(self, frame_uuid: str) -> bool:
        return frame_uuid in self._settled

    def timed_out(self, now: float) -> list[Pending]:
        """The pending messages whose confirm_timeout has passed (still pending)."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, frame_uuid = heapq.heappop(self._deadlines)
            pending = self.pending.get(frame_uuid)
            if pending is not None and pending.deadline == deadline:
                out.append(pending)
        return out

    def receipts_due(self, now: float) -> list[Pending]:
        """The pending messages whose sender is due its receipt now (receipt_wait passed
        after the first confirm): marked as reported."""
        out = []
        while self._receipt_times and self._receipt_times[0][0] <= now:
            pending = self.pending.get(heapq.heappop(self._receipt_times)[1])
            if pending is not None and not pending.reported:
                pending.reported = True
                out.append(pending)
        return out

    # --- a hitless upgrade: as a plain record, times as what is left of them

    def export(self, now: float, ident: Callable[[Any], Any]) -> dict:
        return {
            "pending": [[p.uuid, None if p.sender is None else ident(p.sender),
                         [ident(m) for m in p.waiting], p.recipients, p.deadline - now,
                         p.delivered, p.reported, p.to_departed, sorted(p.nodes), p.origin,
                         None if p.room is None else p.room.key]
                        for p in self.pending.values()],
            "receipt_times": [[at - now, frame_uuid] for at, frame_uuid in self._receipt_times],
            "settled": list(self._settled),
        }

    def restore(self, state: dict, now: float, member_of: Callable[[Any], Any],
                room_of: Callable[[str], Any]) -> None:
        """member_of(ident): the member or None (gone); room_of(key): the room."""
        for (frame_uuid, sender, waiting, recipients, left, delivered, reported,
             to_departed, nodes, origin, room) in state["pending"]:
            sender = None if sender is None else member_of(sender)
            if sender is None and origin is None:
                continue
            self.pending[frame_uuid] = Pending(
                frame_uuid, sender, {m for m in map(member_of, waiting) if m is not None},
                recipients, now + left, delivered, reported, to_departed, set(nodes), origin,
                None if room is None else room_of(room))
        self._deadlines = sorted((p.deadline, p.uuid) for p in self.pending.values())
        self._receipt_times = [(now + left, frame_uuid)
                               for left, frame_uuid in state["receipt_times"]]
        heapq.heapify(self._receipt_times)
        self._settled = OrderedDict.fromkeys(state["settled"])
