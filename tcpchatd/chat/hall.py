"""The hall: every room of the daemon, its members, their nicknames, receipts, kicks.

A member joins the hall once, under a nickname that is unique daemon-wide (and across a
cluster), and is put in the default room; then it joins and parts rooms (room.py), each
with its own members, channel, topic and history. Private messages go between members,
not rooms; nicknames and bans are the hall's.

Its parts each have a module of their own: the pending receipts and their clocks
(receipts.py), each room's recent history (history.py), the other nodes' members and
events (relay.py: the `remote_*` methods, called by the broker, chat/broker.py). One lock
guards membership of every room, pending receipts and the broadcast appends: one lock,
not one per room, because a confirm names only a uuid, a rename touches every room of
the member and a departure settles receipts in all of them; each operation under it is
short and O(1) or O(its own rooms), so more rooms do not make it longer. Frames are
encoded before it is taken; a broadcast is published under it to the room's Channel
(the engine's broadcast log of that room: an O(1) append, so the order in which clients
see a room's events and who sees them are the room's), and frames for one member are
handed over after it is released. No socket I/O (nor a slow member) ever happens under
it. The hall knows a member only by the Member protocol, so it can be tested without
sockets.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..store.history import HistoryError, HistoryStore, Kept, parse_time
from ..wire import errors, protocol
from ..wire.errors import ProtocolError
from ..wire.nicknames import check_room_name, nickname_key, room_key, same_spelling
from .bans import BanList
from .broker import UNCLAIMED, Broker
from .logins import Logins
from .receipts import SETTLED_MEMORY_FACTOR, Pending, Receipts
from .relay import Relay
from .room import Channel, Member, RemoteMember, Room, member_info

__all__ = ["AddressBanned", "Hall", "Member", "NoSuchMember", "NoSuchRoom", "NotInRoom",
           "Room"]

# Over pending_confirms, a member's oldest receipts expire until it owes the bound less
# 1/EXPIRY_BATCH of it (at least one less): one that never confirms owes between that
# and the bound, never more, and the bound is checked once per that many messages
EXPIRY_BATCH = 16

# join() and rename() report the broker's answer through this: None, or the refusal
Settled = Callable[[ProtocolError | None], None]


class AddressBanned(ProtocolError):
    """The member's address is banned: unlike a refused nickname, no other try helps."""

    def __init__(self, description: str) -> None:
        super().__init__(errors.BANNED, f"your address is {description}")


class NoSuchMember(LookupError):
    """No member has that nickname (the admin layer turns it into no_such_nickname)."""

    def __init__(self, nickname: str) -> None:
        super().__init__(nickname)
        self.nickname = nickname


class NoSuchRoom(LookupError):
    """No room has that name (the admin layer turns it into no_such_room)."""

    def __init__(self, room: str) -> None:
        super().__init__(room)
        self.room = room


class NotInRoom(LookupError):
    """The member is not in that room (the admin layer: not_in_room)."""

    def __init__(self, nickname: str, room: str) -> None:
        super().__init__(nickname, room)
        self.nickname, self.room = nickname, room


class EventLog(Protocol):
    """The traffic log (service/trafficlog.py): one event, never waiting."""

    def event(self, name: str, **fields: Any) -> None: ...


class HallSettings(Protocol):
    """What the hall reads of the settings (replaced as a whole on reload)."""

    @property
    def announce_joins_max(self) -> int: ...
    @property
    def history(self) -> int: ...
    @property
    def history_bytes(self) -> int: ...
    @property
    def confirm_timeout(self) -> float: ...
    @property
    def receipt_wait(self) -> float: ...
    @property
    def pending_confirms(self) -> int: ...
    @property
    def log_confirms(self) -> str: ...
    @property
    def ban_force_over(self) -> int: ...
    @property
    def default_room(self) -> str: ...
    @property
    def rooms(self) -> tuple[str, ...]: ...
    @property
    def room_create(self) -> str: ...
    @property
    def max_rooms(self) -> int: ...
    @property
    def max_rooms_per_client(self) -> int: ...
    @property
    def max_room_name(self) -> int: ...
    @property
    def max_topic(self) -> int: ...
    @property
    def history_private(self) -> bool: ...
    @property
    def history_page(self) -> int: ...
    @property
    def search_results(self) -> int: ...


class Moderation(Protocol):
    """A moderator's kick, ban and unban from a chat client, done as the operator's are."""

    def moderate(self, member: Member, cmd: str, fields: dict[str, str | None]) -> str:
        """The line the moderator is told; ProtocolError when refused."""


# A member's `sent` until its first message: an empty set costs 216 bytes a member.
NOTHING_SENT: frozenset[str] = frozenset()


@dataclass(eq=False, slots=True)  # one per member: no dict each
class Standing:
    """What the hall keeps of one member: its rooms, its own pending messages and what
    it owes.

    The receipts a member owes are counted, not listed, so that a message costs the
    hall O(1) per recipient in C (one set of recipients) and nothing in Python, and a
    confirm one count however many rooms the member is in: it owes every public message
    of its rooms sent since it joined each, and every private message it received, less
    those settled for it (its own, its confirms, those settled without it); see
    Hall._owed, and Hall._part for a room it leaves.
    """

    rooms: dict[Room, int] = field(default_factory=dict)  # room -> its messages_sent when
    #                                                       it joined; in the order joined
    settled: int = 0                # its own messages, confirms, receipts settled
    sent: set[str] | frozenset[str] = NOTHING_SENT  # uuids of its pending messages
    private: int = 0                # private messages it received
    in_flight: int = 0              # departed: receipts settled, not yet handed to it
    claim: str = UNCLAIMED          # the broker's token for its nickname
    key: str = ""                   # its nickname_key, kept from its join (and carried by
    #                                 an upgrade: a new version's keys may differ)


@dataclass
class Counters:
    """The daemon's (each room counts its own messages, deliveries, undelivered)."""

    messages: int = 0
    deliveries: int = 0
    confirms: int = 0
    undelivered: int = 0
    send_queue_disconnects: int = 0
    receipts_settled: int = 0   # every recipient confirmed (metrics alone)
    receipts_partial: int = 0   # some did, at the end
    receipts_expired: int = 0   # settled by confirm_timeout


class Hall:
    """Every room; `config` is replaced as a whole on reload (the declared rooms follow)."""

    def __init__(self, config: HallSettings, log: EventLog,
                 channel: Callable[[], Channel], bans: BanList | None = None, *,
                 broker: Broker, logins: Logins | None = None,
                 history: HistoryStore | None = None) -> None:
        self.log = log
        self.history_store = history  # what lasts of the rooms' messages (store/history.py)
        self.logins = logins  # the accounts, when the daemon keeps them
        self.moderation: Moderation | None = None  # a moderator's acts (the admin side's)
        self.new_channel = channel  # a new room's channel (the engine's)
        self.bans = bans
        self.broker = broker
        self.relay = Relay(self)  # the other nodes' members and events
        self.lock = threading.Lock()
        self.counters = Counters()
        self.rooms: dict[str, Room] = {}             # room_key -> room
        self._members: dict[str, Member] = {}        # nickname_key -> member, every room's
        self._logged_in: dict[str, Member] = {}      # account key -> its one member (no bots)
        self._accounts: dict[Member, Standing] = {}
        # members that left half-closed, still owed receipts for their own messages
        self._departed: dict[Member, Standing] = {}
        self.receipts = Receipts()
        # a starting node's history of rooms that are not open here yet (seed_history)
        self._seeds: dict[str, list[tuple[str, ...]]] = {}
        self._config = config
        self.default = self._declare(config)

    # --- settings and rooms

    @property
    def config(self) -> HallSettings:
        return self._config

    @config.setter
    def config(self, config: HallSettings) -> None:
        """A reload: new limits, and the declared rooms exist (those no longer declared
        go when empty). The default room is the one the daemon started with."""
        with self.lock:
            self._config = config
            self._declare(config)

    def _declare(self, config: HallSettings) -> Room:
        """The default room and the config's rooms, made if missing; the default room."""
        declared = {}
        for name in (config.default_room, *config.rooms):
            name = check_room_name(name, max(config.max_room_name, len(name)))
            declared[room_key(name)] = name
        for room in list(self.rooms.values()):
            room.declared = room.key in declared
            self._close_if_empty(room)
        for key, name in declared.items():
            if key not in self.rooms:
                self._open(name, key, declared=True)
        default = self.rooms[room_key(config.default_room)]
        return getattr(self, "default", default)

    def _open(self, name: str, key: str, declared: bool = False, by: str | None = None) -> Room:
        """Under the lock: a new room."""
        room = Room(name, key, self.new_channel(), declared)
        self.rooms[key] = room
        seeds = self._seeds.pop(key, None)
        if seeds:
            room.history.seed(seeds, self._config.history)
        if by is not None:  # the config's rooms are no news
            self.log.event("room_open", room=name, by=by)
        return room

    def _close_if_empty(self, room: Room) -> None:
        """Under the lock: an undeclared room nobody is in goes."""
        if room.empty() and not room.declared and room is not getattr(self, "default", None) \
                and self.rooms.get(room.key) is room:
            del self.rooms[room.key]
            room.channel.close()
            self.log.event("room_close", room=room.name)

    def room_named(self, name: str) -> Room | None:
        """Under the lock: the room of that name (written with or without `#`)."""
        return self.rooms.get(room_key(name[1:] if name.startswith("#") else name))

    def _existing(self, name: str | None, request_id: Any = None, frame_uuid: Any = None,
                  ) -> Room:
        """Under the lock: the room named (None: the default room), or no_such_room."""
        if name is None:
            return self.default
        room = self.room_named(name) if name else None
        if room is None:
            raise ProtocolError(errors.NO_SUCH_ROOM, f"no room #{name.lstrip('#')}",
                                frame_uuid, request_id)
        return room

    def _room_to_join(self, text: str, request_id: Any, by: str) -> Room:
        """Under the lock: the room a join names, made if it may be."""
        try:
            name = check_room_name(text, self._config.max_room_name)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, request_id=request_id) from None
        key = room_key(name)
        room = self.rooms.get(key)
        if room is not None:
            if not same_spelling(room.name, name):  # one look-alike of it is no other room
                raise ProtocolError(errors.ROOM_NAME_TAKEN, f"#{name} looks like #{room.name},"
                                    f" which exists: join #{room.name}",
                                    request_id=request_id)
            return room
        if self._config.room_create != "anyone":
            raise ProtocolError(errors.NO_SUCH_ROOM, f"no room #{name} (rooms here are made "
                                "by the operator)", request_id=request_id)
        if len(self.rooms) >= self._config.max_rooms:
            raise ProtocolError(errors.ROOM_LIMIT, f"there are {len(self.rooms)} rooms, the "
                                "most this server keeps: join one of them",
                                request_id=request_id)
        return self._open(name, key, by=by)

    # --- membership of the hall

    def join(self, member: Member, nickname: str, settled: Settled,
             room_name: str | None = None) -> None:
        """Add a member under its nickname, in the default room (or in `room_name`, made
        if it may be: a hello's room).

        What the hall can tell at once (a ban, a nickname in use) is raised. The claim
        of the nickname in a cluster takes a round trip to the broker, made off the
        caller's thread (an event loop must never wait on Redis): settled(None) once
        joined, or settled(error) when another node's member holds the nickname; called
        from this thread when the broker answers at once (the embedded hall), else from
        the broker's. The newcomer gets, in this order: its join, who is in the room
        (names), the room's history.
        """
        key = nickname_key(nickname)
        self._refuse_banned(nickname, member.ip, member.account)
        self._refuse_reserved(nickname, member)
        with self.lock:  # the cheap refusal first: no round trip to the broker
            self._refuse_taken(key, nickname)
            self._refuse_in_use(member)
        info = member_info(member)
        if member.account is not None:
            info["account"], info["role"] = member.account, member.role
        if room_name is not None:
            check_room_name(room_name, self._config.max_room_name)  # refused before a claim
        self.broker.claim(nickname, info, lambda claim: settled(
            self._joined(member, nickname, key, info, claim, room_name)))

    def _joined(self, member: Member, nickname: str, key: str, info: dict,
                claim: str | None, room_name: str | None = None) -> ProtocolError | None:
        """The join, once the broker has answered for the nickname (claim None: taken)."""
        if claim is None:
            return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")
        with self.lock:
            if key in self._members:
                self.broker.release(nickname, claim)
                return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")
            try:
                self._refuse_in_use(member)
                room = self.default if room_name is None else \
                    self._room_to_join(room_name, None, nickname)
            except ProtocolError as exc:  # the same account logged in meanwhile; the room
                self.broker.release(nickname, claim)
                return exc
            self._hold_account(member)
            self.relay.forget(key)  # the claim is the truth: that member has left
            member.nickname = nickname
            self._members[key] = member
            account = self._accounts[member] = Standing(claim=claim, key=key)
            frames = self._seat(member, account, room, info=info)
            self._hand_seat(member, frames)
        room.channel.notify()
        return None

    @staticmethod
    def _hand_seat(member: Member, frames: list[bytes]) -> None:
        """Under the lock: the newcomer's own frames queued where it was seated, so that
        nothing published in the room in between (another node's join, relayed at that
        moment) comes between its join and its names. (A member's queue takes its own
        lock, which is taken under this one already: the channel's subscribe.)"""
        for frame in frames:
            member.deliver(frame)

    def _seat(self, member: Member, account: Standing, room: Room,
              request_id: Any = None, info: dict | None = None) -> list[bytes]:
        """Under the lock: the member in a room; the frames for it alone, in order (its
        join when only it hears of it, names, the history), for _hand_seat. `info`: its
        first room (the other nodes learn of it with this join)."""
        key = account.key
        account.rooms[room] = room.messages_sent
        room.members[key] = member
        if not member.quiet:  # a poster hears nothing of the room and owes no receipt
            room.listeners[key] = member
            room.channel.subscribe(member)
        self.broker.publish({"kind": "join", "nick": member.nickname, "room": room.name,
                             **(info or {})})
        # logged under the lock, so the log keeps the room's order of events
        first = info is not None
        self.log.event("join", nick=member.nickname, room=room.name,
                       addr=member.address if first else None,
                       tls="yes" if member.tls and first else None,
                       via=member.via if first and member.via not in ("tcp", "tls") else None,
                       post="yes" if member.quiet else None,
                       account=member.account if first else None,
                       role=member.role if first and member.account is not None else None)
        frame = protocol.join_frame(member.nickname, room.name)
        # a very large room, a poster or a bot: only the newcomer hears of its join
        alone = silent(member) or room.size() > self._config.announce_joins_max
        if not alone:  # everyone else hears of it in the room's order ...
            room.channel.publish(frame, member)
        frames = [frame]  # ... the newcomer at once (a round of notices may wait)
        if member.quiet:  # a poster catches up on nothing (but its request is answered)
            if request_id is not None:
                frames.append(room.names_frame(self._config.announce_joins_max, request_id))
            return frames
        history, count = room.history.frame(self._config.history,
                                            self._config.history_bytes, room.name)
        # queued after the join's place in the room's channel: it follows it
        frames.append(room.names_frame(self._config.announce_joins_max, request_id, count))
        if history is not None:
            frames.append(history)
        return frames

    def _refuse_reserved(self, nickname: str, member: Member) -> None:
        """Another account's nickname is not a guest's (nick_reservation = strict)."""
        refusal = self.logins.reserved(nickname, member.account) if self.logins else None
        if refusal is not None:
            raise refusal

    def account_banned(self, account: str) -> ProtocolError | None:
        """The refusal of a login to a banned account (before it is told it logged in)."""
        ban = self.bans.for_account(account) if self.bans is not None else None
        if ban is None:
            return None
        return ProtocolError(errors.BANNED, f"account {account} is {ban.describe()}")

    def _refuse_in_use(self, member: Member) -> None:
        """Under the lock: a person's account is logged in once (a bot's, any number)."""
        account = member.account
        if account is None or member.role == "bot":
            return
        holder = self._logged_in.get(nickname_key(account))
        if holder is not None and holder is not member:
            raise ProtocolError(errors.ACCOUNT_IN_USE, f"account {account} is logged in "
                                f"already (as {holder.nickname})")

    def _hold_account(self, member: Member) -> None:
        """Under the lock: the member is its account's one login (not a bot's)."""
        if member.account is not None and member.role != "bot":
            self._logged_in[nickname_key(member.account)] = member

    def logged_in(self, member: Member) -> None:
        """A member already in the hall has logged in (member.account is set): refused
        (ProtocolError) when that account is logged in elsewhere."""
        if member.account is not None:
            self._refuse_banned(member.nickname, None, member.account)
        with self.lock:
            if member not in self._accounts:
                return  # left meanwhile
            self._refuse_in_use(member)
            self._hold_account(member)
            self.log.event("login_member", nick=member.nickname, account=member.account,
                           role=member.role)
            self.broker.publish({"kind": "account_of", "nick": member.nickname,
                                 "account": member.account, "role": member.role})

    def _refuse_taken(self, key: str, nickname: str) -> None:
        if key in self._members or self.relay.has(key):
            raise ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")

    def _refuse_banned(self, nickname: str, ip: str | None = None,
                       account: str | None = None) -> None:
        """A ban on the nickname, on the member's account, or on its address (a connection
        accepted before the ban that sends its nickname after it), refuses the join."""
        if self.bans is None:
            return
        ban = self.bans.for_account(account) if account is not None else None
        if ban is not None:
            raise ProtocolError(errors.BANNED, f"account {account} is {ban.describe()}")
        ban = self.bans.for_nickname(nickname)
        if ban is not None:
            raise ProtocolError(errors.BANNED, f"nickname {nickname!r} is {ban.describe()}")
        ban = self.bans.for_address(ip) if ip else None
        if ban is not None:
            raise AddressBanned(ban.describe())

    def rename(self, member: Member, new: str, settled: Settled) -> None:
        """A member takes another nickname; every room it is in hears of it. Refusals the
        hall can tell at once are raised; settled() as for join()."""
        key = nickname_key(new)
        self._refuse_banned(new)
        self._refuse_reserved(new, member)
        with self.lock:
            account = self._accounts.get(member)
            if account is None:
                return  # left meanwhile
            if account.key != key:
                self._refuse_taken(key, new)
            claim = account.claim if account.key == key else None
        if claim is not None:  # another spelling of its own nickname: no new claim
            settled(self._renamed(member, new, key, claim))
            return
        info = member_info(member)
        self.broker.claim(new, info, lambda claim: settled(
            self._renamed(member, new, key, claim)))

    def _renamed(self, member: Member, new: str, key: str,
                 claim: str | None) -> ProtocolError | None:
        if claim is None:
            return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {new!r} is taken")
        with self.lock:
            old = member.nickname
            account = self._accounts.get(member)
            holder = self._members.get(key)
            if account is None or (holder is not None and holder is not member):
                if account is None or claim != account.claim:
                    self.broker.release(new, claim)
                if account is None:
                    return None  # left meanwhile
                return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {new!r} is taken")
            if claim != account.claim:
                self.broker.release(old, account.claim)
                account.claim = claim
            del self._members[account.key]
            self.relay.forget(key)
            self._members[key] = member
            for room in account.rooms:
                del room.members[account.key]
                room.members[key] = member
                if room.listeners.pop(account.key, None) is not None:
                    room.listeners[key] = member
            account.key = key
            member.nickname = new
            rooms = list(account.rooms)
            self.log.event("nick", old=old, new=new, rooms=_names(rooms))
            for room in rooms:
                room.channel.publish(protocol.nick_frame(old, new, room.name))
            self.broker.publish({"kind": "nick", "old": old, "new": new})
        for room in rooms:
            room.channel.notify()
        return None

    def leave(self, member: Member, reason: str, detail: str | None = None,
              keep_receipts: bool = False) -> None:
        """Remove a member from the hall and every room (idempotent); settle the
        receipts that waited on it.

        With keep_receipts (the member half-closed: it still reads), the receipts of
        its own pending messages still go to it; see awaiting_receipts().
        """
        finished = []
        with self.lock:
            account = self._accounts.get(member)
            if account is None or self._members.get(account.key) is not member:
                return
            del self._members[account.key]
            del self._accounts[member]
            if member.account is not None and \
                    self._logged_in.get(nickname_key(member.account)) is member:
                del self._logged_in[nickname_key(member.account)]
            owed = 0 if member.quiet else self._owed(account)
            rooms = list(account.rooms)
            for room in rooms:
                self._unseat(member, account, room, reason, detail,
                             announce=reason != "shutdown")
            self.broker.publish({"kind": "leave", "nick": member.nickname, "reason": reason,
                                 "detail": detail})
            self.broker.release(member.nickname, account.claim)
            emptied = []
            # newest first: a member that confirms as it reads owes only recent ones
            for pending in self.receipts.newest_first() if owed else ():
                if member in pending.waiting:
                    pending.waiting.discard(member)
                    if pending.done():
                        emptied.append(pending)  # finished after the loop: it edits them
                    owed -= 1
                    if not owed:
                        break
            finished += [self.finish(pending) for pending in emptied]
            if keep_receipts and account.sent:
                self._departed[member] = account
            else:
                for frame_uuid in list(account.sent):  # nobody is left to tell
                    self._forget(self.receipts.pending[frame_uuid])
            for room in rooms:
                self._close_if_empty(room)
        for room in rooms:
            room.channel.notify()
        self.report(finished)

    def _unseat(self, member: Member, account: Standing, room: Room, reason: str,
                detail: str | None, announce: bool = True) -> None:
        """Under the lock: the member out of one room; the room hears of it (but at
        shutdown: everyone gets the shutdown notice instead of N leave notices; and a
        poster leaves as it came, unannounced)."""
        del room.members[account.key]
        room.listeners.pop(account.key, None)
        room.channel.unsubscribe(member)
        # logged under the lock, as the join is, so the log keeps the room's order
        self.log.event("leave", nick=member.nickname, room=room.name, reason=reason)
        if announce and not silent(member) and \
                room.size() < self._config.announce_joins_max:
            room.channel.publish(protocol.leave_frame(member.nickname, reason, detail,
                                                      room.name))

    def awaiting_receipts(self, member: Member) -> bool:
        """True while a member that left with keep_receipts is still owed a receipt."""
        with self.lock:
            return member in self._departed

    def find(self, nickname: str) -> Member:
        """The member of that nickname (compared as nicknames are), or NoSuchMember."""
        with self.lock:
            member = self._members.get(nickname_key(nickname))
        if member is None:
            raise NoSuchMember(nickname)
        return member

    def members(self) -> list[Member]:
        with self.lock:
            return list(self._members.values())

    def set_away(self, member: Member, text: str | None, request_id: Any = None) -> None:
        """Away (with why) or back: every room the member is in hears of it, the member
        with its request's id; logged. (This node's rooms: the cluster does not carry
        it.)"""
        text = text.strip()[:self._config.max_topic] if text and text.strip() else None
        with self.lock:
            account = self._accounts.get(member)
            if account is None:
                return
            rooms = list(account.rooms)
            self.log.event("away", nick=member.nickname, text=text)
            for room in rooms:
                room.channel.publish(protocol.away_frame(member.nickname, text, room.name),
                                     member)
        member.deliver(protocol.away_frame(member.nickname, text, None, request_id))
        for room in rooms:
            room.channel.notify()

    def rooms_of(self, member: Member) -> list[str]:
        """The names of the rooms a member is in, in the order it joined them."""
        with self.lock:
            account = self._accounts.get(member)
            return [room.name for room in account.rooms] if account is not None else []

    def __len__(self) -> int:
        return len(self._members)

    # --- rooms: join, part, who, list, topic (a client's requests, the admin's commands)

    def enter(self, member: Member, name: str, request_id: Any = None) -> None:
        """A member joins a room (made if it does not exist and may be made); it gets
        the join, names (with the request's id) and history, as on its first join."""
        with self.lock:
            account = self._accounts.get(member)
            if account is None:
                return  # left meanwhile
            room = self._room_to_join(name, request_id, member.nickname)
            if room in account.rooms:
                raise ProtocolError(errors.ALREADY_IN_ROOM, f"you are in #{room.name} already",
                                    request_id=request_id)
            if len(account.rooms) >= self._config.max_rooms_per_client:
                self._close_if_empty(room)  # made for this join, maybe
                raise ProtocolError(errors.TOO_MANY_ROOMS, f"you are in {len(account.rooms)} "
                                    "rooms, the most allowed: part one first",
                                    request_id=request_id)
            frames = self._seat(member, account, room, request_id)
            self._hand_seat(member, frames)
        room.channel.notify()

    def part(self, member: Member, name: str, request_id: Any = None) -> None:
        """A member leaves a room (not its last: it would be in none); it gets its own
        leave notice (with the request's id), the room hears of it."""
        with self.lock:
            account = self._accounts.get(member)
            if account is None:
                return
            room = self._existing(name, request_id)
            if room not in account.rooms:
                raise ProtocolError(errors.NOT_IN_ROOM, f"you are not in #{room.name}",
                                    request_id=request_id)
            if len(account.rooms) == 1:
                raise ProtocolError(errors.LAST_ROOM, f"#{room.name} is the last room you "
                                    "are in: join another first, or quit",
                                    request_id=request_id)
            finished = self._part(member, account, room, "part", None)
        room.channel.notify()
        member.deliver(protocol.leave_frame(member.nickname, "part", None, room.name,
                                            request_id))
        self.report(finished)

    def _part(self, member: Member, account: Standing, room: Room, reason: str,
              detail: str | None) -> list[Pending]:
        """Under the lock: out of one room, its receipts there settled. What it owed there
        is not counted apart (a confirm costs one count), so the room's pending receipts
        are looked through: O(pending), for a part (a person's act), never per message."""
        joined_at = account.rooms.pop(room)
        self._unseat(member, account, room, reason, detail)
        self.broker.publish({"kind": "part", "nick": member.nickname, "room": room.name,
                             "reason": reason, "detail": detail})
        emptied, owed = [], 0
        for pending in list(self.receipts.pending.values()) if not member.quiet else ():
            if pending.room is room and member in pending.waiting:
                pending.waiting.discard(member)
                owed += 1
                if pending.done():
                    emptied.append(pending)
        # the room's messages since it joined leave its count: those it had settled with
        # them (what it still owed there is no longer owed: just dropped from waiting)
        account.settled -= room.messages_sent - joined_at - owed
        finished = [self.finish(pending) for pending in emptied]
        self._close_if_empty(room)
        return finished

    def names(self, request_id: Any = None, name: str | None = None) -> bytes:
        """Who is in a room (None: the default room)."""
        with self.lock:
            room = self._existing(name, request_id)
            return room.names_frame(self._config.announce_joins_max, request_id)

    def room_list(self) -> list[dict[str, Any]]:
        """Every room: name, members, topic; sorted by name."""
        with self.lock:
            rooms = [room.summary() for room in self.rooms.values()]
        return sorted(rooms, key=lambda r: r["room"].casefold())

    def topic(self, member: Member, name: str, text: str | None,
              request_id: Any = None) -> None:
        """Tell a member a room's topic (text None), or set it (a member of the room)."""
        if text is None:
            with self.lock:
                room = self._existing(name, request_id)
                topic = room.topic
            member.deliver(protocol.topic_frame(room.name, topic.text, topic.by or None,
                                                topic.at or None, request_id, asked=True))
            return
        with self.lock:
            room = self._existing(name, request_id)
            account = self._accounts.get(member)
            if account is None or room not in account.rooms:
                raise ProtocolError(errors.NOT_IN_ROOM, f"you are not in #{room.name}",
                                    request_id=request_id)
            answer = self._set_topic(room, text, member.nickname, request_id, member)
        room.channel.notify()
        member.deliver(answer)

    def set_topic(self, name: str, text: str, by: str) -> str:
        """An operator sets a room's topic (NoSuchRoom); the room's name."""
        with self.lock:
            room = self.room_named(name)
            if room is None:
                raise NoSuchRoom(name)
            self._set_topic(room, text, by)
        room.channel.notify()
        return room.name

    def _set_topic(self, room: Room, text: str, by: str, request_id: Any = None,
                   setter: Member | None = None) -> bytes:
        """Under the lock: the room hears of its new topic (but the setter, whose copy,
        with its request's id, is returned)."""
        size = len(text.encode("utf-8", "replace"))
        if size > self._config.max_topic:
            raise ProtocolError(errors.TOPIC_TOO_LONG, f"a topic of {size} bytes is over the "
                                f"limit of {self._config.max_topic}", request_id=request_id)
        stamp = protocol.now_iso()
        room.topic.text, room.topic.by, room.topic.at = text, by, stamp
        self.log.event("topic", room=room.name, nick=by, text=text)
        room.channel.publish(protocol.topic_frame(room.name, text, by, stamp), setter)
        self.broker.publish({"kind": "topic", "room": room.name, "topic": text, "by": by,
                             "at": stamp})
        return protocol.topic_frame(room.name, text, by, stamp, request_id)

    # --- messages and receipts

    def message(self, sender: Member, frame_uuid: str, text: str, to: str | None = None,
                action: bool = False, room_name: str | None = None) -> int:
        """Broadcast a message to a room's members but its sender, or send it to `to`
        alone; returns the recipient count."""
        stamp = protocol.now_iso()
        now = time.monotonic()
        finished = []
        room: Room | None = None
        with self.lock:
            if frame_uuid in self.receipts:
                raise ProtocolError(errors.BAD_UUID, "uuid is already in use by a pending "
                                    "message", frame_uuid)
            account = self._accounts.get(sender)
            if account is None:
                return 0  # left while this was read
            target = remote = None
            if to is not None:
                target = self._members.get(nickname_key(to))
                remote = self.relay.member(nickname_key(to)) if target is None else None
                if target is sender:
                    raise ProtocolError(errors.NO_SUCH_NICKNAME, "that is you", frame_uuid)
                found: Member | RemoteMember | None = target or remote
                if found is None:
                    raise ProtocolError(errors.NO_SUCH_NICKNAME, f"no such nickname: {to}",
                                        frame_uuid)
                to = found.nickname
            else:
                room = self._existing(room_name, frame_uuid=frame_uuid)
                if room not in account.rooms:
                    raise ProtocolError(errors.NOT_IN_ROOM, f"you are not in #{room.name}"
                                        + ("" if room_name else ": name the room the message "
                                           "is for"), frame_uuid)
            frame = protocol.chat_frame(frame_uuid, sender.nickname, text, stamp, to, action,
                                        room.name if room is not None else None)
            recipients = 1 if target is not None else 0 if remote is not None \
                else len(room.listeners) - (not sender.quiet)  # type: ignore[union-attr]
            # other nodes acknowledge with their recipients; the receipt waits for them
            nodes = {remote.node} if remote is not None else set() if target is not None \
                else set(self.broker.others())
            self.counters.messages += 1
            self.counters.deliveries += recipients
            if room is not None:
                room.counters.messages += 1
                room.counters.deliveries += recipients
            # recipients: this node's; nodes: the others that will count theirs (the
            # `delivery` line has the whole room's)
            self.log.event("message", nick=sender.nickname,
                           room=room.name if room is not None else None, uuid=frame_uuid,
                           recipients=recipients, nodes=len(nodes) or None, to=to,
                           action="yes" if action else None, text=text)
            if room is not None:
                room.history.remember((sender.nickname, stamp,
                                       protocol.chat_text(sender.nickname, text), frame_uuid),
                                      self._config.history)
            if room is not None or self._config.history_private:
                self.keep(frame_uuid, room, sender.nickname, sender.account, text, action)
            if recipients or nodes:
                waiting = {target} if target is not None else \
                    set(room.listeners.values()) if room is not None else set()
                waiting.discard(sender)
                pending = Pending(frame_uuid, sender, waiting, recipients,
                                  now + self._config.confirm_timeout, nodes=nodes, room=room)
                self.receipts.add(pending)
                if isinstance(account.sent, set):
                    account.sent.add(frame_uuid)
                else:
                    account.sent = {frame_uuid}
                if target is not None:  # owed by the target alone
                    self._accounts[target].private += 1
                elif room is not None:
                    room.messages_sent += 1
                    account.settled += 1  # nobody owes a receipt for their own
                    room.channel.publish(frame, sender, chat=True)
                if len(self.receipts) > self._config.pending_confirms \
                        and self.receipts.bound_check_due():
                    finished = self._expire_oldest_for_laggards()
            else:
                self.counters.undelivered += 1
                if room is not None:
                    room.counters.undelivered += 1
            # even heard by nobody: it is history for the nodes that start later
            self.broker.publish({"kind": "message", "uuid": frame_uuid,
                                 "nick": sender.nickname, "text": text, "stamp": stamp,
                                 "to": to, "action": action,
                                 "room": room.name if room is not None else None,
                                 "at": remote.node if remote is not None else None})
        if room is not None:
            room.channel.notify()
        if target is not None:
            target.deliver(frame)
        if not recipients and not nodes:
            sender.deliver(protocol.undelivered_frame(frame_uuid, protocol.NOBODY_HERE))
            self.log.event("undelivered", uuid=frame_uuid,
                           room=room.name if room is not None else None, reason="nobody_here")
        self.report(finished)
        return recipients

    def _owed(self, account: Standing) -> int:
        """How many pending receipts wait on this member's confirm, in every room and
        privately."""
        return sum(room.messages_sent - joined_at for room, joined_at in account.rooms.items()) \
            + account.private - account.settled

    def _expire_oldest_for_laggards(self) -> list[Pending]:
        """Under the lock, with more receipts pending than one member may owe: whoever
        owes more than `keep` (pending_confirms less 1/EXPIRY_BATCH of it) has its oldest
        receipts expire until it owes `keep` at most. Then nobody can owe more than the
        bound before another bound - keep receipts are added: the next check waits for
        them, so a room whose members never confirm (clients that know nothing of
        receipts) pays for this once per that many messages, not at each.

        Only a member waiting on one of the oldest (pending - keep) receipts can owe more
        than `keep` (else all it owes are among the newest `keep`), so those are the ones
        looked at, once each; each loses every one of those it waits on, by set
        operations (C), not one look per recipient of every message (BENCHMARKS.md).
        """
        limit = self._config.pending_confirms
        keep = limit - limit // EXPIRY_BATCH
        batch = self.receipts.oldest(len(self.receipts) - keep)
        self.receipts.no_bound_check_for(limit - keep + 1)
        accounts = self._accounts
        # who waits on any of them: their rooms' listeners (a set each, not the union of a
        # set per message), and a private message's one recipient
        candidates: set[Member] = set()
        seen: set[Room] = set()
        for pending in batch:
            if pending.room is None:
                candidates |= pending.waiting
            elif pending.room not in seen:
                seen.add(pending.room)
                candidates.update(pending.room.listeners.values())
        laggards = set()
        for member in candidates:
            account = accounts[member]  # _owed, inline: the hot path of a silent room
            rooms = account.rooms
            if len(rooms) == 1:
                for room, joined_at in rooms.items():
                    owed = room.messages_sent - joined_at
            else:
                owed = sum(room.messages_sent - joined_at for room, joined_at in rooms.items())
            if owed + account.private - account.settled > keep:
                laggards.add(member)
        if not laggards:
            return []
        # what each laggard waited on of the batch: all of it but what it did not (few:
        # its own messages, those sent before it joined or that it confirmed)
        missed = collections.Counter(itertools.chain.from_iterable(
            [laggards - pending.waiting for pending in batch]))
        for pending in batch:
            pending.waiting -= laggards
        for member in laggards:
            accounts[member].settled += len(batch) - missed[member]
        return [self.finish(pending) for pending in batch if pending.done()]

    def confirm(self, member: Member, frame_uuid: str) -> None:
        """A recipient confirms a message; only once, and only if it was sent to it."""
        if self.confirm_many(member, [frame_uuid]):
            raise ProtocolError(errors.UNKNOWN_UUID, f"no pending message {frame_uuid} "
                                "for you to confirm", frame_uuid)

    def confirm_many(self, member: Member, uuids: list[str]) -> list[str]:
        """Confirms that arrived together, under one lock; returns the unknown uuids.

        Under load a loop finds many confirms in one read: taking the lock once for all
        of them, not once each, keeps the lock short and rarely contended.
        """
        return self.confirm_batch([(member, uuids)])[0]

    def confirm_batch(self, batch: Sequence[tuple[Member, list[str]]]) -> list[list[str]]:
        """The confirms of many members read in one turn of a loop (each member's in the
        order read), under one lock; the unknown uuids of each, in the batch's order.

        At 20 senders x 20 msg/s to 200 members a loop reads 180 members' confirms a
        message, one each: settling them together is one lock, one report and one
        publish to the broker for all (BENCHMARKS.md, "p99 on an independent generator").
        """
        unknowns: list[list[str]] = []
        finished: list[Pending] = []
        relayed: dict[str, dict[str, int]] = {}  # origin node -> uuid -> confirms, for it
        each = self._config.log_confirms == "each"
        logged: list[tuple[str, str | None, str]] = []  # (uuid, room, nick): log_confirms
        receipts = self.receipts
        pending_by_uuid = receipts.pending
        with self.lock:
            confirmed_total = 0
            for member, uuids in batch:
                unknown: list[str] = []
                unknowns.append(unknown)
                late = 0
                account = self._accounts.get(member)
                for frame_uuid in uuids:
                    pending = pending_by_uuid.get(frame_uuid)
                    if account is None or pending is None or member not in pending.waiting:
                        if receipts.was_settled(frame_uuid):
                            late += 1  # settled without it: correct, nobody left to tell
                            if each:
                                logged.append((frame_uuid, None, member.nickname))
                        else:
                            unknown.append(frame_uuid)
                        continue
                    waiting, origin, room = pending.waiting, pending.origin, pending.room
                    waiting.discard(member)
                    pending.delivered += 1
                    if each:
                        logged.append((frame_uuid, room.name if room is not None else None,
                                       member.nickname))
                    if origin is not None:  # its sender is on another node
                        counts = relayed.setdefault(origin, {})
                        counts[frame_uuid] = counts.get(frame_uuid, 0) + 1
                    if not waiting and not pending.nodes:  # done(), inline: the hot path
                        finished.append(self.finish(pending))
                    elif pending.delivered == 1 and origin is None:
                        # the sender hears at most receipt_wait later
                        receipts.wait_for_more(pending,
                                               time.monotonic() + self._config.receipt_wait)
                confirmed = len(uuids) - len(unknown) - late
                if account is not None:
                    account.settled += confirmed
                confirmed_total += confirmed
            for origin, counts in relayed.items():  # one event per origin, not per confirm
                self.broker.publish({"kind": "confirms", "to": origin, "counts": counts})
            self.counters.confirms += confirmed_total
            for frame_uuid, room_name, nick in logged:
                self.log.event("confirm", uuid=frame_uuid, room=room_name, nick=nick)
        if finished:
            self.report(finished)
        return unknowns

    def expire(self, now: float | None = None) -> None:
        """Send the receipts whose receipt_wait has passed; settle every pending receipt
        whose confirm timeout has passed."""
        now = time.monotonic() if now is None else now
        with self.lock:
            finished = [self.finish(pending) for pending in self.receipts.timed_out(now)]
            self.counters.receipts_expired += len(finished)
            early = self.receipts.receipts_due(now)
        for pending in early:  # delivered so far; the log line waits for the final count
            pending.sender.deliver(protocol.receipt_frame(pending.uuid, pending.delivered,
                                                          pending.recipients))
        self.report(finished)

    def finish(self, pending: Pending) -> Pending:
        """Under the lock: drop the pending receipt; report() tells the sender later."""
        self._forget(pending)
        if pending.delivered == 0 and pending.origin is None:
            self.counters.undelivered += 1
            if pending.room is not None:
                pending.room.counters.undelivered += 1
        elif pending.origin is None:  # its final count (metrics): everyone, or some
            if pending.delivered >= pending.recipients:
                self.counters.receipts_settled += 1
            else:
                self.counters.receipts_partial += 1
        return pending

    def _forget(self, pending: Pending) -> None:
        self.receipts.drop(pending, SETTLED_MEMORY_FACTOR * self._config.pending_confirms)
        sender = self._accounts.get(pending.sender)
        if sender is None:  # a departed sender is let go in report(), once it has its receipt
            sender = self._departed.get(pending.sender)
            if sender is not None:
                sender.in_flight += 1
                pending.to_departed = True
        if sender is not None and isinstance(sender.sent, set):
            sender.sent.discard(pending.uuid)
        for member in pending.waiting:  # they owe it no more (timed out, sender left)
            account = self._accounts.get(member)
            if account is not None:
                account.settled += 1

    def report(self, finished: list[Pending]) -> None:
        """Outside the lock: tell each sender, log the final count; a departed sender that
        has all its receipts now is let go, and told so (not before: it would end its
        connection while its last receipts were still on their way to it)."""
        for pending in finished:
            self._tell(pending)
            if pending.to_departed:
                with self.lock:
                    account = self._departed.get(pending.sender)
                    done = False
                    if account is not None:
                        account.in_flight -= 1
                        if not account.sent and not account.in_flight:
                            del self._departed[pending.sender]
                            done = True
                if done:
                    pending.sender.receipts_done()

    def _tell(self, pending: Pending) -> None:
        """The sender's receipt (unless receipt_wait sent it) and the log's final line;
        for another node's message, its final tally to that node (which logs it)."""
        if pending.origin is not None:
            self.broker.publish({"kind": "tally", "to": pending.origin, "uuid": pending.uuid,
                                 "delivered": pending.delivered,
                                 "recipients": pending.recipients})
            return
        room = pending.room.name if pending.room is not None else None
        if not pending.recipients:  # every other node acknowledged nobody
            self.log.event("undelivered", uuid=pending.uuid, room=room, reason="nobody_here")
            pending.sender.deliver(protocol.undelivered_frame(pending.uuid,
                                                              protocol.NOBODY_HERE))
            return
        if pending.delivered:
            frame = protocol.receipt_frame(pending.uuid, pending.delivered,
                                           pending.recipients)
            self.log.event("delivery", uuid=pending.uuid, room=room,
                           delivered=pending.delivered, recipients=pending.recipients)
            if pending.reported:  # the sender had its receipt at receipt_wait
                return
        else:
            frame = protocol.undelivered_frame(pending.uuid, protocol.NOBODY_CONFIRMED,
                                               pending.recipients)
            self.log.event("undelivered", uuid=pending.uuid, room=room,
                           reason="nobody_confirmed")
        pending.sender.deliver(frame)

    # --- for the relay (relay.py): the other nodes' events, under the lock

    def local_member(self, key: str) -> Member | None:
        """Under the lock: this node's member of that nickname key."""
        return self._members.get(key)

    def room_for_remote(self, name: str | None) -> Room | None:
        """Under the lock: the room another node's event names (None: the default room),
        made here if it is new to this node (the other node decided it may be); None
        when the name is not one this version takes."""
        if name is None:
            return self.default
        try:
            name = check_room_name(name, max(self._config.max_room_name, len(name)))
        except ProtocolError:
            return None
        key = room_key(name)
        return self.rooms.get(key) or self._open(name, key, by="another node")

    def close_if_empty(self, room: Room) -> None:
        """Under the lock: see _close_if_empty."""
        self._close_if_empty(room)

    def owe(self, target: Member | None, room: Room | None) -> None:
        """Under the lock: another node's message now pending here, owed by `target`
        (a private one) or by every listener of the room."""
        if target is not None:
            self._accounts[target].private += 1
        elif room is not None:
            room.messages_sent += 1

    def claims(self) -> list[tuple[Member, str, str]]:
        """(member, nickname, claim token) of every member of this node."""
        with self.lock:
            return [(m, m.nickname, self._accounts[m].claim) for m in self._members.values()
                    if m in self._accounts]

    def set_claim(self, member: Member, token: str) -> None:
        with self.lock:
            account = self._accounts.get(member)
            if account is not None:
                account.claim = token

    def keep(self, frame_uuid: str, room: Room | None, nickname: str, account: str | None,
             text: str, action: bool = False, kind: str | None = None,
             at: float | None = None) -> None:
        """A message for the lasting history (its writer's queue: never waits)."""
        store = self.history_store
        if store is None:
            return
        prefix = nickname + ": "
        store.put(Kept(frame_uuid, room.key if room is not None else None,
                       room.name if room is not None else None, nickname,
                       nickname_key(nickname), nickname_key(account) if account else None,
                       at or time.time(),
                       text[len(prefix):] if text.startswith(prefix) else text,
                       kind or ("action" if action else "message")))

    def scroll(self, member: Member, room_name: str | None, before: str | None,
               limit: int | None, request_id: Any) -> None:
        """A page of a room's lasting history for a member of it, delivered to it when
        the reader has it (a `history` frame with the request's id, `more` when older
        messages remain)."""
        room, store = self._readable(member, room_name, request_id)
        config = self._config
        future = store.page(room.key, before, min(limit or config.history_page,
                                                  config.history_page))
        _answer(member, future, request_id, lambda page: protocol.page_frame(
            "history", room.name, [k.shown() for k in page[0]], request_id,
            config.history_bytes, page[1]))

    def search(self, member: Member, room_name: str | None, words: str, raw: bool,
               limit: int | None, request_id: Any) -> None:
        """Search a room the member is in; its matches (newest first) delivered to it."""
        room, store = self._readable(member, room_name, request_id)
        config = self._config
        future = store.search(room.key, words, min(limit or config.search_results,
                                                   config.search_results), raw)
        _answer(member, future, request_id, lambda kept: protocol.page_frame(
            "search", room.name, [k.shown() for k in kept], request_id,
            config.history_bytes))

    def _readable(self, member: Member, room_name: str | None,
                  request_id: Any) -> tuple[Room, HistoryStore]:
        """The room named (None: the default room) and the store, for a member of it."""
        if self.history_store is None:
            raise ProtocolError(errors.HISTORY_OFF, "this server keeps no history",
                                request_id=request_id)
        with self.lock:
            room = self._existing(room_name, request_id)
            standing = self._accounts.get(member)
            if standing is None or room not in standing.rooms:
                raise ProtocolError(errors.NOT_IN_ROOM, f"you are not in #{room.name}",
                                    request_id=request_id)
        return room, self.history_store

    def seed_history(self, entries: list[tuple[Any, ...]]) -> None:
        """The stream's last public messages (room, nickname, time, text, uuid), for a
        node that starts empty; the lasting history keeps those of its rooms (a uuid it
        has is not written twice)."""
        with self.lock:
            by_room: dict[Room, list[tuple[str, ...]]] = {}
            for room_name, nickname, stamp, text, *rest in entries:
                frame_uuid = rest[0] if rest and isinstance(rest[0], str) else None
                entry = (nickname, stamp, protocol.chat_text(nickname, text),
                         *((frame_uuid,) if frame_uuid else ()))
                room = self.default if room_name is None else self.room_named(room_name)
                if room is not None and frame_uuid:
                    self.keep(frame_uuid, room, nickname, None, text, at=parse_time(stamp))
                if room is not None:
                    by_room.setdefault(room, []).append(entry)
                elif isinstance(room_name, str):  # kept for when the room opens here
                    seeds = self._seeds.setdefault(room_key(room_name.lstrip("#")), [])
                    seeds.append(entry)
                    del seeds[:-self._config.history or len(seeds)]
            for room, rows in by_room.items():
                room.history.seed(rows, self._config.history)

    # --- operator actions

    def remote_members(self) -> list[RemoteMember]:
        with self.lock:
            return self.relay.everyone()

    def node_of(self, nickname: str) -> str | None:
        """The node of another node's member of that nickname, or None."""
        with self.lock:
            remote = self.relay.member(nickname_key(nickname))
        return remote.node if remote is not None else None

    # --- the one way a member is put out (an operator's kick, a ban, a nickname another
    # node took): the member is told why, then its connection closes and it leaves

    def disconnect(self, member: Member, reason: str, notice: bytes,
                   detail: str | None = None) -> None:
        member.close(reason, notice, detail=detail)

    def kick(self, nickname: str, reason: str, room_name: str | None = None) -> str:
        """An operator's kick of this node's member of that nickname (NoSuchMember): out
        of the daemon, or out of one room (NoSuchRoom, NotInRoom); a kick from the last
        room it is in is a kick from the daemon (in no room, it would hear nothing)."""
        member = self.find(nickname)
        if room_name is not None:
            with self.lock:
                room = self.room_named(room_name)
                if room is None:
                    raise NoSuchRoom(room_name)
                account = self._accounts.get(member)
                if account is None or room not in account.rooms:
                    raise NotInRoom(member.nickname, room.name)
                finished = None
                if len(account.rooms) > 1:
                    finished = self._part(member, account, room, "kicked", reason)
            if finished is not None:
                room.channel.notify()
                member.deliver(protocol.kick_frame(reason, room.name))
                self.report(finished)
                return member.nickname
        self.disconnect(member, "kicked", protocol.kick_frame(reason), reason)
        return member.nickname

    def ban_out(self, banned: Callable[[str, str, str | None], bool], reason: str,
                how_long: str) -> list[str]:
        """Every member of this node that banned(nickname, ip, account) says a ban matches
        leaves, told it is a ban; their nicknames."""
        out = [m for m in self.members() if banned(m.nickname, m.ip, m.account)]
        for member in out:
            self.disconnect(member, "banned", protocol.ban_frame(reason, how_long), reason)
        return [member.nickname for member in out]

    def matching(self, predicate: Callable[[str, str, str | None], bool]) -> list[str]:
        """The nicknames of every member (every node's) that predicate(nickname, ip,
        account) picks."""
        with self.lock:
            everyone: list[Member | RemoteMember] = [*self._members.values(),
                                                     *self.relay.everyone()]
        return [m.nickname for m in everyone if predicate(m.nickname, m.ip, m.account)]

    def announce(self, text: str, room_name: str | None = None) -> int:
        """An operator's announcement to one room (NoSuchRoom), or to everyone (once
        each, whatever rooms they are in); the members it reaches on every node."""
        if room_name is None:
            frame = protocol.announce_frame(text)
            with self.lock:
                self.broker.publish({"kind": "announce", "text": text})
                members = list(self._members.values())
                reached = len(members) + len(self.relay.everyone())
            for member in members:
                member.deliver(frame)
            return reached
        with self.lock:
            room = self.room_named(room_name)
            if room is None:
                raise NoSuchRoom(room_name)
            room.channel.publish(protocol.announce_frame(text, room.name))
            self.broker.publish({"kind": "announce", "text": text, "room": room.name})
            reached = room.size()
            self.keep(str(uuid.uuid4()), room, "operator", None, text, kind="announcement")
        room.channel.notify()
        return reached

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
        return len(self.receipts)

    def room_stats(self) -> dict[str, dict[str, int]]:
        """Per room: members (every node's) and its counters."""
        with self.lock:
            return {room.name: {"members": room.size(), **dataclasses.asdict(room.counters)}
                    for room in self.rooms.values()}

    def room_members(self, name: str) -> tuple[str, list[Member], list[RemoteMember]]:
        """A room's name and members (this node's, the others'); NoSuchRoom."""
        with self.lock:
            room = self.room_named(name)
            if room is None:
                raise NoSuchRoom(name)
            return room.name, list(room.members.values()), list(room.remote.values())

    # --- hitless upgrade: the hall as a plain record, and back

    def export_state(self, ident: Any) -> dict:
        """Rooms, members, receipts and counters, members named by ident(member); times
        as what is left of them."""
        now = time.monotonic()

        def account(member: Member, a: Standing) -> list:
            return [ident(member), [[room.key, joined_at] for room, joined_at in a.rooms.items()],
                    a.settled, a.private, sorted(a.sent), a.in_flight, a.claim, a.key]
        with self.lock:
            return {
                "format": 2,  # rooms (issue 25); an image before them wrote one room
                "default": self.default.key,
                "rooms": [room.export() for room in self.rooms.values()],
                "members": [ident(m) for m in self._members.values()],
                "accounts": [account(m, a) for m, a in self._accounts.items()],
                "departed": [account(m, a) for m, a in self._departed.items()],
                **self.receipts.export(now, ident),
                "remote": self.relay.export(),
                "counters": dataclasses.asdict(self.counters),
            }

    def import_state(self, state: dict, member_of: Any) -> None:
        """The hall as export_state left it; member_of(ident) is the member (or None if
        it is gone). Members are subscribed to their rooms' channels again."""
        if state.get("format") != 2:
            state = _one_room_image(state, self.default.key)
        now = time.monotonic()
        with self.lock:
            for record in state["rooms"]:
                room = self.rooms.get(record["key"])
                if room is None:
                    room = self._open(record["name"], record["key"])
                room.restore(record)
            for table, rows in ((self._accounts, state["accounts"]),
                                (self._departed, state["departed"])):
                for ident, seats, settled, private, sent, in_flight, claim, key in rows:
                    member = member_of(ident)
                    if member is None:
                        continue
                    account = Standing({}, settled, set(sent), private, in_flight,
                                      claim, key or nickname_key(member.nickname))
                    for room_key_, joined_at in seats:
                        room = self.rooms.get(room_key_)
                        if room is not None:
                            account.rooms[room] = joined_at
                    table[member] = account
            for ident in state["members"]:
                member = member_of(ident)
                if member is None or member not in self._accounts:
                    continue
                account = self._accounts[member]
                self._members[account.key] = member
                for room in account.rooms:
                    room.members[account.key] = member
                    if not member.quiet:
                        room.listeners[account.key] = member
                        room.channel.subscribe(member)
            self.receipts.restore(state, now, member_of, self.rooms.get)
            self.relay.restore(state.get("remote", []))
            self.counters = Counters(**state["counters"])
            for room in list(self.rooms.values()):
                self._close_if_empty(room)


def _answer(member: Member, future: Future, request_id: Any,
            frame: Callable[[Any], bytes]) -> None:
    """When the history's reader has it: the answer to the member's request (frame of the
    result), or history_failed."""
    def done(future: Future) -> None:
        try:
            result = future.result()
        except HistoryError as exc:
            member.deliver(protocol.error_frame(errors.HISTORY_FAILED, str(exc),
                                                request_id=request_id))
            return
        member.deliver(frame(result))
    future.add_done_callback(done)


def silent(member: Member) -> bool:
    """It joins and leaves without notices: a poster, or a bot."""
    return member.quiet or member.role == "bot"


def _names(rooms: Iterable[Room]) -> str:
    return ",".join(room.name for room in rooms)


def _one_room_image(state: dict, default_key: str) -> dict:
    """An image from before rooms (one room, its members and receipts): its room is the
    default room; the counts are the same (messages since joining, private ones, settled);
    its pending receipts of private messages, not told apart, are taken as the room's
    (which changes nothing of what anyone owes, nor who is told what)."""
    counters = dict(state["counters"])
    room_counters = {k: counters.get(k, 0) for k in ("messages", "deliveries",
                                                     "undelivered")}

    def account(row: list) -> list:
        ident, joined_at, settled, sent, private, in_flight, *rest = row
        claim, key = (rest + [UNCLAIMED, ""])[:2]
        return [ident, [[default_key, joined_at]], settled, private, sent, in_flight, claim,
                key]
    return {
        "format": 2,
        "rooms": [{"name": "", "key": default_key, "declared": True,
                   "topic": ["", "", ""], "history": state["history"],
                   "messages_sent": state["messages_sent"], "counters": room_counters}],
        "members": state["members"],
        "accounts": [account(row) for row in state["accounts"]],
        "departed": [account(row) for row in state["departed"]],
        "pending": [row[:8] + (row[8:10] or [[], None]) + [default_key]
                    for row in state["pending"]],
        "receipt_times": state["receipt_times"], "settled": state["settled"],
        # [key, nickname, node, address, tls, connected, quiet] (older: without the key)
        "remote": [[*([] if len(row) == 7 else [nickname_key(row[0])]), *row, [default_key]]
                   for row in state.get("remote", [])],
        "counters": counters,
    }
