"""The other nodes of a cluster, as the hall sees them: their members (each in its
rooms), and their events applied in the order of the cluster's stream.

The broker (chat/broker.py's interface, cluster/redis.py) calls a Relay and nothing else
of the chat: the `remote_*` events, a lost node, and what it needs to (re)claim this
node's members' nicknames. The relay works under the hall's lock, through the hall's
methods for it (rooms, recipients' accounts, receipts, finish and report).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ..wire import protocol
from ..wire.nicknames import nickname_key
from .receipts import Pending
from .room import RemoteMember

if TYPE_CHECKING:
    from .hall import Hall, HallSettings
    from .room import Member, Room


class Relay:
    """The hall's other nodes: their members (nickname_key -> RemoteMember) and events,
    read and written under the hall's lock."""

    def __init__(self, hall: Hall) -> None:
        self.hall = hall
        self._members: dict[str, RemoteMember] = {}

    @property
    def config(self) -> HallSettings:
        return self.hall.config

    # --- the hall's questions (under its lock)

    def has(self, key: str) -> bool:
        return key in self._members

    def member(self, key: str) -> RemoteMember | None:
        return self._members.get(key)

    def everyone(self) -> list[RemoteMember]:
        return list(self._members.values())

    def forget(self, key: str) -> None:
        """A nickname this node's member claimed: whoever held it elsewhere has left."""
        known = self._members.pop(key, None)
        if known is not None:
            for room in self._rooms_of(known):
                room.pop_remote(key)
                self.hall.close_if_empty(room)

    def _rooms_of(self, remote: RemoteMember) -> list[Room]:
        rooms = (self.hall.rooms.get(key) for key in remote.rooms)
        return [room for room in rooms if room is not None]

    # --- other nodes' events, in the order of the cluster's stream

    def remote_join(self, node: str, nickname: str, room_name: str | None = None,
                    address: str = "", tls: bool = False, connected: float = 0.0,
                    quiet: bool = False, account: str | None = None,
                    role: str = "guest", via: str | None = None) -> None:
        """Another node's member is in a room (its first: it joined; or one more)."""
        hall, key = self.hall, nickname_key(nickname)
        with hall.lock:
            if hall.local_member(key) is not None:
                return  # ours: the claim decides (see the broker's re-registration)
            room = hall.room_for_remote(room_name)
            if room is None:
                return
            known = self._members.get(key)
            if known is None or known.node != node:
                if known is not None:  # the nickname went from that node to this one
                    self.forget(key)
                known = self._members[key] = RemoteMember(nickname, node, address, tls,
                                                          connected, quiet, [], account,
                                                          role, via or "tcp")
            elif address:  # its first room's join says more of it
                known.address, known.tls, known.connected = address, tls, connected
                known.account, known.role = account, role
                known.via = via or ("tls" if tls else "tcp")
            if room.key in known.rooms:
                return  # told again (the node came back): not news
            known.rooms.append(room.key)
            room.add_remote(key, known)
            if known.silent or room.size() > hall.config.announce_joins_max:
                return  # a poster, a bot, or a very large room: not announced
            room.channel.publish(protocol.join_frame(nickname, room.name))
        room.channel.notify()

    def remote_known(self, node: str, nickname: str, address: str = "", tls: bool = False,
                     connected: float = 0.0, quiet: bool = False) -> None:
        """Another node's member, known from its claim (in no room yet: the joins that
        node tells again say which)."""
        hall, key = self.hall, nickname_key(nickname)
        with hall.lock:
            known = self._members.get(key)
            if hall.local_member(key) is not None or known is not None and known.node == node:
                return
            if known is not None:
                self.forget(key)
            self._members[key] = RemoteMember(nickname, node, address, tls, connected, quiet)

    def remote_part(self, node: str, nickname: str, room_name: str | None, reason: str,
                    detail: str | None = None) -> None:
        """Another node's member left one room."""
        hall = self.hall
        with hall.lock:
            known = self._members.get(nickname_key(nickname))
            room = hall.room_named(room_name) if room_name is not None else hall.default
            if known is None or known.node != node or room is None:
                return
            self._drop(known, room, reason, detail)
            hall.close_if_empty(room)
        room.channel.notify()

    def remote_leave(self, node: str, nickname: str, reason: str,
                     detail: str | None = None) -> None:
        """Another node's member left every room (it quit, was kicked...)."""
        with self.hall.lock:
            rooms = self._leave(node, nickname, reason, detail)
        for room in rooms:
            room.channel.notify()

    def _leave(self, node: str, nickname: str, reason: str,
               detail: str | None = None) -> list[Room]:
        key = nickname_key(nickname)
        known = self._members.get(key)
        if known is None or known.node != node:
            return []
        del self._members[key]
        rooms = self._rooms_of(known)
        for room in rooms:
            self._drop(known, room, reason, detail)
            self.hall.close_if_empty(room)
        return rooms

    def _drop(self, known: RemoteMember, room: Room, reason: str,
              detail: str | None) -> None:
        key = nickname_key(known.nickname)
        if room.pop_remote(key) is None:
            return
        if room.key in known.rooms:
            known.rooms.remove(room.key)
        if not known.silent and room.size() < self.hall.config.announce_joins_max:
            room.channel.publish(protocol.leave_frame(known.nickname, reason, detail,
                                                      room.name))

    def remote_account(self, nickname: str, account: str | None, role: object) -> None:
        """Another node's member logged in (`who` shows it)."""
        with self.hall.lock:
            known = self._members.get(nickname_key(nickname))
            if known is not None:
                known.account, known.role = account, str(role or "guest")

    def remote_nick(self, node: str, old: str, new: str) -> None:
        hall = self.hall
        with hall.lock:
            known = self._members.get(nickname_key(old))
            if known is None or known.node != node:
                return
            del self._members[nickname_key(old)]
            known.nickname = new
            self._members[nickname_key(new)] = known
            rooms = self._rooms_of(known)
            for room in rooms:
                room.pop_remote(nickname_key(old))
                room.add_remote(nickname_key(new), known)
                room.channel.publish(protocol.nick_frame(old, new, room.name))
        for room in rooms:
            room.channel.notify()

    def remote_announce(self, text: str, room_name: str | None = None) -> None:
        hall = self.hall
        if room_name is None:  # to everyone
            frame = protocol.announce_frame(text)
            for member in hall.members():
                member.deliver(frame)
            return
        with hall.lock:
            room = hall.room_named(room_name)
            if room is None:
                return
            room.channel.publish(protocol.announce_frame(text, room.name))
        room.channel.notify()

    def remote_topic(self, room_name: str, topic: str, by: str, at: str) -> None:
        hall = self.hall
        with hall.lock:
            room = hall.room_named(room_name)
            if room is None:
                return
            room.topic.text, room.topic.by, room.topic.at = topic, by, at
            room.channel.publish(protocol.topic_frame(room.name, topic, by, at))
        room.channel.notify()

    def remote_message(self, node: str, frame_uuid: str, nickname: str, text: str,
                       stamp: str, to: str | None = None, action: bool = False,
                       at: str | None = None, room_name: str | None = None) -> None:
        """Another node's member sent a message: our members get it, and the origin our
        acknowledgement at once (with our recipient count), our confirms, our tally. A
        private one (`to`) is acknowledged by the node the origin named (`at`) alone."""
        hall = self.hall
        target = room = None
        with hall.lock:
            if to is not None:
                target = hall.local_member(nickname_key(to))
                recipients = 1 if target is not None else 0
                frame = protocol.chat_frame(frame_uuid, nickname, text, stamp, to, action)
            else:
                room = hall.room_named(room_name) if room_name is not None else hall.default
                recipients = len(room.listeners) if room is not None else 0
                if room is not None:
                    frame = protocol.chat_frame(frame_uuid, nickname, text, stamp, None,
                                                action, room.name)
                    room.history.remember((nickname, stamp, protocol.chat_text(nickname, text),
                                           frame_uuid), hall.config.history)
                    known = self._members.get(nickname_key(nickname))  # (its uuid is
                    hall.keep(frame_uuid, room, nickname,                # unique: a replay
                              known.account if known is not None else None,  # writes nothing)
                              text, action)
                    room.channel.publish(frame, chat=True)  # a chat message: never held
            if frame_uuid in hall.receipts:  # a uuid ours already uses: delivered, untracked
                recipients = 0
            hall.counters.deliveries += recipients
            if room is not None:
                room.counters.deliveries += recipients
            if to is None or at == hall.broker.node:  # a private one waits on one node
                hall.broker.publish({"kind": "ack", "to": node, "uuid": frame_uuid,
                                     "recipients": recipients})
            if recipients:
                waiting = {target} if target is not None else \
                    set(room.listeners.values()) if room is not None else set()
                hall.receipts.add(Pending(frame_uuid, None, waiting, recipients,
                                          time.monotonic() + hall.config.confirm_timeout,
                                          origin=node, room=room))
                hall.owe(target, room)
        if room is not None:
            room.channel.notify()
        if target is not None:
            target.deliver(frame)

    def _own_pending(self, frame_uuid: str, node: str) -> Pending | None:
        """Under the lock: our message that waits on that node's word."""
        pending = self.hall.receipts.get(frame_uuid)
        if pending is None or pending.origin is not None or node not in pending.nodes:
            return None
        return pending

    def remote_ack(self, node: str, frame_uuid: str, recipients: int) -> None:
        finished = []
        with self.hall.lock:
            pending = self._own_pending(frame_uuid, node)
            if pending is None:
                return
            pending.recipients += recipients
            if not recipients:  # nobody there: that node is done with it
                pending.nodes.discard(node)
                if pending.done():
                    finished.append(self.hall.finish(pending))
        self.hall.report(finished)

    def remote_confirms(self, node: str, counts: dict[str, int]) -> None:
        hall = self.hall
        with hall.lock:
            for frame_uuid, count in counts.items():
                pending = self._own_pending(frame_uuid, node)
                if pending is None:
                    continue
                first = pending.delivered == 0
                pending.delivered += count
                if first:
                    hall.receipts.wait_for_more(pending,
                                                time.monotonic() + hall.config.receipt_wait)

    def remote_tally(self, node: str, frame_uuid: str) -> None:
        """That node's recipients have all confirmed, left or timed out."""
        finished = []
        with self.hall.lock:
            pending = self._own_pending(frame_uuid, node)
            if pending is None:
                return
            pending.nodes.discard(node)
            if pending.done():
                finished.append(self.hall.finish(pending))
        self.hall.report(finished)

    def nodes_lost(self, nodes: set[str] | None, reason: str = "node_lost") -> int:
        """Those nodes (None: every other node, the broker being lost) are gone: their
        members leave, and receipts stop waiting on them. Returns the members that left."""
        hall, finished, rooms = self.hall, [], set()
        with hall.lock:
            gone = [r for r in self._members.values() if nodes is None or r.node in nodes]
            for remote in gone:
                rooms.update(self._leave(remote.node, remote.nickname, reason))
            for pending in list(hall.receipts.pending.values()):
                if pending.nodes and pending.origin is None:
                    pending.nodes = set() if nodes is None else pending.nodes - nodes
                    if pending.done():
                        finished.append(hall.finish(pending))
        for room in rooms:
            room.channel.notify()
        hall.report(finished)
        return len(gone)

    # --- what the broker needs of this node's own members

    def claims(self) -> list[tuple[Member, str, str]]:
        """(member, nickname, claim token) of every member of this node."""
        return self.hall.claims()

    def rooms_of(self, member: Member) -> list[str]:
        """The names of the rooms this node's member is in (its joins, told again)."""
        return self.hall.rooms_of(member)

    def set_claim(self, member: Member, token: str) -> None:
        self.hall.set_claim(member, token)

    def seed_history(self, entries: list[tuple[Any, ...]]) -> None:
        self.hall.seed_history(entries)

    def disconnect(self, member: Member, reason: str, notice: bytes,
                   detail: str | None = None) -> None:
        self.hall.disconnect(member, reason, notice, detail)

    # --- a hitless upgrade

    def export(self) -> list[list]:
        return [[key, *dataclasses.astuple(r)] for key, r in self._members.items()]

    def restore(self, rows: list) -> None:
        """[key, *fields, room keys] (under the lock); each member back in its rooms."""
        for key, *fields in rows:
            remote = RemoteMember(*fields)
            self._members[key] = remote
            for room in self._rooms_of(remote):
                room.add_remote(key, remote)
