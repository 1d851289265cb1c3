"""room.py without sockets: membership, receipts, bounds, announcements."""

import json
import time

import pytest

from tcpchatd.service.config import Config
from tcpchatd.wire.errors import ProtocolError
from tcpchatd.chat.room import NoSuchMember, Room
from tcpchatd.cluster.local import LocalBroker

from conftest import RecordingLog, lock_held_by_another_thread
from rawclient import untimed

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


class ListChannel:
    """A stand-in for the engine: a broadcast is delivered at once. (Leaving out the
    sender is the broadcast log's job in the product: tests/test_broadcastlog.py, and
    the wire tests against a real server.)"""

    def __init__(self):
        self.subscribers = []

    def subscribe(self, member):
        self.subscribers.append(member)

    def unsubscribe(self, member):
        self.subscribers.remove(member)

    def publish(self, frame, sender=None, chat=False):
        for member in self.subscribers:
            if member is not sender:
                member.deliver(frame)

    def notify(self):
        pass


class FakeMember:
    """A member that records the frames it is given (the room's only view of a client)."""

    def __init__(self, room):
        self.room = room
        self.nickname = None
        self.address = "127.0.0.1:1"
        self.ip = "127.0.0.1"
        self.tls = False
        self.quiet = False
        self.connected = 0.0
        self.frames = []
        self.closed = None

    def deliver(self, frame):
        body = json.loads(frame[10:])
        if body.get("type") == "system" and "time" in body:
            body = untimed(body)  # checked to be a stamp, then compared without it
        self.frames.append(body)

    def receipts_done(self):
        self.departed = True

    def close(self, reason, final_frame=None, detail=None):
        self.closed = reason
        if final_frame:
            self.deliver(final_frame)
        self.room.leave(self, reason, detail)


def make_room(**settings):
    log = RecordingLog()
    return Room(Config(**settings), log, ListChannel(), broker=LocalBroker()), log


def join(room, member, name):
    """room.join with the embedded broker, which answers at once; a refusal raised."""
    outcome = []
    room.join(member, name, outcome.append)
    assert outcome, "the embedded room settles a join at once"
    if outcome[0] is not None:
        raise outcome[0]


def joined(room, *names):
    members = []
    for name in names:
        member = FakeMember(room)
        join(room, member, name)
        members.append(member)
    return members


def test_join_is_announced_to_everyone_including_newcomer():
    room, _ = make_room()
    a, b = joined(room, "a", "b")
    join_b = {"type": "system", "event": "join", "nickname": "b", "message": "b joined!"}
    assert a.frames[-1] == join_b
    assert b.frames == [join_b, {  # then who is here, with no history to follow
        "type": "system", "event": "names", "nicknames": ["a", "b"], "history": 0,
        "features": ["request", "private", "history", "nick", "action"],
        "message": "In the room: a, b (2)"}]


def test_nickname_taken_in_another_case():
    room, _ = make_room()
    joined(room, "Alice")
    with pytest.raises(ProtocolError) as info:
        join(room, FakeMember(room), "aLICE")
    assert info.value.code == "nickname_taken"


def test_one_receipt_after_every_recipient_confirms():
    room, log = make_room()
    a, b, c = joined(room, "a", "b", "c")
    room.message(a, U1, "hello")
    assert b.frames[-1]["message"] == "a: hello" and c.frames[-1]["uuid"] == U1
    room.confirm(b, U1)
    assert a.frames[-1]["type"] == "system"  # no receipt yet
    room.confirm(c, U1)
    assert a.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 2, "recipients": 2}
    assert log.named("delivery") == [{"uuid": U1, "delivered": 2, "recipients": 2}]
    assert room.pending_count() == 0


def test_confirm_twice_or_by_non_recipient_is_unknown_uuid():
    room, _ = make_room()
    a, b, c = joined(room, "a", "b", "c")
    room.message(a, U1, "x")
    room.confirm(b, U1)
    for member in (b, a):  # b already confirmed; a sent it
        with pytest.raises(ProtocolError) as info:
            room.confirm(member, U1)
        assert info.value.code == "unknown_uuid"


def test_a_broadcast_is_encoded_once_for_every_recipient():
    room, _ = make_room()
    members = joined(room, "a", "b", "c", "d")
    raw = []
    for m in members[1:]:
        m.deliver = lambda frame, chat=False, raw=raw: raw.append(frame)
    room.message(members[0], U1, "once")
    assert len(raw) == 3 and raw[0] is raw[1] is raw[2]  # the same bytes object


def test_alone_is_undelivered_nobody_else_is_here():
    room, _ = make_room()
    (a,) = joined(room, "a")
    room.message(a, U1, "anyone?")
    assert a.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                            "recipients": 0,
                            "message": "Message not delivered: nobody else is here"}


def test_leaving_recipient_settles_the_receipt():
    room, _ = make_room()
    a, b, c = joined(room, "a", "b", "c")
    room.message(a, U1, "x")
    room.confirm(b, U1)
    room.leave(c, "quit")
    assert a.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 1, "recipients": 2}


def test_every_recipient_leaving_unconfirmed_is_nobody_confirmed():
    room, _ = make_room()
    a, b = joined(room, "a", "b")
    room.message(a, U1, "x")
    room.leave(b, "quit")
    assert a.frames[-1]["event"] == "undelivered"
    assert a.frames[-1]["message"] == "Message not delivered: nobody confirmed it"


def test_timeout_with_some_confirms_and_with_none():
    room, _ = make_room(confirm_timeout=5)
    a, b, c = joined(room, "a", "b", "c")
    room.message(a, U1, "x")
    room.message(a, U2, "y")
    room.confirm(b, U1)
    room.expire(now=10**9)
    receipts = [f for f in a.frames if f.get("uuid") in (U1, U2)]
    assert {"type": "confirm", "uuid": U1, "delivered": 1, "recipients": 2} in receipts
    assert [f["message"] for f in receipts if f["uuid"] == U2] == [
        "Message not delivered: nobody confirmed it"]
    assert room.pending_count() == 0
    frames = len(a.frames)
    room.confirm(c, U1)  # after the timeout: taken silently (a laptop that woke up)
    room.confirm(c, U2)
    assert len(a.frames) == frames and room.counters.confirms == 1
    with pytest.raises(ProtocolError):  # never sent at all: still unknown
        room.confirm(c, U3)


def test_sender_leaving_drops_its_pending_receipts():
    room, _ = make_room()
    a, b = joined(room, "a", "b")
    room.message(a, U1, "x")
    room.leave(a, "quit")
    assert room.pending_count() == 0
    room.confirm(b, U1)  # a correct confirm with nobody left to tell: silence


def test_pending_receipts_per_recipient_are_bounded_oldest_first():
    room, _ = make_room(pending_confirms=2)
    a, b = joined(room, "a", "b")
    for u in (U1, U2, U3):
        room.message(a, u, "x")
    # U1 expired for b (its only recipient): the sender hears at once
    assert a.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                            "recipients": 1,
                            "message": "Message not delivered: nobody confirmed it"}
    room.confirm(b, U1)  # late, but settled recently: silent
    room.confirm(b, U3)
    assert room.pending_count() == 1


def test_reused_pending_uuid_is_bad_uuid():
    room, _ = make_room()
    a, b = joined(room, "a", "b")
    room.message(a, U1, "x")
    with pytest.raises(ProtocolError) as info:
        room.message(b, U1, "y")
    assert info.value.code == "bad_uuid"


def test_joins_not_broadcast_above_announce_joins_max():
    room, log = make_room(announce_joins_max=2)
    a, b, c = joined(room, "a", "b", "c")
    assert [(f["event"], f.get("nickname")) for f in a.frames] == [
        ("join", "a"), ("names", None), ("join", "b")]
    assert c.frames[0] == {"type": "system", "event": "join", "nickname": "c",
                           "message": "c joined!"}
    assert c.frames[1]["message"] == "In the room: a, b and 1 more (3)"  # the list holds 2
    room.leave(c, "quit")  # 3 -> 2 members: still a large room's leave, not broadcast
    assert [f["event"] for f in a.frames] == ["join", "names", "join"]
    room.leave(b, "quit")
    assert a.frames[-1]["event"] == "leave"


def test_kick_tells_the_member_and_the_others():
    room, _ = make_room()
    a, b = joined(room, "a", "b")
    assert room.kick("A", "spam") == "a"
    assert a.frames[-1] == {"type": "system", "event": "kick", "reason": "spam",
                            "message": "You were kicked: spam"}
    assert b.frames[-1] == {"type": "system", "event": "leave", "nickname": "a",
                            "reason": "kicked", "message": "a was kicked (spam)"}
    with pytest.raises(NoSuchMember) as info:
        room.kick("nobody", "x")
    assert info.value.nickname == "nobody"


def test_probe_fails_while_the_lock_is_held():
    room, _ = make_room()
    assert room.probe(0.1)
    with lock_held_by_another_thread(room.lock):
        assert not room.probe(0.1)
    assert room.probe(0.1)


# --- the room in a cluster: what it asks of its broker, and what other nodes' events do


class RecordingBroker(LocalBroker):
    """Node `a` of a cluster whose other nodes are `others`; keeps what the room sends."""

    node = "a"

    def __init__(self, *others):
        self.sent = []
        self._others = frozenset(others)

    def publish(self, event):
        self.sent.append(event)

    def others(self):
        return self._others


def cluster_room(*others, **settings):
    log = RecordingLog()
    broker = RecordingBroker(*others)
    return Room(Config(**settings), log, ListChannel(), broker=broker), broker, log


def test_the_receipt_sums_every_node_and_waits_for_each_tally():
    room, broker, log = cluster_room("b", "c")
    (ann,) = joined(room, "ann")
    room.message(ann, U1, "ann: hi")
    assert broker.sent[-1]["kind"] == "message" and broker.sent[-1]["uuid"] == U1
    assert ann.frames[-1]["event"] != "undelivered"  # others will answer: no nobody_here
    room.relay.remote_ack("b", U1, 2)
    room.relay.remote_ack("c", U1, 0)  # nobody on c: c is done with it
    room.relay.remote_ack("x", U1, 5)  # a node the message did not wait on: ignored
    room.relay.remote_confirms("b", {U1: 1})
    room.relay.remote_confirms("b", {U1: 1})
    assert ann.frames[-1].get("type") != "confirm"  # b's tally is still due
    room.relay.remote_tally("b", U1)
    assert ann.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 2, "recipients": 2}


def test_a_lost_node_is_waited_for_no_more():
    room, broker, log = cluster_room("b")
    (ann,) = joined(room, "ann")
    room.relay.remote_join("b", "bob")
    room.message(ann, U1, "ann: hi")
    room.relay.remote_ack("b", U1, 1)
    assert room.relay.nodes_lost({"b"}) == 1
    assert ann.frames[-2]["event"] == "leave" and ann.frames[-2]["reason"] == "node_lost"
    assert ann.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                              "recipients": 1, "message": "Message not delivered: "
                              "nobody confirmed it"}


def test_another_node_s_message_is_acknowledged_confirmed_and_tallied():
    room, broker, log = cluster_room("b")
    ann, ben = joined(room, "ann", "ben")
    room.relay.remote_message("b", U1, "bob", "bob: hi", "2026-12-02T20:00:00Z")
    assert ann.frames[-1]["uuid"] == U1 and ben.frames[-1]["uuid"] == U1
    assert broker.sent[-1] == {"kind": "ack", "to": "b", "uuid": U1, "recipients": 2}
    room.confirm(ann, U1)
    room.confirm(ben, U1)
    assert broker.sent[-3:] == [
        {"kind": "confirms", "to": "b", "counts": {U1: 1}},
        {"kind": "confirms", "to": "b", "counts": {U1: 1}},
        {"kind": "tally", "to": "b", "uuid": U1, "delivered": 2, "recipients": 2}]
    assert not [e for e in log.events if e[0] in ("message", "delivery")]  # b logs them


def test_a_private_message_for_a_member_gone_is_acknowledged_by_its_node_alone():
    room, broker, log = cluster_room("b", "c")
    joined(room, "ann")
    room.relay.remote_message("b", U1, "bob", "psst", "2026-12-02T20:00:00Z", to="cy", at="c")
    assert not broker.sent[1:]  # cy lives on c: only c answers
    room.relay.remote_message("b", U2, "bob", "psst", "2026-12-02T20:00:00Z", to="al", at="a")
    assert broker.sent[-1] == {"kind": "ack", "to": "b", "uuid": U2, "recipients": 0}


def test_nicknames_of_other_nodes_are_taken_and_listed():
    room, broker, log = cluster_room("b")
    room.relay.remote_join("b", "Bob")
    member = FakeMember(room)
    with pytest.raises(ProtocolError) as taken:
        join(room, member, "bob")
    assert taken.value.code == "nickname_taken"
    (ann,) = joined(room, "ann")
    assert ann.frames[1]["nicknames"] == ["ann", "Bob"]


def test_a_look_alike_of_a_member_is_taken_and_a_rename_to_one_too():
    room, _ = make_room()
    pope, other = joined(room, "pope", "ann")
    with pytest.raises(ProtocolError) as info:
        join(room, FakeMember(room), "\u0440\u043e\u0440\u0435")  # all Cyrillic
    assert info.value.code == "nickname_taken"
    with pytest.raises(ProtocolError) as info:
        room.rename(other, "\u0440\u043e\u0440\u0435", lambda error: None)
    assert info.value.code == "nickname_taken"


def test_a_shorter_confirm_timeout_after_a_reload_is_not_held_behind_older_deadlines():
    room, log = make_room(confirm_timeout=30)
    a, b = joined(room, "a", "b")
    room.message(a, U1, "before the reload")
    room.config = Config(confirm_timeout=0.5)
    room.message(a, U2, "after it")
    room.expire(now=time.monotonic() + 1)
    receipts = [f for f in a.frames if f.get("uuid") in (U1, U2)]
    assert receipts == [{"type": "system", "event": "undelivered", "uuid": U2,
                         "message": "Message not delivered: nobody confirmed it",
                         "recipients": 1}]
