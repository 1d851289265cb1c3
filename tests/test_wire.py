"""The chat protocol on real loopback sockets, against an in-process server."""

import time
import uuid

import pytest

from rawclient import PROMPT, frame, wait_for, untimed


def test_handshake_join_and_message_with_receipt(chat):
    h = chat()
    alice = h.client()
    assert alice.recv_exact(10) == b"_nickname_"
    alice.send_raw(b"alice")
    alice.nickname = "alice"
    assert untimed(alice.read()) == {"type": "system", "event": "join",
                                     "nickname": "alice", "message": "alice joined!",
                                     "room": "general"}
    assert alice.read()["message"] == "In the room: alice (1)"
    bob = h.client("bob")
    assert alice.read()["message"] == "bob joined!"
    u = alice.say("hello bob")
    got = bob.read()
    assert got["type"] == "message" and got["uuid"] == u and got["nickname"] == "alice"
    assert got["message"] == "alice: hello bob" and got["time"].endswith("Z")
    bob.confirm(u)
    assert alice.read() == {"type": "confirm", "uuid": u, "delivered": 1, "recipients": 1}


def test_server_adds_the_sender_prefix_when_missing(chat):
    h = chat()
    a, b = h.client("a"), h.client("b")
    a.read()
    u = str(uuid.uuid4())
    a.send_raw(frame({"type": "message", "uuid": u, "message": "no prefix"}))
    assert b.read()["message"] == "a: no prefix"
    a.send_raw(frame({"type": "message", "uuid": str(uuid.uuid4()), "message": "b: spoof"}))
    assert b.read()["message"] == "a: b: spoof"


def test_netcat_style_nickname_with_newline_and_frames_after_it(chat):
    h = chat()
    other = h.client("other")
    nc = h.client()
    assert nc.recv_exact(10) == PROMPT
    u = str(uuid.uuid4())
    nc.send_raw(b" nc \r\n" + frame({"type": "message", "uuid": u, "message": "hi"}))
    assert nc.read()["nickname"] == "nc"
    assert other.read()["event"] == "join"
    assert other.read()["message"] == "nc: hi"


def test_split_and_coalesced_frames(chat):
    h = chat()
    a, b = h.client("a"), h.client("b")
    a.read()
    uuids = [str(uuid.uuid4()) for _ in range(3)]
    data = b"".join(frame({"type": "message", "uuid": u, "message": f"a: m{i}"})
                    for i, u in enumerate(uuids))
    for i in range(0, len(data), 7):  # 7-byte segments
        a.send_raw(data[i:i + 7])
        time.sleep(0.001)
    assert [b.read()["message"] for _ in range(3)] == ["a: m0", "a: m1", "a: m2"]
    b.send_raw(b"".join(frame({"type": "confirm", "uuid": u}) for u in uuids))
    assert sorted(a.read()["uuid"] for _ in range(3)) == sorted(uuids)


def test_leave_is_announced_with_reason(chat):
    h = chat()
    a, b = h.client("a"), h.client("b")
    b.close()
    assert untimed(a.read_until(lambda f: f.get("event") == "leave")) == {
        "type": "system", "event": "leave", "nickname": "b", "reason": "quit",
        "message": "b left!", "room": "general"}


def test_undelivered_when_alone(chat):
    h = chat()
    a = h.client("a")
    u = a.say("hello?")
    assert a.read() == {"type": "system", "event": "undelivered", "uuid": u, "recipients": 0,
                        "message": "Message not delivered: nobody else is here"}


def test_receipt_at_confirm_timeout_with_partial_delivery(chat):
    h = chat(confirm_timeout=0.3)
    a, b = h.client("a"), h.client("b")
    h.client("c")  # a recipient that never confirms
    u = a.say("x")
    b.read_until(lambda f: f.get("uuid") == u)
    b.confirm(u)
    assert a.read_until(lambda f: f.get("uuid") == u) == {
        "type": "confirm", "uuid": u, "delivered": 1, "recipients": 2}


def error_of(client, code):
    return client.read_until(lambda f: f.get("event") == "error" and f.get("code") == code)


def assert_room_still_works(h, survivor):
    """After bad input: another client still chats with the survivor, nothing lost."""
    probe = h.client(f"probe{time.monotonic_ns() % 10**6}")
    u = probe.say("still there?")
    got = survivor.read_until(lambda f: f.get("uuid") == u)
    assert got["message"].endswith("still there?")
    survivor.confirm(u)
    assert probe.read_until(lambda f: f.get("uuid") == u)["type"] == "confirm"


@pytest.mark.parametrize("header", [b"abcdefghij", b"+12       ", b"-1        ",
                                    b"1_0       ", b"          "])
def test_bad_header_gets_error_and_close(chat, header):
    h = chat()
    good = h.client("good")
    bad = h.client("bad")
    bad.send_raw(header + b"{}")
    err = error_of(bad, "bad_header")
    assert err["type"] == "system" and "header" in err["message"]
    assert bad.closed()
    assert good.read_until(lambda f: f.get("event") == "leave")["reason"] == "error"
    assert_room_still_works(h, good)


def test_frame_too_large_gets_error_and_close(chat):
    h = chat(max_frame=1000)
    good, bad = h.client("good"), h.client("bad")
    bad.send_raw(b"1001      " + b"x" * 1001)
    assert "over the limit" in error_of(bad, "frame_too_large")["message"]
    assert bad.closed()
    assert_room_still_works(h, good)


@pytest.mark.parametrize("body,code", [
    (b"\xc3\x28", "bad_utf8"),
    (b"{oops", "bad_json"),
    (b'"a string"', "not_an_object"),
    (b'{"type":"shout","uuid":"x"}', "unknown_type"),
    (b'{"type":"message","message":"no uuid"}', "bad_uuid"),
    (b'{"type":"message","uuid":"not-a-uuid","message":"x"}', "bad_uuid"),
    (b'{"type":"confirm"}', "bad_uuid"),
])
def test_recoverable_errors_keep_the_connection(chat, body, code):
    h = chat()
    good, bad = h.client("good"), h.client("bad")
    good.read()
    bad.send_raw(f"{len(body):<10}".encode() + body)
    assert error_of(bad, code)["type"] == "system"
    # the same connection still works afterwards
    u = bad.say("after the error")
    assert good.read_until(lambda f: f.get("uuid") == u)["message"] == "bad: after the error"
    assert h.log.named("protocol_error")[0]["code"] == code


def test_text_too_long_names_the_uuid_and_nothing_is_forwarded(chat):
    h = chat(max_text=10)
    a, b = h.client("a"), h.client("b")
    a.read()
    u = str(uuid.uuid4())
    a.send_raw(frame({"type": "message", "uuid": u, "message": "é" * 6}))
    err = error_of(a, "text_too_long")
    assert err["uuid"] == u
    u2 = a.say("ok")  # "a: ok" is 5 bytes
    assert b.read()["uuid"] == u2  # the long one never reached b


def test_confirm_for_unknown_or_already_confirmed_uuid(chat):
    h = chat()
    a, b = h.client("a"), h.client("b")
    h.client("c")  # a second recipient keeps the message pending after b confirms
    b.confirm(str(uuid.uuid4()))
    assert error_of(b, "unknown_uuid")["type"] == "system"
    u = a.say("x")
    b.read_until(lambda f: f.get("uuid") == u)
    b.confirm(u)
    b.confirm(u)
    assert error_of(b, "unknown_uuid")["uuid"] == u
    a.confirm(u)  # the sender may not confirm its own message
    assert error_of(a, "unknown_uuid")["uuid"] == u


@pytest.mark.parametrize("raw", [b"", b"two words", b"ctl\x1bchar", b"n" * 33, b"\xff\xfe"])
def test_invalid_nickname_is_asked_again(chat, raw):
    h = chat()
    c = h.client()
    assert c.recv_exact(10) == PROMPT
    c.send_raw(raw + b"\n")
    assert c.read()["code"] == "nickname_invalid"
    assert c.recv_exact(10) == PROMPT
    c.send_raw(b"fine")
    assert c.read()["event"] == "join"


def test_nickname_taken_in_another_case_then_third_rejection_closes(chat):
    h = chat()
    h.client("Alice")
    c = h.client()
    for attempt in range(3):
        assert c.recv_exact(10) == PROMPT
        c.send_raw(b"aLiCe")
        err = c.read()
        assert err["event"] == "error" and err["code"] == "nickname_taken"
    assert c.closed()
    assert [e["code"] for e in h.log.named("nick_rejected")] == ["nickname_taken"] * 3


def test_handshake_timeout(chat):
    h = chat(handshake_timeout=0.3)
    c = h.client()
    assert c.recv_exact(10) == PROMPT
    assert c.read()["code"] == "handshake_timeout"
    assert c.closed()


def test_server_full(chat):
    h = chat(max_clients=2)
    h.client("a")
    b = h.client("b")
    c = h.client()
    err = c.read()
    assert err["event"] == "error" and err["code"] == "server_full"
    assert c.closed()
    b.close()
    wait_for(lambda: h.server.connection_count() == 1)
    assert h.client("c2").nickname == "c2"  # room again after a leave


def test_address_limit_unless_exempt(chat):
    h = chat(max_per_address=2, exempt_addresses=())
    h.client("a"), h.client("b")
    c = h.client()
    assert c.read()["code"] == "address_limit"
    assert c.closed()
    exempt = chat(max_per_address=2)  # loopback exempt by default
    for i in range(4):
        exempt.client(f"n{i}")


def test_flood_drops_then_disconnects(chat):
    h = chat(flood_rate=1, flood_burst=2)
    a, b = h.client("a"), h.client("b")
    a.read()
    uuids = [a.say(f"m{i}") for i in range(5)]
    # two pass (the burst), the third and fourth are dropped, the fifth disconnects
    errs = [error_of(a, "flood") for _ in range(3)]
    assert [e["uuid"] for e in errs] == uuids[2:]
    assert a.closed()
    got = [b.read() for _ in range(3)]
    assert [g.get("uuid") for g in got[:2]] == uuids[:2]
    assert got[2]["event"] == "leave" and got[2]["reason"] == "flood"
    assert [e["uuid"] for e in h.log.named("flood")] == uuids[2:]


def test_disconnect_mid_frame(chat):
    h = chat()
    good, bad = h.client("good"), h.client("bad")
    bad.send_raw(b"50        {\"type\":")
    bad.close()
    leave = good.read_until(lambda f: f.get("event") == "leave")
    assert leave["nickname"] == "bad" and leave["reason"] == "error"
    assert_room_still_works(h, good)


def test_disconnect_during_handshake_leaves_no_trace(chat):
    h = chat()
    good = h.client("good")
    c = h.client()
    c.recv_exact(10)
    c.close()
    wait_for(lambda: h.server.connection_count() == 1)
    assert_room_still_works(h, good)


def test_ipv6_listener(chat):
    from tcpchatd.net.listeners import bind_listener, describe
    sock = bind_listener("::1", 0)
    try:
        assert describe(sock).startswith("[::1]:")
    finally:
        sock.close()


def _burst(uuids, sender="a"):
    """Many messages in one write: the server reads them together, as under load."""
    return b"".join(frame({"type": "message", "uuid": u, "message": f"{sender}: {i}"})
                    for i, u in enumerate(uuids))


def test_a_burst_reaches_everyone_in_order_and_the_sender_gets_only_receipts(chat):
    h = chat(flood_rate=0)
    a, b, c = h.client("a"), h.client("b"), h.client("c")
    for client in (a, b):
        client.read_until(lambda f: f.get("nickname") == "c")
    uuids = [str(uuid.uuid4()) for _ in range(300)]
    a.send_raw(_burst(uuids))
    for client in (b, c):
        got = [client.read() for _ in uuids]
        assert [(f["uuid"], f["message"]) for f in got] == [
            (u, f"a: {i}") for i, u in enumerate(uuids)]
        # all confirms in one write (the reader settles them together)
        client.send_raw(b"".join(frame({"type": "confirm", "uuid": u}) for u in uuids))
    receipts = {}
    for _ in uuids:
        f = a.read()
        receipts[f["uuid"]] = f
    assert receipts == {u: {"type": "confirm", "uuid": u, "delivered": 2, "recipients": 2}
                        for u in uuids}
    assert h.hall.pending_count() == 0


def test_a_kicked_client_gets_what_was_said_before_the_kick_then_the_kick(chat):
    h = chat(flood_rate=0)
    a, b = h.client("a"), h.client("b")
    a.read_until(lambda f: f.get("nickname") == "b")
    uuids = [str(uuid.uuid4()) for _ in range(200)]
    a.send_raw(_burst(uuids))
    wait_for(lambda: h.hall.counters.messages == len(uuids))
    h.hall.kick("b", "enough")
    got = []
    while not got or got[-1].get("event") != "kick":
        got.append(b.read())
    assert [f.get("uuid") for f in got[:-1]] == uuids
    assert got[-1]["message"] == "You were kicked: enough"
    assert b.sock.recv(1) == b""  # and nothing after the kick


def test_the_flood_bucket_refills_at_flood_rate(chat):
    """Not only the burst: after 0.6 s at 4 a second, two more messages pass and the
    rest are dropped (a doubled refill would pass four, a halved one one)."""
    h = chat(flood_rate=4, flood_burst=4)
    a = h.client("a")

    def outcome(u):
        f = a.read_until(lambda f: f.get("uuid") == u)
        return "dropped" if f.get("code") == "flood" else "taken"
    burst = [a.say(f"burst {i}") for i in range(4)]
    assert [outcome(u) for u in burst] == ["taken"] * 4  # alone: undelivered, but taken
    time.sleep(0.6)
    later = [a.say(f"later {i}") for i in range(4)]
    assert [outcome(u) for u in later] == ["taken", "taken", "dropped", "dropped"]


# --- join notices held together (net/engine.py, NOTICE_COALESCE; 2 s here, to be seen)

def _held_notices(chat, monkeypatch):
    from tcpchatd.net import engine
    monkeypatch.setattr(engine, "NOTICE_COALESCE", 2.0)
    h = chat()
    a, b = h.client("a"), h.client("b")
    a.read_until(lambda f: f.get("event") == "join" and f.get("nickname") == "b")
    u = b.say("a round for the room")  # the room's last round: now
    a.read_until(lambda f: f.get("uuid") == u)
    return h, a, b


def test_join_notices_after_a_round_wait_together_and_come_when_due(chat, monkeypatch):
    h, a, b = _held_notices(chat, monkeypatch)
    started = time.monotonic()
    h.client("c")
    h.client("d")
    joins = [a.read_until(lambda f: f.get("event") == "join")["nickname"] for _ in "cd"]
    waited = time.monotonic() - started
    assert joins == ["c", "d"]
    assert 1.0 < waited < 4.0, waited  # held, and sent once due, with nothing else to wake it


def test_a_chat_message_takes_the_held_notices_with_it_at_once(chat, monkeypatch):
    h, a, b = _held_notices(chat, monkeypatch)
    h.client("c")
    time.sleep(0.2)  # c's join is held for a
    started = time.monotonic()
    u = b.say("not held")
    seen = []
    a.read_until(lambda f: seen.append(f.get("nickname") if f.get("event") == "join"
                                       else f.get("uuid")) or f.get("uuid") == u)
    assert time.monotonic() - started < 1.0
    assert seen[-2:] == ["c", u]  # the room's order: c's join, then the message


def test_in_a_storm_of_joins_each_wait_is_twice_the_last(chat, monkeypatch):
    """While notices alone keep coming, a room's member is sent them after 0.3, then 0.6,
    then 1.2 s (NOTICE_COALESCE_MAX here): a few writes, not one every 0.3 s."""
    import threading
    from tcpchatd.net import engine
    monkeypatch.setattr(engine, "NOTICE_COALESCE", 0.3)
    monkeypatch.setattr(engine, "NOTICE_COALESCE_MAX", 1.2)
    h = chat()
    a, b = h.client("a"), h.client("b")
    a.read_until(lambda f: f.get("event") == "join" and f.get("nickname") == "b")
    u = b.say("the storm starts after this round")
    a.read_until(lambda f: f.get("uuid") == u)
    names = [f"j{i}" for i in range(40)]
    joiners = []

    def storm():  # a join every 60 ms or so, for about 2.4 s
        for name in names:
            joiners.append(h.client(name))
            time.sleep(0.06)
    thread = threading.Thread(target=storm)
    thread.start()
    arrivals = []
    for _ in names:
        f = a.read_until(lambda f: f.get("event") == "join")
        arrivals.append((time.monotonic(), f["nickname"]))
    thread.join()
    assert [name for _, name in arrivals] == names  # every one, in the room's order
    bursts = 1 + sum(1 for (t0, _), (t1, _) in zip(arrivals, arrivals[1:]) if t1 - t0 > 0.15)
    assert 2 <= bursts <= 5, [round(t - arrivals[0][0], 2) for t, _ in arrivals]
