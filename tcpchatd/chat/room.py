"""The room: members, broadcast, delivery receipts, kick, counters.

Its parts each have a module of their own: the pending receipts and their clocks
(receipts.py), the recent history (history.py), the other nodes' members and events
(relay.py: the `remote_*` methods, called by the broker, chat/broker.py). One lock
guards membership, pending receipts and the broadcast append. Frames are encoded before
it is taken; a broadcast is published under it to the Channel (the
engine's broadcast log: an O(1) append, so the order in which clients see events and
who sees them are the room's), and frames for one member are handed over after it is
released. No socket I/O (nor a slow member) ever happens under it. The room knows a
member only by the Member protocol, so it can be tested without sockets.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..wire import errors, protocol
from ..wire.errors import ProtocolError
from ..wire.nicknames import nickname_key
from .bans import BanList
from .broker import UNCLAIMED, Broker
from .history import History
from .receipts import SETTLED_MEMORY_FACTOR, Pending, Receipts
from .relay import Relay, RemoteMember


class Member(Protocol):
    """What the room and the admin commands know of a client."""

    nickname: str     # "" until it is in the room
    address: str      # `ip:port` or `[v6]:port`, for `who` and the log
    ip: str           # the peer's address, for bans
    tls: bool         # it came in on a TLS port
    quiet: bool       # a poster (hello mode post): no join or leave notices, not in names
    connected: float  # time.time() when it connected
    last_active: float  # time.monotonic() of its last frame
    sent: int         # messages it sent

    @property
    def received(self) -> int:
        """Chat messages queued for it."""

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this member alone; never blocks (it may close the member)."""

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None) -> object:
        """Leave the room and disconnect, after sending final_frame if given."""

    def receipts_done(self) -> None:
        """A member that left half-closed has every receipt it was owed (see leave)."""


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


class Channel(Protocol):
    """Where broadcasts go (the engine's broadcast log); called under the room's lock.
    (Its members are the room's; the engine knows them as its loops' clients.)"""

    def subscribe(self, member: Any) -> None: ...

    def unsubscribe(self, member: Any) -> None: ...

    def publish(self, frame: bytes, sender: Any = None, chat: bool = False) -> None:
        """Queue a frame for every subscriber but the sender; O(1), no system call."""

    def notify(self) -> None:
        """After the lock is released: start sending what was published."""


class EventLog(Protocol):
    """The traffic log (service/trafficlog.py): one event, never waiting."""

    def event(self, name: str, **fields: Any) -> None: ...


class RoomSettings(Protocol):
    """What the room reads of the settings (replaced as a whole on reload)."""

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


@dataclass(eq=False)
class Account:
    """What the room keeps of one member: its own pending messages and what it owes.

    The receipts a member owes are counted, not listed, so that a message costs the
    room O(1) per recipient in C (one set of recipients) and nothing in Python: it owes
    every message sent since it joined, except its own, minus those it confirmed or
    that were settled without it (see Room._owed).
    """

    joined_at: int                  # Room._messages_sent when it joined
    settled: int = 0                # its own messages, confirms, and receipts settled
    sent: set = field(default_factory=set)  # uuids of its pending messages
    private: int = 0                # private messages it received (not in _messages_sent)
    in_flight: int = 0              # departed: receipts settled, not yet handed to it
    claim: str = UNCLAIMED          # the broker's token for its nickname
    key: str = ""                   # its nickname_key, kept from its join (and carried by
    #                                 an upgrade: a new version's keys may differ)


@dataclass
class Counters:
    messages: int = 0
    deliveries: int = 0
    confirms: int = 0
    undelivered: int = 0
    send_queue_disconnects: int = 0


class Room:
    """One chat room; `config` is replaced as a whole on reload."""

    def __init__(self, config: RoomSettings, log: EventLog, channel: Channel,
                 bans: BanList | None = None, *, broker: Broker) -> None:
        self.config = config
        self.log = log
        self.channel = channel
        self.bans = bans
        self.broker = broker
        self.relay = Relay(self)  # the other nodes' members and events
        self.lock = threading.Lock()
        self.counters = Counters()
        self._members: dict[str, Member] = {}        # nickname_key -> member
        # ... of them, those who hear the room's messages (not the posters)
        self._listeners: dict[str, Member] = {}
        self._accounts: dict[Member, Account] = {}
        # members that left half-closed, still owed receipts for their own messages
        self._departed: dict[Member, Account] = {}
        self.receipts = Receipts()
        self._messages_sent = 0                      # messages that had recipients
        self.history = History()

    # --- membership

    def join(self, member: Member, nickname: str, settled: Settled) -> None:
        """Add a member under its nickname.

        What the room can tell at once (a ban, a nickname in use) is raised. The claim of
        the nickname in a cluster takes a round trip to the broker, made off the caller's
        thread (an event loop must never wait on Redis): settled(None) once joined, or
        settled(error) when another node's member holds the nickname; called from this
        thread when the broker answers at once (the embedded room), else from the broker's.
        The newcomer gets, in this order: its join, who is here (names), the history.
        """
        key = nickname_key(nickname)
        self._refuse_banned(nickname, member.ip)
        with self.lock:  # the cheap refusal first: no round trip to the broker
            self._refuse_taken(key, nickname)
        info = {"addr": member.address, "tls": member.tls, "since": member.connected}
        if member.quiet:
            info["quiet"] = True
        self.broker.claim(nickname, info, lambda claim: settled(
            self._joined(member, nickname, key, info, claim)))

    def _joined(self, member: Member, nickname: str, key: str, info: dict,
                claim: str | None) -> ProtocolError | None:
        """The join, once the broker has answered for the nickname (claim None: taken)."""
        if claim is None:
            return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")
        frame = protocol.join_frame(nickname)
        with self.lock:
            if key in self._members:
                self.broker.release(nickname, claim)
                return ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")
            self.relay.members.pop(key, None)  # the claim is the truth: that member has left
            member.nickname = nickname
            self._members[key] = member
            self._accounts[member] = Account(self._messages_sent, claim=claim, key=key)
            if not member.quiet:  # a poster hears nothing of the room and owes no receipt
                self._listeners[key] = member
                self.channel.subscribe(member)
            self.broker.publish({"kind": "join", "nick": nickname, **info})
            # logged under the lock, so the log keeps the room's order of events
            self.log.event("join", nick=nickname, addr=member.address,
                           tls="yes" if member.tls else None,
                           post="yes" if member.quiet else None)
            # a very large room, or a poster: only the newcomer hears of its join
            alone = member.quiet or self.size() > self.config.announce_joins_max
            if not alone:  # everyone hears of it, the newcomer too
                self.channel.publish(frame)
            history, count = self.history.frame(self.config.history,
                                                self.config.history_bytes)
            names = self._names_frame(history=count)
        self.channel.notify()
        if alone:
            member.deliver(frame)
        if member.quiet:  # a poster catches up on nothing
            return None
        member.deliver(names)  # queued after the join's place in the log: it follows it
        if history is not None:
            member.deliver(history)
        return None

    def _refuse_taken(self, key: str, nickname: str) -> None:
        if key in self._members or key in self.relay.members:
            raise ProtocolError(errors.NICKNAME_TAKEN, f"nickname {nickname!r} is taken")

    def _names_frame(self, request_id: int | str | None = None,
                     history: int | None = None) -> bytes:
        """Under the lock: who is here (on every node), sorted; the list complete up to
        announce_joins_max."""
        everyone: list[Member | RemoteMember] = [*self._members.values(),
                                                 *self.relay.members.values()]
        members = [m for m in everyone if not m.quiet]
        limit = self.config.announce_joins_max
        names = sorted((m.nickname for m in members), key=str.casefold) \
            if len(members) <= limit else [m.nickname for m in members[:limit]]
        return protocol.names_frame(names, len(members), request_id, history)

    def names(self, request_id: int | str | None = None) -> bytes:
        with self.lock:
            return self._names_frame(request_id)

    def _refuse_banned(self, nickname: str, ip: str | None = None) -> None:
        """A ban on the nickname, or on the member's address (a connection accepted
        before the ban that sends its nickname after it), refuses the join."""
        if self.bans is None:
            return
        ban = self.bans.for_nickname(nickname)
        if ban is not None:
            raise ProtocolError(errors.BANNED, f"nickname {nickname!r} is {ban.describe()}")
        ban = self.bans.for_address(ip) if ip else None
        if ban is not None:
            raise AddressBanned(ban.describe())

    def rename(self, member: Member, new: str, settled: Settled) -> None:
        """A member takes another nickname; everyone hears of it. Refusals the room can
        tell at once are raised; settled() as for join()."""
        key = nickname_key(new)
        self._refuse_banned(new)
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
        info = {"addr": member.address, "tls": member.tls, "since": member.connected}
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
            if self._listeners.pop(account.key, None) is not None:
                self._listeners[key] = member
            self.relay.members.pop(key, None)
            self._members[key] = member
            account.key = key
            member.nickname = new
            self.log.event("nick", old=old, new=new)
            self.channel.publish(protocol.nick_frame(old, new))
            self.broker.publish({"kind": "nick", "old": old, "new": new})
        self.channel.notify()
        return None

    def leave(self, member: Member, reason: str, detail: str | None = None,
              keep_receipts: bool = False) -> None:
        """Remove a member (idempotent); settle the receipts that waited on it.

        With keep_receipts (the member half-closed: it still reads), the receipts of
        its own pending messages still go to it; see awaiting_receipts().
        """
        frame = protocol.leave_frame(member.nickname, reason, detail)
        finished = []
        with self.lock:
            account = self._accounts.get(member)
            if account is None or self._members.get(account.key) is not member:
                return
            del self._members[account.key]
            self._listeners.pop(account.key, None)
            del self._accounts[member]
            # logged under the lock, as the join is, so the log keeps the room's order
            self.log.event("leave", nick=member.nickname, reason=reason)
            self.channel.unsubscribe(member)
            self.broker.publish({"kind": "leave", "nick": member.nickname, "reason": reason,
                                 "detail": detail})
            self.broker.release(member.nickname, account.claim)
            owed, emptied = 0 if member.quiet else self._owed(account), []
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
            # At shutdown everyone gets the shutdown notice instead of N leave notices; a
            # poster leaves as it came, unannounced.
            if reason != "shutdown" and not member.quiet and \
                    self.size() < self.config.announce_joins_max:
                self.channel.publish(frame)
        self.channel.notify()
        self.report(finished)

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

    def __len__(self) -> int:
        return len(self._members)

    # --- messages and receipts

    def message(self, sender: Member, frame_uuid: str, text: str, to: str | None = None,
                action: bool = False) -> int:
        """Broadcast a message to everyone but its sender, or send it to `to` alone;
        returns the recipient count."""
        stamp = protocol.now_iso()
        now = time.monotonic()
        finished = []
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
                remote = self.relay.members.get(nickname_key(to)) if target is None else None
                if target is sender:
                    raise ProtocolError(errors.NO_SUCH_NICKNAME, "that is you", frame_uuid)
                found: Member | RemoteMember | None = target or remote
                if found is None:
                    raise ProtocolError(errors.NO_SUCH_NICKNAME, f"no such nickname: {to}",
                                        frame_uuid)
                to = found.nickname
            frame = protocol.chat_frame(frame_uuid, sender.nickname, text, stamp, to, action)
            recipients = 1 if target is not None else 0 if remote is not None \
                else len(self._listeners) - (not sender.quiet)
            # other nodes acknowledge with their recipients; the receipt waits for them
            nodes = {remote.node} if remote is not None else set() if target is not None \
                else set(self.broker.others())
            self.counters.messages += 1
            self.counters.deliveries += recipients
            # recipients: this node's; nodes: the others that will count theirs (the
            # `delivery` line has the whole room's)
            self.log.event("message", nick=sender.nickname, uuid=frame_uuid,
                           recipients=recipients, nodes=len(nodes) or None, to=to,
                           action="yes" if action else None, text=text)
            if to is None:
                self.remember(sender.nickname, stamp, protocol.chat_text(sender.nickname, text))
            if recipients or nodes:
                waiting = {target} if target is not None else set(self._listeners.values()) \
                    if remote is None else set()
                waiting.discard(sender)
                pending = Pending(frame_uuid, sender, waiting, recipients,
                                  now + self.config.confirm_timeout, nodes=nodes)
                self.receipts.add(pending)
                account.sent.add(frame_uuid)
                if target is not None:  # owed by the target alone
                    self._accounts[target].private += 1
                elif remote is None:
                    self._messages_sent += 1
                    account.settled += 1  # nobody owes a receipt for their own message
                    self.channel.publish(frame, sender, chat=True)
                if len(self.receipts) > self.config.pending_confirms:
                    finished = self._expire_oldest_for_laggards()
            else:
                self.counters.undelivered += 1
            # even heard by nobody: it is history for the nodes that start later
            self.broker.publish({"kind": "message", "uuid": frame_uuid,
                                 "nick": sender.nickname, "text": text, "stamp": stamp,
                                 "to": to, "action": action,
                                 "at": remote.node if remote is not None else None})
        self.channel.notify()
        if target is not None:
            target.deliver(frame)
        if not recipients and not nodes:
            sender.deliver(protocol.undelivered_frame(frame_uuid, protocol.NOBODY_HERE))
            self.log.event("undelivered", uuid=frame_uuid, reason="nobody_here")
        self.report(finished)
        return recipients

    def _owed(self, account: Account) -> int:
        """How many pending receipts wait on this member's confirm."""
        return self._messages_sent - account.joined_at - account.settled + account.private

    def _expire_oldest_for_laggards(self) -> list[Pending]:
        """Under the lock, with more receipts pending than one member may owe: the oldest
        expires for every member that owes more than pending_confirms.

        Only a member that owes the oldest receipt can owe that many (it would have to
        confirm the oldest and leave a thousand newer ones unconfirmed otherwise, which
        no reading client does); that keeps this O(those members), not O(room).
        """
        limit = self.config.pending_confirms
        oldest = self.receipts.oldest()
        for member in [m for m in oldest.waiting if self._owed(self._accounts[m]) > limit]:
            oldest.waiting.discard(member)
            self._accounts[member].settled += 1
        return [self.finish(oldest)] if oldest.done() else []

    def confirm(self, member: Member, frame_uuid: str) -> None:
        """A recipient confirms a message; only once, and only if it was sent to it."""
        if self.confirm_many(member, [frame_uuid]):
            raise ProtocolError(errors.UNKNOWN_UUID, f"no pending message {frame_uuid} "
                                "for you to confirm", frame_uuid)

    def confirm_many(self, member: Member, uuids: list[str]) -> list[str]:
        """Confirms that arrived together, under one lock; returns the unknown uuids.

        Under load a loop finds many confirms in one read: taking the room lock once
        for all of them, not once each, keeps the lock short and rarely contended.
        """
        unknown, finished, late = [], [], 0
        relayed: dict[str, dict[str, int]] = {}  # origin node -> uuid -> confirms, for it
        with self.lock:
            account = self._accounts.get(member)
            pending_by_uuid = self.receipts.pending
            for frame_uuid in uuids:
                pending = pending_by_uuid.get(frame_uuid)
                if account is None or pending is None or member not in pending.waiting:
                    if self.receipts.was_settled(frame_uuid):
                        late += 1  # settled without it: correct, nobody left to tell
                    else:
                        unknown.append(frame_uuid)
                    continue
                waiting, origin = pending.waiting, pending.origin
                waiting.discard(member)
                pending.delivered += 1
                if origin is not None:  # its sender is on another node
                    counts = relayed.setdefault(origin, {})
                    counts[frame_uuid] = counts.get(frame_uuid, 0) + 1
                if not waiting and not pending.nodes:  # done(), inline: the hot path
                    finished.append(self.finish(pending))
                elif pending.delivered == 1 and origin is None:
                    # the sender hears at most receipt_wait later
                    self.receipts.wait_for_more(pending,
                                                time.monotonic() + self.config.receipt_wait)
            for origin, counts in relayed.items():  # one event per origin, not per confirm
                self.broker.publish({"kind": "confirms", "to": origin, "counts": counts})
            if account is not None:
                confirmed = len(uuids) - len(unknown) - late
                account.settled += confirmed
                self.counters.confirms += confirmed
            if self.config.log_confirms == "each":
                for frame_uuid in uuids:
                    if frame_uuid not in unknown:
                        self.log.event("confirm", uuid=frame_uuid, nick=member.nickname)
        self.report(finished)
        return unknown

    def expire(self, now: float | None = None) -> None:
        """Send the receipts whose receipt_wait has passed; settle every pending receipt
        whose confirm timeout has passed."""
        now = time.monotonic() if now is None else now
        with self.lock:
            finished = [self.finish(pending) for pending in self.receipts.timed_out(now)]
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
        return pending

    def _forget(self, pending: Pending) -> None:
        self.receipts.drop(pending, SETTLED_MEMORY_FACTOR * self.config.pending_confirms)
        sender = self._accounts.get(pending.sender)
        if sender is None:  # a departed sender is let go in report(), once it has its receipt
            sender = self._departed.get(pending.sender)
            if sender is not None:
                sender.in_flight += 1
                pending.to_departed = True
        if sender is not None:
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
        if not pending.recipients:  # every other node acknowledged nobody
            self.log.event("undelivered", uuid=pending.uuid, reason="nobody_here")
            pending.sender.deliver(protocol.undelivered_frame(pending.uuid,
                                                              protocol.NOBODY_HERE))
            return
        if pending.delivered:
            frame = protocol.receipt_frame(pending.uuid, pending.delivered,
                                           pending.recipients)
            self.log.event("delivery", uuid=pending.uuid, delivered=pending.delivered,
                           recipients=pending.recipients)
            if pending.reported:  # the sender had its receipt at receipt_wait
                return
        else:
            frame = protocol.undelivered_frame(pending.uuid, protocol.NOBODY_CONFIRMED,
                                               pending.recipients)
            self.log.event("undelivered", uuid=pending.uuid, reason="nobody_confirmed")
        pending.sender.deliver(frame)

    # --- for the relay (relay.py): the other nodes' events, under the lock

    def local_member(self, key: str) -> Member | None:
        """Under the lock: this node's member of that nickname key."""
        return self._members.get(key)

    def listeners(self) -> Any:
        """Under the lock: this node's members who hear the room's messages."""
        return self._listeners.values()

    def size(self) -> int:
        """Under the lock: the whole room's members, on every node."""
        return len(self._members) + len(self.relay.members)

    def remember(self, nickname: str, stamp: str, text: str) -> None:
        """Under the lock: a public message for the history of later joiners."""
        self.history.remember((nickname, stamp, text), self.config.history)

    def owe(self, target: Member | None) -> None:
        """Under the lock: another node's message now pending here, owed by `target`
        (a private one) or by every listener."""
        if target is not None:
            self._accounts[target].private += 1
        else:
            self._messages_sent += 1

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

    def seed_history(self, entries: list[tuple[str, str, str]]) -> None:
        """The room's stream's last public messages, for a node that starts empty."""
        with self.lock:
            self.history.seed([(nickname, stamp, protocol.chat_text(nickname, text))
                               for nickname, stamp, text in entries], self.config.history)

    # --- operator actions

    def remote_members(self) -> list[RemoteMember]:
        with self.lock:
            return list(self.relay.members.values())

    def node_of(self, nickname: str) -> str | None:
        """The node of another node's member of that nickname, or None."""
        with self.lock:
            remote = self.relay.members.get(nickname_key(nickname))
        return remote.node if remote is not None else None

    # --- the one way a member is put out (an operator's kick, a ban, a nickname another
    # node took): the member is told why, then its connection closes and it leaves

    def disconnect(self, member: Member, reason: str, notice: bytes,
                   detail: str | None = None) -> None:
        member.close(reason, notice, detail=detail)

    def kick(self, nickname: str, reason: str) -> str:
        """An operator's kick of this node's member of that nickname (NoSuchMember)."""
        member = self.find(nickname)
        self.disconnect(member, "kicked", protocol.kick_frame(reason), reason)
        return member.nickname

    def ban_out(self, banned: Callable[[str, str], bool], reason: str,
                how_long: str) -> list[str]:
        """Every member of this node that banned(nickname, ip) says a ban matches leaves,
        told it is a ban; their nicknames."""
        out = [m for m in self.members() if banned(m.nickname, m.ip)]
        for member in out:
            self.disconnect(member, "banned", protocol.ban_frame(reason, how_long), reason)
        return [member.nickname for member in out]

    def matching(self, predicate: Callable[[str, str], bool]) -> list[str]:
        """The nicknames of the whole room's members (every node's) that
        predicate(nickname, ip) picks."""
        with self.lock:
            everyone: list[Member | RemoteMember] = [*self._members.values(),
                                                     *self.relay.members.values()]
        return [m.nickname for m in everyone if predicate(m.nickname, m.ip)]

    def announce(self, text: str) -> int:
        frame = protocol.announce_frame(text)
        with self.lock:
            self.channel.publish(frame)
            self.broker.publish({"kind": "announce", "text": text})
            reached = self.size()
        self.channel.notify()
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

    # --- hitless upgrade: the room as a plain record, and back

    def export_state(self, ident: Any) -> dict:
        """Members, receipts, history and counters, members named by ident(member);
        times as what is left of them."""
        now = time.monotonic()

        def account(member: Member, a: Account) -> list:
            return [ident(member), a.joined_at, a.settled, sorted(a.sent), a.private,
                    a.in_flight, a.claim, a.key]
        with self.lock:
            return {
                "members": [ident(m) for m in self._members.values()],
                "accounts": [account(m, a) for m, a in self._accounts.items()],
                "departed": [account(m, a) for m, a in self._departed.items()],
                **self.receipts.export(now, ident),
                "remote": self.relay.export(),
                "messages_sent": self._messages_sent,
                "history": self.history.export(),
                "counters": dataclasses.asdict(self.counters),
            }

    def import_state(self, state: dict, member_of: Any) -> None:
        """The room as export_state left it; member_of(ident) is the member (or None if
        it is gone). Members are subscribed to the channel again."""
        now = time.monotonic()
        with self.lock:
            for table, rows in ((self._accounts, state["accounts"]),
                                (self._departed, state["departed"])):
                # images before the cluster wrote no claim, before the keys none: rows of
                # six or seven
                for ident, joined_at, settled, sent, private, in_flight, *claim in rows:
                    member = member_of(ident)
                    if member is not None:
                        table[member] = Account(joined_at, settled, set(sent), private,
                                                in_flight, *claim)
            for ident in state["members"]:
                member = member_of(ident)
                if member is not None:
                    account = self._accounts[member]
                    account.key = account.key or nickname_key(member.nickname)
                    self._members[account.key] = member
                    if not member.quiet:
                        self._listeners[account.key] = member
                        self.channel.subscribe(member)
            self.receipts.restore(state, now, member_of)
            self.relay.restore(state.get("remote", []))
            self._messages_sent = state["messages_sent"]
            self.history.restore(state["history"])
            self.counters = Counters(**state["counters"])
