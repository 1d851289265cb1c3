"""The other nodes of a cluster, as the room sees them: their members, and their events
applied in the order of the room's stream.

The broker (chat/broker.py's interface, cluster/redis.py) calls a Relay and nothing else
of the chat: the `remote_*` events, a lost node, and what it needs to (re)claim this
node's members' nicknames. The relay works under the room's lock, through the room's
methods for it (listeners, recipients' accounts, receipts, finish and report).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..wire import protocol
from ..wire.nicknames import nickname_key
from .receipts import Pending

if TYPE_CHECKING:
    from .room import Member, Room, RoomSettings


@dataclass
class RemoteMember:
    """A member of another node, as its join event described it."""

    nickname: str
    node: str
    address: str = ""       # as that node shows it: `ip:port` or `[v6]:port`
    tls: bool = False
    connected: float = 0.0  # time.time() when it connected
    quiet: bool = False     # a poster: no notices, not in names

    @property
    def ip(self) -> str:
        """The peer's address, for bans ("" when its node did not say)."""
        host = self.address.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host


class Relay:
    """The room's other nodes. `members`: nickname_key -> RemoteMember, read and written
    under the room's lock."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.members: dict[str, RemoteMember] = {}

    @property
    def config(self) -> RoomSettings:
        return self.room.config

    # --- other nodes' events, in the order of the room's stream

    def remote_join(self, node: str, nickname: str, address: str = "", tls: bool = False,
                    connected: float = 0.0, quiet: bool = False) -> None:
        room, key = self.room, nickname_key(nickname)
        with room.lock:
            if room.local_member(key) is not None:
                return  # ours: the claim decides (see the broker's re-registration)
            known = self.members.get(key)
            self.members[key] = RemoteMember(nickname, node, address, tls, connected, quiet)
            if known is not None and known.node == node or quiet:
                return  # told again (the node came back), or a poster: not news
            if room.size() <= room.config.announce_joins_max:
                room.channel.publish(protocol.join_frame(nickname))
        room.channel.notify()

    def remote_leave(self, node: str, nickname: str, reason: str,
                     detail: str | None = None) -> None:
        with self.room.lock:
            self._drop(node, nickname, reason, detail)
        self.room.channel.notify()

    def _drop(self, node: str, nickname: str, reason: str, detail: str | None = None) -> None:
        key = nickname_key(nickname)
        known = self.members.get(key)
        if known is None or known.node != node:
            return
        del self.members[key]
        if not known.quiet and self.room.size() < self.room.config.announce_joins_max:
            self.room.channel.publish(protocol.leave_frame(nickname, reason, detail))

    def remote_nick(self, node: str, old: str, new: str) -> None:
        room = self.room
        with room.lock:
            known = self.members.pop(nickname_key(old), None)
            if known is None or known.node != node:
                return
            known.nickname = new
            self.members[nickname_key(new)] = known
            room.channel.publish(protocol.nick_frame(old, new))
        room.channel.notify()

    def remote_announce(self, text: str) -> None:
        with self.room.lock:
            self.room.channel.publish(protocol.announce_frame(text))
        self.room.channel.notify()

    def remote_message(self, node: str, frame_uuid: str, nickname: str, text: str,
                       stamp: str, to: str | None = None, action: bool = False,
                       at: str | None = None) -> None:
        """Another node's member sent a message: our members get it, and the origin our
        acknowledgement at once (with our recipient count), our confirms, our tally. A
        private one (`to`) is acknowledged by the node the origin named (`at`) alone."""
        room = self.room
        frame = protocol.chat_frame(frame_uuid, nickname, text, stamp, to, action)
        target = None
        with room.lock:
            if to is not None:
                target = room.local_member(nickname_key(to))
                recipients = 1 if target is not None else 0
            else:
                recipients = len(room.listeners())
                room.remember(nickname, stamp, protocol.chat_text(nickname, text))
                room.channel.publish(frame)
            if frame_uuid in room.receipts:  # a uuid ours already uses: delivered, untracked
                recipients = 0
            room.counters.deliveries += recipients
            if to is None or at == room.broker.node:  # a private one waits on one node
                room.broker.publish({"kind": "ack", "to": node, "uuid": frame_uuid,
                                     "recipients": recipients})
            if recipients:
                waiting = {target} if target is not None else set(room.listeners())
                room.receipts.add(Pending(frame_uuid, None, waiting, recipients,
                                          time.monotonic() + room.config.confirm_timeout,
                                          origin=node))
                room.owe(target)
        room.channel.notify()
        if target is not None:
            target.deliver(frame)

    def _own_pending(self, frame_uuid: str, node: str) -> Pending | None:
        """Under the lock: our message that waits on that node's word."""
        pending = self.room.receipts.get(frame_uuid)
        if pending is None or pending.origin is not None or node not in pending.nodes:
            return None
        return pending

    def remote_ack(self, node: str, frame_uuid: str, recipients: int) -> None:
        finished = []
        with self.room.lock:
            pending = self._own_pending(frame_uuid, node)
            if pending is None:
                return
            pending.recipients += recipients
            if not recipients:  # nobody there: that node is done with it
                pending.nodes.discard(node)
                if pending.done():
                    finished.append(self.room.finish(pending))
        self.room.report(finished)

    def remote_confirms(self, node: str, counts: dict[str, int]) -> None:
        room = self.room
        with room.lock:
            for frame_uuid, count in counts.items():
                pending = self._own_pending(frame_uuid, node)
                if pending is None:
                    continue
                first = pending.delivered == 0
                pending.delivered += count
                if first:
                    room.receipts.wait_for_more(pending,
                                                time.monotonic() + room.config.receipt_wait)

    def remote_tally(self, node: str, frame_uuid: str) -> None:
        """That node's recipients have all confirmed, left or timed out."""
        finished = []
        with self.room.lock:
            pending = self._own_pending(frame_uuid, node)
            if pending is None:
                return
            pending.nodes.discard(node)
            if pending.done():
                finished.append(self.room.finish(pending))
        self.room.report(finished)

    def nodes_lost(self, nodes: set[str] | None, reason: str = "node_lost") -> int:
        """Those nodes (None: every other node, the broker being lost) are gone: their
        members leave, and receipts stop waiting on them. Returns the members that left."""
        room, finished = self.room, []
        with room.lock:
            gone = [r for r in self.members.values() if nodes is None or r.node in nodes]
            for remote in gone:
                self._drop(remote.node, remote.nickname, reason)
            for pending in list(room.receipts.pending.values()):
                if pending.nodes and pending.origin is None:
                    pending.nodes = set() if nodes is None else pending.nodes - nodes
                    if pending.done():
                        finished.append(room.finish(pending))
        room.channel.notify()
        room.report(finished)
        return len(gone)

    # --- what the broker needs of this node's own members

    def claims(self) -> list[tuple[Member, str, str]]:
        """(member, nickname, claim token) of every member of this node."""
        return self.room.claims()

    def set_claim(self, member: Member, token: str) -> None:
        self.room.set_claim(member, token)

    def seed_history(self, entries: list[tuple[str, str, str]]) -> None:
        self.room.seed_history(entries)

    def disconnect(self, member: Member, reason: str, notice: bytes,
                   detail: str | None = None) -> None:
        self.room.disconnect(member, reason, notice, detail)

    # --- a hitless upgrade

    def export(self) -> list[list]:
        return [[key, *dataclasses.astuple(r)] for key, r in self.members.items()]

    def restore(self, rows: list) -> None:
        """[key, *fields]; images before the keys wrote the fields alone."""
        for row in rows:
            key = row.pop(0) if len(row) == len(dataclasses.fields(RemoteMember)) + 1 \
                else None
            remote = RemoteMember(*row)
            self.members[key or nickname_key(remote.nickname)] = remote
