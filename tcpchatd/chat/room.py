"""One room: its members (this node's and the other nodes'), its channel, its topic, its
history and its counters.

A room has no lock of its own and no behaviour that crosses rooms: the hall (hall.py)
holds every room under one lock, decides who joins and parts, and settles receipts. A
member is in the hall once, under its nickname, and in one or more rooms.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..wire import protocol
from .history import History


class Member(Protocol):
    """What the hall and the admin commands know of a client."""

    nickname: str     # "" until it is in the hall
    address: str      # `ip:port` or `[v6]:port`, for `who` and the log
    ip: str           # the peer's address, for bans
    tls: bool         # it came in on a TLS port
    via: str          # tcp, tls, web (a browser's WebSocket) or wss (one inside TLS)
    quiet: bool       # a poster (hello mode post): no join or leave notices, not in names
    connected: float  # time.time() when it connected
    last_active: float  # time.monotonic() of its last frame
    sent: int         # messages it sent
    account: str | None  # the account it logged in to (None: a guest)
    role: str         # its account's role (user, moderator, bot), or guest

    @property
    def received(self) -> int:
        """Chat messages queued for it."""

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for this member alone; never blocks (it may close the member)."""

    def close(self, reason: str, final_frame: bytes | None = None,
              detail: str | None = None) -> object:
        """Leave the hall and disconnect, after sending final_frame if given."""

    def receipts_done(self) -> None:
        """A member that left half-closed has every receipt it was owed (see Hall.leave)."""


class Channel(Protocol):
    """Where a room's broadcasts go (its channel in the engine); called under the hall's
    lock. (Its members are the room's; the engine knows them as its loops' clients.)"""

    def subscribe(self, member: Any) -> None: ...

    def unsubscribe(self, member: Any) -> None: ...

    def publish(self, frame: bytes, sender: Any = None, chat: bool = False) -> None:
        """Queue a frame for every subscriber but the sender; O(1), no system call."""

    def notify(self) -> None:
        """After the lock is released: start sending what was published."""

    def close(self) -> None:
        """The room is gone."""


def member_info(member: Member) -> dict[str, Any]:
    """What the other nodes are told of a member that claims a nickname or joins a room."""
    info: dict[str, Any] = {"addr": member.address, "tls": member.tls,
                            "since": member.connected}
    if member.via not in ("tcp", "tls"):  # tcp and tls say themselves (`tls`)
        info["via"] = member.via
    if member.quiet:
        info["quiet"] = True
    return info


@dataclass
class RemoteMember:
    """A member of another node, as its join events described it."""

    nickname: str
    node: str
    address: str = ""       # as that node shows it: `ip:port` or `[v6]:port`
    tls: bool = False
    connected: float = 0.0  # time.time() when it connected
    quiet: bool = False     # a poster: no notices, not in names
    rooms: list[str] = field(default_factory=list)  # the keys of the rooms it is in
    account: str | None = None  # the account it logged in to
    role: str = "guest"         # ... its role (a bot comes and goes without notices)
    via: str = "tcp"            # how it came in: tcp, tls, web, wss

    @property
    def silent(self) -> bool:
        return self.quiet or self.role == "bot"

    @property
    def ip(self) -> str:
        """The peer's address, for bans ("" when its node did not say)."""
        host = self.address.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host


@dataclass
class Counters:
    """A room's (confirms are the daemon's alone: a confirm names no room, and counting
    them per room would cost every delivery)."""

    messages: int = 0
    deliveries: int = 0
    undelivered: int = 0


@dataclass
class Topic:
    text: str = ""
    by: str = ""    # who set it: a nickname, or `operator`
    at: str = ""    # when (ISO 8601 UTC)


class Room:
    """A room's state; read and written under the hall's lock."""

    def __init__(self, name: str, key: str, channel: Channel, declared: bool = False) -> None:
        self.name = name           # as its first member (or the config) spelled it
        self.key = key             # nicknames.room_key(name)
        self.channel = channel
        self.declared = declared   # in the config: it exists even when empty
        self.topic = Topic()
        self.members: dict[str, Member] = {}          # nickname_key -> this node's member
        self.listeners: dict[str, Member] = {}        # ... of them, all but the posters
        self.remote: dict[str, RemoteMember] = {}     # nickname_key -> another node's
        self.remote_posters = 0    # ... of them, the posters (add_remote, pop_remote)
        self.history = History()
        self.messages_sent = 0     # public messages that had recipients (see hall.Standing)
        self.counters = Counters()

    def __repr__(self) -> str:
        return f"Room({self.name!r})"

    def size(self) -> int:
        """Its members on every node."""
        return len(self.members) + len(self.remote)

    def empty(self) -> bool:
        return not self.members and not self.remote

    def add_remote(self, key: str, member: RemoteMember) -> None:
        self.pop_remote(key)
        self.remote[key] = member
        self.remote_posters += member.quiet

    def pop_remote(self, key: str) -> RemoteMember | None:
        member = self.remote.pop(key, None)
        if member is not None:
            self.remote_posters -= member.quiet
        return member

    def heard(self) -> int:
        """Its members on every node but the posters, counted without a scan: every join
        tells it (names_frame), and a scan of 100,000 members each made joining them all
        quadratic."""
        return len(self.listeners) + len(self.remote) - self.remote_posters

    def names_frame(self, limit: int, request_id: int | str | None = None,
                    history: int | None = None) -> bytes:
        """Who is here (on every node), sorted; the list complete up to `limit`, else
        its first `limit` names as they come."""
        count = self.heard()
        everyone: Iterator[Any] = itertools.chain(self.listeners.values(),
                                                  self.remote.values())
        others = (m for m in everyone if not m.quiet)
        names = sorted((m.nickname for m in others), key=str.casefold) if count <= limit \
            else [m.nickname for m in itertools.islice(others, limit)]
        return protocol.names_frame(names, count, request_id, history, self.name,
                                    self.topic.text)

    def summary(self) -> dict[str, Any]:
        """For the rooms list (clients and `tcpchatctl rooms`)."""
        return {"room": self.name, "members": self.heard(), "topic": self.topic.text}

    # --- a hitless upgrade: what is the room's own (its members are the hall's)

    def export(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "declared": self.declared,
                "topic": dataclasses.astuple(self.topic), "history": self.history.export(),
                "messages_sent": self.messages_sent,
                "counters": dataclasses.asdict(self.counters)}

    def restore(self, state: dict[str, Any]) -> None:
        self.topic = Topic(*state["topic"])
        self.history.restore(state["history"])
        self.messages_sent = state["messages_sent"]
        self.counters = Counters(**{k: v for k, v in state["counters"].items()
                                    if k in Counters.__dataclass_fields__})
