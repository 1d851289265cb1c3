"""hall.py without sockets: membership, receipts, bounds, announcements (the default
hall; tests/test_rooms.py has the many rooms)."""

import json
import time

import pytest

from tcpchatd.service.config import Config
from tcpchatd.wire.errors import ProtocolError
from tcpchatd.chat.hall import Hall, NoSuchMember
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

    def close(self):
        pass


class FakeMember:
    """A member that records the frames it is given (the hall's only view of a client)."""

    def __init__(self, hall):
        self.hall = hall
        self.nickname = None
        self.address = "127.0.0.1:1"
        self.ip = "127.0.0.1"
        self.tls = False
        self.via = "tcp"
        self.quiet = False
        self.account = None  # a guest
        self.role = "guest"
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
        self.hall.leave(self, reason, detail)


def make_hall(**settings):
    log = RecordingLog()
    return Hall(Config(**settings), log, ListChannel, broker=LocalBroker()), log


def join(hall, member, name):
    """hall.join with the embedded broker, which answers at once; a refusal raised."""
    outcome = []
    hall.join(member, name, outcome.append)
    assert outcome, "the embedded hall settles a join at once"
    if outcome[0] is not None:
        raise outcome[0]


def joined(hall, *names):
    members = []
    for name in names:
        member = FakeMember(hall)
        join(hall, member, name)
        members.append(member)
    return members


def test_join_is_announced_to_everyone_including_newcomer():
    hall, _ = make_hall()
    a, b = joined(hall, "a", "b")
    join_b = {"type": "system", "event": "join", "nickname": "b", "message": "b joined!",
              "room": "general"}
    assert a.frames[-1] == join_b
    assert b.frames == [join_b, {  # then who is in the room, with no history to follow
        "type": "system", "event": "names", "nicknames": ["a", "b"], "history": 0,
        "features": ["request", "private", "history", "nick", "action", "rooms", "accounts",
                     "scrollback", "confirms"],
        "message": "In the room: a, b (2)", "room": "general", "topic": ""}]


def test_another_node_s_join_never_comes_between_a_newcomer_s_join_and_names():
    # CI once saw it: bob joined on node b, and alice's join, relayed from node a at that
    # moment, reached bob between its join and its names
    import threading
    hall, _ = make_hall()
    relayed = []

    class Newcomer(FakeMember):
        def deliver(self, frame):
            if not relayed:  # the relay's thread comes in while bob is being seated
                thread = threading.Thread(
                    target=hall.relay.remote_join, args=("a", "alice", "general"))
                relayed.append(thread)
                thread.start()
                thread.join(0.3)  # (it waits for the hall's lock, or is done)
            super().deliver(frame)

    bob = Newcomer(hall)
    join(hall, bob, "bob")
    relayed[0].join(5)
    assert [(f["event"], f.get("nickname")) for f in bob.frames] == [
        ("join", "bob"), ("names", None), ("join", "alice")]
    assert bob.frames[1]["nicknames"] == ["bob"]


def test_nickname_taken_in_another_case():
    hall, _ = make_hall()
    joined(hall, "Alice")
    with pytest.raises(ProtocolError) as info:
        join(hall, FakeMember(hall), "aLICE")
    assert info.value.code == "nickname_taken"


def test_one_receipt_after_every_recipient_confirms():
    hall, log = make_hall()
    a, b, c = joined(hall, "a", "b", "c")
    hall.message(a, U1, "hello")
    assert b.frames[-1]["message"] == "a: hello" and c.frames[-1]["uuid"] == U1
    hall.confirm(b, U1)
    assert a.frames[-1]["type"] == "system"  # no receipt yet
    hall.confirm(c, U1)
    assert a.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 2, "recipients": 2}
    assert log.named("delivery") == [{"uuid": U1, "room": "general", "delivered": 2,
                                      "recipients": 2}]
    assert hall.pending_count() == 0


def test_confirm_twice_or_by_non_recipient_is_unknown_uuid():
    hall, _ = make_hall()
    a, b, c = joined(hall, "a", "b", "c")
    hall.message(a, U1, "x")
    hall.confirm(b, U1)
    for member in (b, a):  # b already confirmed; a sent it
        with pytest.raises(ProtocolError) as info:
            hall.confirm(member, U1)
        assert info.value.code == "unknown_uuid"


def test_confirms_of_several_members_settled_together_each_have_their_own_unknowns():
    """A loop's turn of deferred reads: every member's confirms in one call; a uuid
    unknown to one member is its error alone, and the receipts count the others."""
    hall, log = make_hall()
    a, b, c, d = joined(hall, "a", "b", "c", "d")
    hall.message(a, U1, "one")
    hall.message(a, U2, "two")
    unknowns = hall.confirm_batch([(b, [U1, U2]), (c, [U1, U3]), (a, [U2]), (d, [U1])])
    assert unknowns == [[], [U3], [U2], []]  # a sent U2: not its to confirm
    assert [f for f in a.frames if f["type"] == "confirm"] == [
        {"type": "confirm", "uuid": U1, "delivered": 3, "recipients": 3}]
    assert log.named("delivery") == [{"uuid": U1, "room": "general", "delivered": 3,
                                      "recipients": 3}]
    assert hall.confirm_batch([(c, [U2]), (d, [U2])]) == [[], []]
    assert a.frames[-1] == {"type": "confirm", "uuid": U2, "delivered": 3, "recipients": 3}
    assert hall.pending_count() == 0


def test_a_broadcast_is_encoded_once_for_every_recipient():
    hall, _ = make_hall()
    members = joined(hall, "a", "b", "c", "d")
    raw = []
    for m in members[1:]:
        m.deliver = lambda frame, chat=False, raw=raw: raw.append(frame)
    hall.message(members[0], U1, "once")
    assert len(raw) == 3 and raw[0] is raw[1] is raw[2]  # the same bytes object


def test_alone_is_undelivered_nobody_else_is_here():
    hall, _ = make_hall()
    (a,) = joined(hall, "a")
    hall.message(a, U1, "anyone?")
    assert a.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                            "recipients": 0,
                            "message": "Message not delivered: nobody else is here"}


def test_leaving_recipient_settles_the_receipt():
    hall, _ = make_hall()
    a, b, c = joined(hall, "a", "b", "c")
    hall.message(a, U1, "x")
    hall.confirm(b, U1)
    hall.leave(c, "quit")
    assert a.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 1, "recipients": 2}


def test_every_recipient_leaving_unconfirmed_is_nobody_confirmed():
    hall, _ = make_hall()
    a, b = joined(hall, "a", "b")
    hall.message(a, U1, "x")
    hall.leave(b, "quit")
    assert a.frames[-1]["event"] == "undelivered"
    assert a.frames[-1]["message"] == "Message not delivered: nobody confirmed it"


def test_timeout_with_some_confirms_and_with_none():
    hall, _ = make_hall(confirm_timeout=5)
    a, b, c = joined(hall, "a", "b", "c")
    hall.message(a, U1, "x")
    hall.message(a, U2, "y")
    hall.confirm(b, U1)
    hall.expire(now=10**9)
    receipts = [f for f in a.frames if f.get("uuid") in (U1, U2)]
    assert {"type": "confirm", "uuid": U1, "delivered": 1, "recipients": 2} in receipts
    assert [f["message"] for f in receipts if f["uuid"] == U2] == [
        "Message not delivered: nobody confirmed it"]
    assert hall.pending_count() == 0
    frames = len(a.frames)
    hall.confirm(c, U1)  # after the timeout: taken silently (a laptop that woke up)
    hall.confirm(c, U2)
    assert len(a.frames) == frames and hall.counters.confirms == 1
    with pytest.raises(ProtocolError):  # never sent at all: still unknown
        hall.confirm(c, U3)


def test_sender_leaving_drops_its_pending_receipts():
    hall, _ = make_hall()
    a, b = joined(hall, "a", "b")
    hall.message(a, U1, "x")
    hall.leave(a, "quit")
    assert hall.pending_count() == 0
    hall.confirm(b, U1)  # a correct confirm with nobody left to tell: silence


def test_pending_receipts_per_recipient_are_bounded_oldest_first():
    hall, _ = make_hall(pending_confirms=2)
    a, b = joined(hall, "a", "b")
    for u in (U1, U2, U3):
        hall.message(a, u, "x")
    # U1 expired for b (its only recipient): the sender hears at once
    assert a.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                            "recipients": 1,
                            "message": "Message not delivered: nobody confirmed it"}
    hall.confirm(b, U1)  # late, but settled recently: silent
    hall.confirm(b, U3)
    assert hall.pending_count() == 1


def test_a_member_that_never_confirms_owes_at_most_the_bound_in_batches():
    # pending_confirms 32: over it, the oldest expire for whoever owes more than 30
    # (32 less 32/16), at once; then no check is needed for 3 messages
    hall, _ = make_hall(pending_confirms=32)
    a, silent, reader = joined(hall, "a", "silent", "reader")
    sent = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(100)]
    counts = []
    for u in sent:
        hall.message(a, u, "x")
        hall.confirm(reader, u)  # the reader confirms each at once: it never lags
        counts.append(hall.pending_count())
    assert max(counts) == 32  # never more than the bound is owed
    assert counts[32:40] == [30, 31, 32, 30, 31, 32, 30, 31]  # 33 pending: 3 expire
    receipts = {f["uuid"]: f for f in a.frames if f.get("type") == "confirm"}
    settled = 100 - counts[-1]
    assert list(receipts) == sent[:settled]  # the oldest first, each counted once
    assert {(f["delivered"], f["recipients"]) for f in receipts.values()} == {(1, 2)}
    assert not reader.closed and not silent.closed
    for frame in [f for f in silent.frames if f.get("type") == "message"]:
        hall.confirm(silent, frame["uuid"])  # late for the settled (silence), in time
    receipts = [f for f in a.frames if f.get("type") == "confirm"]
    assert [f["uuid"] for f in receipts[settled:]] == sent[settled:]
    assert {(f["delivered"], f["recipients"]) for f in receipts[settled:]} == {(2, 2)}
    assert hall.pending_count() == 0


def test_senders_that_never_confirm_are_held_to_the_bound_too():
    # a and b talk, c listens; nobody confirms. c owes every message, a and b half of
    # them: the bound's check finds them under it for a while (and skips until one can
    # be over it), then holds each to it as well
    hall, _ = make_hall(pending_confirms=20)
    a, b, c = joined(hall, "a", "b", "c")

    def owed(member):
        return sum(member in p.waiting for p in hall.receipts.pending.values())

    for n in range(200):
        speaker = (a, b)[n % 2]
        hall.message(speaker, f"{n:08d}-0000-4000-8000-000000000000", f"m{n}")
        assert max(owed(a), owed(b), owed(c)) <= 20
    assert owed(c) >= 19 and owed(a) >= 9 and owed(b) >= 9  # (only what was over went)
    undelivered = [f for f in a.frames + b.frames if f.get("event") == "undelivered"]
    assert len(undelivered) == 200 - hall.pending_count()


def test_reused_pending_uuid_is_bad_uuid():
    hall, _ = make_hall()
    a, b = joined(hall, "a", "b")
    hall.message(a, U1, "x")
    with pytest.raises(ProtocolError) as info:
        hall.message(b, U1, "y")
    assert info.value.code == "bad_uuid"


def test_joins_not_broadcast_above_announce_joins_max():
    hall, log = make_hall(announce_joins_max=2)
    a, b, c = joined(hall, "a", "b", "c")
    assert [(f["event"], f.get("nickname")) for f in a.frames] == [
        ("join", "a"), ("names", None), ("join", "b")]
    assert c.frames[0] == {"type": "system", "event": "join", "nickname": "c",
                           "message": "c joined!", "room": "general"}
    assert c.frames[1]["message"] == "In the room: a, b and 1 more (3)"  # the list holds 2
    hall.leave(c, "quit")  # 3 -> 2 members: still a large hall's leave, not broadcast
    assert [f["event"] for f in a.frames] == ["join", "names", "join"]
    hall.leave(b, "quit")
    assert a.frames[-1]["event"] == "leave"


def test_kick_tells_the_member_and_the_others():
    hall, _ = make_hall()
    a, b = joined(hall, "a", "b")
    assert hall.kick("A", "spam") == "a"
    assert a.frames[-1] == {"type": "system", "event": "kick", "reason": "spam",
                            "message": "You were kicked: spam"}
    assert b.frames[-1] == {"type": "system", "event": "leave", "nickname": "a",
                            "reason": "kicked", "message": "a was kicked (spam)",
                            "room": "general"}
    with pytest.raises(NoSuchMember) as info:
        hall.kick("nobody", "x")
    assert info.value.nickname == "nobody"


def test_probe_fails_while_the_lock_is_held():
    hall, _ = make_hall()
    assert hall.probe(0.1)
    with lock_held_by_another_thread(hall.lock):
        assert not hall.probe(0.1)
    assert hall.probe(0.1)


# --- the hall in a cluster: what it asks of its broker, and what other nodes' events do


class RecordingBroker(LocalBroker):
    """Node `a` of a cluster whose other nodes are `others`; keeps what the hall sends."""

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
    return Hall(Config(**settings), log, ListChannel, broker=broker), broker, log


def test_the_receipt_sums_every_node_and_waits_for_each_tally():
    hall, broker, log = cluster_room("b", "c")
    (ann,) = joined(hall, "ann")
    hall.message(ann, U1, "ann: hi")
    assert broker.sent[-1]["kind"] == "message" and broker.sent[-1]["uuid"] == U1
    assert ann.frames[-1]["event"] != "undelivered"  # others will answer: no nobody_here
    hall.relay.remote_ack("b", U1, 2)
    hall.relay.remote_ack("c", U1, 0)  # nobody on c: c is done with it
    hall.relay.remote_ack("x", U1, 5)  # a node the message did not wait on: ignored
    hall.relay.remote_confirms("b", {U1: 1})
    hall.relay.remote_confirms("b", {U1: 1})
    assert ann.frames[-1].get("type") != "confirm"  # b's tally is still due
    hall.relay.remote_tally("b", U1)
    assert ann.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 2, "recipients": 2}


def test_a_lost_node_is_waited_for_no_more():
    hall, broker, log = cluster_room("b")
    (ann,) = joined(hall, "ann")
    hall.relay.remote_join("b", "bob")
    hall.message(ann, U1, "ann: hi")
    hall.relay.remote_ack("b", U1, 1)
    assert hall.relay.nodes_lost({"b"}) == 1
    assert ann.frames[-2]["event"] == "leave" and ann.frames[-2]["reason"] == "node_lost"
    assert ann.frames[-1] == {"type": "system", "event": "undelivered", "uuid": U1,
                              "recipients": 1, "message": "Message not delivered: "
                              "nobody confirmed it"}


def test_another_node_s_message_is_acknowledged_confirmed_and_tallied():
    hall, broker, log = cluster_room("b")
    ann, ben = joined(hall, "ann", "ben")
    hall.relay.remote_message("b", U1, "bob", "bob: hi", "2026-12-02T20:00:00Z")
    assert ann.frames[-1]["uuid"] == U1 and ben.frames[-1]["uuid"] == U1
    assert broker.sent[-1] == {"kind": "ack", "to": "b", "uuid": U1, "recipients": 2}
    hall.confirm(ann, U1)
    hall.confirm(ben, U1)
    assert broker.sent[-3:] == [
        {"kind": "confirms", "to": "b", "counts": {U1: 1}},
        {"kind": "confirms", "to": "b", "counts": {U1: 1}},
        {"kind": "tally", "to": "b", "uuid": U1, "delivered": 2, "recipients": 2}]
    assert not [e for e in log.events if e[0] in ("message", "delivery")]  # b logs them


def test_a_private_message_for_a_member_gone_is_acknowledged_by_its_node_alone():
    hall, broker, log = cluster_room("b", "c")
    joined(hall, "ann")
    hall.relay.remote_message("b", U1, "bob", "psst", "2026-12-02T20:00:00Z", to="cy", at="c")
    assert not broker.sent[1:]  # cy lives on c: only c answers
    hall.relay.remote_message("b", U2, "bob", "psst", "2026-12-02T20:00:00Z", to="al", at="a")
    assert broker.sent[-1] == {"kind": "ack", "to": "b", "uuid": U2, "recipients": 0}


def test_nicknames_of_other_nodes_are_taken_and_listed():
    hall, broker, log = cluster_room("b")
    hall.relay.remote_join("b", "Bob")
    member = FakeMember(hall)
    with pytest.raises(ProtocolError) as taken:
        join(hall, member, "bob")
    assert taken.value.code == "nickname_taken"
    (ann,) = joined(hall, "ann")
    assert ann.frames[1]["nicknames"] == ["ann", "Bob"]


def test_a_look_alike_of_a_member_is_taken_and_a_rename_to_one_too():
    hall, _ = make_hall()
    pope, other = joined(hall, "pope", "ann")
    with pytest.raises(ProtocolError) as info:
        join(hall, FakeMember(hall), "\u0440\u043e\u0440\u0435")  # all Cyrillic
    assert info.value.code == "nickname_taken"
    with pytest.raises(ProtocolError) as info:
        hall.rename(other, "\u0440\u043e\u0440\u0435", lambda error: None)
    assert info.value.code == "nickname_taken"


def test_a_shorter_confirm_timeout_after_a_reload_is_not_held_behind_older_deadlines():
    hall, log = make_hall(confirm_timeout=30)
    a, b = joined(hall, "a", "b")
    hall.message(a, U1, "before the reload")
    hall.config = Config(confirm_timeout=0.5)
    hall.message(a, U2, "after it")
    hall.expire(now=time.monotonic() + 1)
    receipts = [f for f in a.frames if f.get("uuid") in (U1, U2)]
    assert receipts == [{"type": "system", "event": "undelivered", "uuid": U2,
                         "message": "Message not delivered: nobody confirmed it",
                         "recipients": 1}]


def test_an_image_from_before_rooms_is_taken_into_the_default_room():
    """A hitless upgrade from a version with one room: its record (members, accounts,
    pending receipts, history, the other nodes' members) lands in the default room."""
    old = {
        "members": [1, 2],
        "accounts": [[1, 0, 1, [U1], 0, 0, "claim-a", "a"],
                     [2, 0, 0, [], 0, 0, "claim-b", "b"]],
        "departed": [],
        "pending": [[U1, 1, [2], 1, 25.0, 0, False, False, [], None]],
        "receipt_times": [], "settled": [],
        "remote": [["carol", "carol", "node2", "10.0.0.9:4242", False, 0.0, False]],
        "messages_sent": 1,
        "history": [["a", "2026-12-06T10:00:00.000Z", "a: before"]],
        "counters": {"messages": 1, "deliveries": 1, "confirms": 0, "undelivered": 0,
                     "send_queue_disconnects": 0},
    }
    hall, _ = make_hall()
    a, b = FakeMember(hall), FakeMember(hall)
    a.nickname, b.nickname = "a", "b"
    hall.import_state(old, {1: a, 2: b}.get)
    assert hall.rooms_of(a) == ["general"] and hall.rooms_of(b) == ["general"]
    hall.confirm(b, U1)  # the receipt pending in the old image settles in the new
    assert a.frames[-1] == {"type": "confirm", "uuid": U1, "delivered": 1, "recipients": 1}
    assert [r.nickname for r in hall.default.remote.values()] == ["carol"]
    late = FakeMember(hall)
    join(hall, late, "late")
    assert late.frames[1]["nicknames"] == ["a", "b", "carol", "late"]
    assert [m["message"] for m in late.frames[2]["messages"]] == ["a: before"]
    hall.message(a, U2, "after")
    assert b.frames[-1]["room"] == "general" and b.frames[-1]["uuid"] == U2


def test_what_a_member_owes_follows_its_rooms_through_a_part():
    """Receipts owed are one count per member, whatever its rooms: a part drops what it
    owed in that room (its senders are told at once) and keeps the count right for the
    rest (a leave after it settles exactly what is left)."""
    hall, _ = make_hall()
    a, b, c = joined(hall, "a", "b", "c")
    hall.enter(a, "dev")
    hall.enter(b, "dev")
    hall.message(a, U1, "in dev", room_name="dev")  # waits on b
    hall.message(c, U2, "in general")      # waits on a and b
    hall.confirm(a, U2)
    hall.part(b, "dev")                    # b never confirmed U1: a hears now
    assert a.frames[-1]["event"] == "undelivered" and a.frames[-1]["uuid"] == U1
    account = hall._accounts[b]
    assert hall._owed(account) == 1        # U2, still
    hall.message(a, U3, "general again")   # b owes two now
    assert hall._owed(account) == 2
    hall.leave(b, "quit")                  # both settle: c and a get their receipts
    assert c.frames[-1] == {"type": "confirm", "uuid": U2, "delivered": 1, "recipients": 2}
    assert hall.pending_count() == 1       # U3 waits on c alone


def test_names_count_and_list_leave_out_posters_of_this_node_and_of_others():
    """Counted without a scan of the room (100,000 members made every join scan them):
    posters here and on other nodes, through joins, parts and renames."""
    hall, _ = make_hall(announce_joins_max=5)
    a, = joined(hall, "a")
    poster = FakeMember(hall)
    poster.quiet = True
    join(hall, poster, "p")
    hall.relay.remote_join("n2", "rb")
    hall.relay.remote_join("n2", "rpost", quiet=True)

    def names_of(member):
        return next(f for f in member.frames if f["event"] == "names")
    b, = joined(hall, "b")
    assert names_of(b)["message"] == "In the room: a, b, rb (3)"
    hall.relay.remote_join("n2", "rc")
    hall.relay.remote_nick("n2", "rb", "rbb")
    c, = joined(hall, "c")
    assert names_of(c)["message"] == "In the room: a, b, c, rbb, rc (5)"
    hall.relay.remote_join("n2", "rd")
    d, = joined(hall, "d")  # past the limit: the first 5 as they come, the count whole
    listed = names_of(d)["nicknames"]
    assert len(listed) == 5 and set(listed) < {"a", "b", "c", "d", "rbb", "rc", "rd"}
    assert names_of(d)["message"].endswith("(7)")
    hall.relay.remote_part("n2", "rpost", None, "quit")  # a poster: the count is the same
    hall.relay.remote_part("n2", "rc", None, "quit")
    e, = joined(hall, "e")
    assert names_of(e)["message"].endswith("(7)")  # rc left, e came
    assert [room.summary()["members"] for room in hall.rooms.values()] == [7]
