"""The chat protocol on an in-memory transport: no socket, no loop thread. The session
is driven as its loop drives it (readable, flush, timer); what it sends is the bytes its
transport took (issue 24: the protocol apart from the transport)."""

import json
import uuid

from tcpchatd.chat.hall import Hall
from tcpchatd.cluster.local import LocalBroker
from tcpchatd.net.engine import Engine, Timer
from tcpchatd.net.session import CHAT, Session
from tcpchatd.net.transport import MemoryTransport
from tcpchatd.service.config import Config

from conftest import RecordingLog
from rawclient import frame


class Loop:
    """What a session asks of its loop, run at once on the test's thread."""

    def __init__(self, engine):
        self.engine = engine
        self.timers = []

    def schedule(self, conn):
        pass  # the test flushes

    def call_at(self, deadline, conn):
        timer = Timer(conn, deadline)
        self.timers.append(timer)
        return timer

    def call_soon(self, conn, call):
        call()

    def serve_later(self, conn, serve):
        serve([conn], lambda c, method, *args: method(*args))  # no rounds here: at once

    def in_thread(self):
        return True

    def watch(self, conn):
        pass

    def forget(self, conn):
        pass

    def add_subscriber(self, channel, conn):
        pass

    def remove_subscriber(self, channel, conn):
        pass


class Server:
    def __init__(self, **settings):
        self.config = Config(**settings)
        self.log = RecordingLog()
        self.engine = Engine(1)  # its broadcast log and channel; no thread is started
        self.hall = Hall(self.config, self.log, self.engine.channel, broker=LocalBroker())
        self.loop = Loop(self.engine)
        self.ended = []
        self.errors = {}  # protocol errors by code (SessionServer)
        self.flood_drops = self.flood_disconnects = 0
        self.http_answers = {}

    def connection_ended(self, conn):
        self.ended.append(conn)

    def session(self, room=1 << 20):
        transport = MemoryTransport(room)
        conn = Session(transport, ("192.0.2.9", 4242), self)
        conn.loop = self.loop
        conn.adopted(self.loop)
        conn.flush()
        return conn, transport


def frames(transport):
    """Every whole frame the session sent (and the prompt), taken out of the buffer."""
    data, out = bytes(transport.taken), []
    while data:
        if data.startswith(b"_nickname_"):
            out.append("_nickname_")
            data = data[10:]
            continue
        length = int(data[:10])
        assert len(data) >= 10 + length, "a frame cut short"
        out.append(json.loads(data[10:10 + length]))
        data = data[10 + length:]
    transport.taken.clear()
    return out


def joined(server, nickname):
    conn, transport = server.session()
    assert frames(transport) == ["_nickname_"]
    transport.feed(nickname.encode())
    conn.readable()
    conn.flush()
    assert conn.state == CHAT
    return conn, transport


def entered(conn, room):
    """The member joins a room too; what it was sent so far taken out."""
    conn.transport.feed(frame({"type": "request", "id": "j", "cmd": "join", "room": room}))
    conn.readable()
    conn.flush()
    frames(conn.transport)
    return conn


def test_the_handshake_and_a_message_split_across_reads():
    server = Server()
    ann, ann_out = joined(server, "ann")
    assert [f["event"] for f in frames(ann_out)] == ["join", "names"]
    ben, ben_out = joined(server, "ben")
    frames(ben_out)
    message = frame({"type": "message", "uuid": "11111111-1111-4111-8111-111111111111",
                     "message": "ann: in three pieces"})
    for piece in (message[:4], message[4:17], message[17:]):  # header and body split
        ann.transport.feed(piece)
        ann.readable()
    ben.flush()
    got = [f for f in frames(ben_out) if f["type"] == "message"]
    assert [f["message"] for f in got] == ["ann: in three pieces"]


def test_partial_writes_keep_every_frame_whole():
    """A transport that takes a few bytes at a time (a full kernel buffer): what is left
    goes out later, in order, frames never cut for good."""
    server = Server(flood_rate=0)
    ann, ann_out = joined(server, "ann")
    ben, ben_out = server.session(room=1 << 20)
    ben_out.feed(b"ben")
    ben.readable()
    for i in range(20):
        ann.transport.feed(frame({"type": "message", "uuid": f"{i:08d}-0000-4000-8000-"
                                  "000000000000", "message": f"ann: number {i}"}))
    ann.readable()
    ben_out.room = len(ben_out.taken) + 7  # the kernel takes 7 bytes, then nothing
    ben.flush()
    assert ben.want_write
    ben_out.room = 1 << 20  # room again: the loop finds it writable
    ben.writable()
    got = [f["message"] for f in frames(ben_out)
           if isinstance(f, dict) and f.get("type") == "message"]
    assert got == [f"ann: number {i}" for i in range(20)]


def test_a_bad_header_is_answered_and_closes():
    server = Server()
    ann, out = joined(server, "ann")
    frames(out)
    ann.transport.feed(b"12x4567890{}")
    ann.readable()
    ann.flush()
    assert frames(out)[-1]["code"] == "bad_header"
    assert ann.closing


def test_members_of_two_rooms_sent_at_different_times_each_get_what_they_are_due():
    """A round's readers take a room's last joined range without a call (the broadcast
    log's `latest`): a reader whose range starts or stops elsewhere, or who sent a frame
    of it, gets its own range instead. Four members of general and dev, flushed at
    different times between messages in both rooms: each gets every message once, in
    its room's order, never its own."""
    server = Server(flood_rate=0)
    # all four in both rooms before any is flushed: their cursors are alike, so that a
    # round's readers can take one another's range
    members = [joined(server, nick)[0] for nick in ("ann", "ben", "cy", "dee")]
    for conn in members:
        conn.transport.feed(frame({"type": "request", "id": "j", "cmd": "join",
                                   "room": "dev"}))
        conn.readable()
    for conn in members:
        conn.flush()
        frames(conn.transport)
    ann, ben, cy, dee = members

    def say(conn, text, room):
        conn.transport.feed(frame({"type": "message", "uuid": str(uuid.uuid4()),
                                   "message": f"{conn.nickname}: {text}", "room": room}))
        conn.readable()

    def messages(conn):
        conn.flush()
        return [(f["room"], f["message"]) for f in frames(conn.transport)
                if isinstance(f, dict) and f.get("type") == "message"]

    say(ann, "one", "dev")
    say(ann, "x", "general")
    assert messages(ben) == [("general", "ann: x"), ("dev", "ann: one")]
    assert messages(dee) == [("general", "ann: x"), ("dev", "ann: one")]
    say(ben, "two", "dev")
    # dev's range now stops one further than the one joined for ben and dee
    assert messages(cy) == [("general", "ann: x"), ("dev", "ann: one"), ("dev", "ben: two")]
    # dee's range stops where cy's did but starts after "one"
    assert messages(dee) == [("dev", "ben: two")]
    # ann's range is cy's, but ann sent one of its frames
    assert messages(ann) == [("dev", "ben: two")]
    assert messages(ben) == []


def test_a_round_sends_its_rooms_news_and_private_frames_and_leaves_the_others_rooms():
    """A broadcast round flushes its subscribers with its channels (flush(news)): a
    member's other rooms are not looked at, their news waits for their own round; a
    private frame goes out with any round, after what every room published before it; a
    flush of every room (news None) sends all."""
    server = Server(flood_rate=0)
    ann, ann_out = joined(server, "ann")
    ben, ben_out = joined(server, "ben")
    entered(ann, "dev")
    entered(ben, "dev")
    frames(ann_out)  # (ben's join into dev)
    general, dev = list(ben.subscriptions)

    def say(text, room, to=None):
        ann_out.feed(frame({"type": "message", "uuid": str(uuid.uuid4()),
                            "message": f"ann: {text}", "room": room,
                            **({"to": to} if to else {})}))
        ann.readable()

    def messages():
        return [(f.get("room"), f["message"]) for f in frames(ben_out)
                if isinstance(f, dict) and f.get("type") == "message"]

    say("in general", "general")
    say("in dev", "dev")
    ben.flush([dev])
    assert messages() == [("dev", "ann: in dev")]
    say("later in general", "general")
    ben.flush([dev])
    assert messages() == []
    say("psst", None, to="ben")
    say("more dev", "dev")
    # the private frame goes out with any round, after what every room published before
    # it (the order ann sent them in); news after it waits for its own room's round
    say("after psst in general", "general")
    ben.flush([dev])
    assert messages() == [("general", "ann: in general"), ("general", "ann: later in general"),
                          (None, "ann (private): psst"), ("dev", "ann: more dev")]
    ben.flush([general])
    assert messages() == [("general", "ann: after psst in general")]
    say("last in general", "general")
    say("last in dev", "dev")
    ben.flush()
    assert messages() == [("general", "ann: last in general"), ("dev", "ann: last in dev")]
