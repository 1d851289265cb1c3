"""What an adversarial probe and a code review broke, each replayed with the same bytes
against an in-process server (issue 10)."""

import socket
import threading
import time
import uuid

import pytest

from rawclient import PROMPT, frame, raw_frame, wait_for
from test_wire import assert_room_still_works, error_of

BASE = "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"


def nested(depth: int, msg_uuid: str) -> bytes:
    return (b'{"type":"message","uuid":"%s","message":"x","x":' % msg_uuid.encode()
            + b"[" * depth + b"1" + b"]" * depth + b"}")


# --- 1. deep JSON

def test_deep_json_is_bad_json_and_the_connection_stays_open(chat):
    h = chat()
    good, bad = h.client("good"), h.client("bad")
    good.read()
    u = str(uuid.uuid4())
    bad.send_raw(raw_frame(nested(10_000, u)))
    err = error_of(bad, "bad_json")
    assert "nested deeper than 32" in err["message"]
    u2 = bad.say("after the deep one")
    assert good.read_until(lambda f: f.get("uuid") == u2)["message"] == "bad: after the deep one"
    assert [e["code"] for e in h.log.named("protocol_error")] == ["bad_json"]


def test_the_depth_bound_is_a_setting(chat):
    h = chat(max_json_depth=4)
    good, bad = h.client("good"), h.client("bad")
    good.read()
    bad.send_raw(raw_frame(nested(3, str(uuid.uuid4()))))  # 4 levels with the object
    assert good.read()["message"] == "bad: x"
    bad.send_raw(raw_frame(nested(4, str(uuid.uuid4()))))
    assert "nested deeper than 4" in error_of(bad, "bad_json")["message"]


# --- 2. uuid spellings

@pytest.mark.parametrize("spelling", [
    "{%s}" % BASE, "urn:uuid:" + BASE, "urn:urn:uuid:" + BASE, BASE.replace("-", ""),
    BASE[:9] + "-" + BASE[9:], "+" + BASE[1:], BASE[:-1] + "_", "\n" + BASE,
    BASE[:-1] + "\u0662", BASE[:-1] + "\uff12"])
def test_every_non_canonical_uuid_spelling_is_bad_uuid_and_never_forwarded(chat, spelling):
    h = chat()
    a, b = h.client("a"), h.client("b")
    a.read()
    a.send_raw(frame({"type": "message", "uuid": spelling, "message": "a: x"}))
    error_of(a, "bad_uuid")
    u = a.say("canonical")
    assert b.read()["uuid"] == u  # the bad one never reached b


def test_one_uuid_in_other_cases_is_one_message(chat):
    h = chat()
    a, b, c = h.client("a"), h.client("b"), h.client("c")
    a.read(), a.read(), b.read()
    a.say("first", BASE.upper())
    got = b.read()
    assert got["uuid"] == BASE  # normalised to lower case for every recipient
    assert c.read()["uuid"] == BASE
    a.say("again", BASE)  # the same uuid, still pending
    assert error_of(a, "bad_uuid")["uuid"] == BASE
    b.confirm(BASE.upper())  # a confirm in another case settles it
    c.confirm(BASE)
    assert a.read() == {"type": "confirm", "uuid": BASE, "delivered": 2, "recipients": 2}


# --- 5. valid confirms before a fatal frame take effect

def confirm_bodies(uuids, compact: bool) -> bytes:
    if compact:  # our spelling: the bulk path
        return b"".join(raw_frame(b'{"type":"confirm","uuid":"%s"}' % u.encode()) for u in uuids)
    # keys in another order: frame by frame through the full parser
    return b"".join(raw_frame(b'{"uuid": "%s", "type": "confirm"}' % u.encode()) for u in uuids)


@pytest.mark.parametrize("compact", [True, False], ids=["bulk", "frame_by_frame"])
@pytest.mark.parametrize("fatal", [b"abcdefghij", b"99999999  "], ids=["bad_header", "too_large"])
def test_confirms_read_with_a_fatal_frame_are_settled_first(chat, compact, fatal):
    h = chat(max_frame=1000)
    a, b, c = h.client("a"), h.client("b"), h.client("c")
    uuids = [a.say(f"m{i}") for i in range(3)]
    for u in uuids:
        b.read_until(lambda f, u=u: f.get("uuid") == u)
        c.read_until(lambda f, u=u: f.get("uuid") == u)
    for u in uuids:
        c.confirm(u)
    b.send_raw(confirm_bodies(uuids, compact) + fatal)
    error_of(b, "frame_too_large" if fatal.startswith(b"9") else "bad_header")
    assert b.closed()
    receipts = [a.read_until(lambda f: f.get("type") == "confirm") for _ in uuids]
    assert sorted((r["uuid"], r["delivered"], r["recipients"]) for r in receipts) == \
        sorted((u, 2, 2) for u in uuids)


# --- 6. error limit and coalesced error lines

def test_errors_beyond_the_limit_disconnect_with_reason_errors(chat):
    h = chat(error_limit=5)
    good, bad = h.client("good"), h.client("bad")
    good.read()
    for _ in range(5):
        bad.send_raw(raw_frame(b"{oops"))
        error_of(bad, "bad_json")
    bad.send_raw(raw_frame(b"{oops"))
    last = error_of(bad, "bad_json")
    assert "too many errors" in last["message"]
    assert bad.closed()
    leave = good.read_until(lambda f: f.get("event") == "leave")
    assert (leave["nickname"], leave["reason"]) == ("bad", "errors")
    lines = h.log.named("protocol_error")
    assert lines[0] == {"nick": "bad", "addr": lines[0]["addr"], "code": "bad_json"}
    assert {"repeated": 5, "code": "bad_json"}.items() <= lines[1].items()
    assert len(lines) == 2
    assert {"nick": "bad", "room": "general", "reason": "errors"} in h.log.named("leave")


def test_unknown_uuid_confirms_count_and_their_lines_are_coalesced(chat):
    """Confirms for nothing cost the loop more than a frame does: they count against
    error_limit like any error (issue 23, item 13), their lines coalesced."""
    h = chat(error_limit=5)
    a, b = h.client("a"), h.client("b")
    a.read()
    strays = [str(uuid.uuid4()) for _ in range(200)]
    b.send_raw(confirm_bodies(strays, compact=True))
    for _ in range(5):
        error_of(b, "unknown_uuid")
    last = error_of(b, "unknown_uuid")
    assert "too many errors" in last["message"]
    assert b.closed()
    leave = a.read_until(lambda f: f.get("event") == "leave")
    assert (leave["nickname"], leave["reason"]) == ("b", "errors")
    lines = [(e["code"], e.get("repeated")) for e in h.log.named("protocol_error")]
    assert lines == [("unknown_uuid", None), ("unknown_uuid", 5)]


def test_late_confirms_of_settled_messages_are_taken_silently_and_never_counted(chat):
    """A laptop that wakes after confirm_timeout confirms its backlog: not an error."""
    h = chat(error_limit=5, confirm_timeout=0.2)
    a, b = h.client("a"), h.client("b")
    a.read()
    sent = [a.say(f"while b slept {i}") for i in range(20)]
    for u in sent:
        assert a.read_until(lambda f: f.get("uuid") == u)["event"] == "undelivered"
    backlog = [b.read_until(lambda f: f.get("type") == "message")["uuid"] for _ in sent]
    b.send_raw(confirm_bodies(backlog, compact=True))
    u = b.say("good morning")
    assert a.read_until(lambda f: f.get("type") == "message")["uuid"] == u
    assert h.log.named("protocol_error") == []


# --- 9. a confirm for a message whose sender left

def test_confirm_after_the_sender_left_draws_no_error(chat):
    h = chat()
    a, b, c = h.client("a"), h.client("b"), h.client("c")
    u = a.say("bye soon")
    b.read_until(lambda f: f.get("uuid") == u)
    a.close()
    b.read_until(lambda f: f.get("event") == "leave")
    b.confirm(u)
    u2 = c.say("next")
    assert b.read_until(lambda f: f.get("type") != "system" or f.get("event") == "error") \
        ["uuid"] == u2  # no unknown_uuid came before c's message
    assert h.log.named("protocol_error") == []


# --- 10. nicknames that look alike

def handshake(client, raw: bytes) -> dict:
    assert client.recv_exact(10) == PROMPT
    client.send_raw(raw)
    return client.read()


@pytest.mark.parametrize("raw,code,reason", [
    ("\u0430nn".encode(), "nickname_invalid", "mixes scripts"),
    ("ann\ufe0f".encode(), "nickname_invalid", "invisible"),
    ("ann\u034f".encode(), "nickname_invalid", "invisible"),
    ("\uff41\uff4e\uff4e".encode(), "nickname_taken", "taken"),
    ("\u3164".encode(), "nickname_invalid", "invisible"),
    ("\u2800".encode(), "nickname_invalid", "blank"),
    (b"10.1.2.3", "nickname_invalid", "IP address"),
])
def test_look_alike_nicknames_are_refused_beside_ann(chat, raw, code, reason):
    h = chat()
    h.client("ann")
    c = h.client()
    err = handshake(c, raw)
    assert err["code"] == code and reason in err["message"]
    assert c.recv_exact(10) == PROMPT


def test_japanese_korean_and_chinese_names_join(chat):
    h = chat()
    for name in ("山田さん", "Kim김", "王小明"):
        assert h.client(name).nickname == name


# --- 11. half-close

def test_a_half_closed_client_gets_its_join_and_receipt_then_eof(chat):
    h = chat()
    reader = h.client("reader")
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    assert sock.recv(10) == PROMPT
    u = str(uuid.uuid4())
    sock.sendall(b"writer\n" + frame({"type": "message", "uuid": u, "message": "writer: bye"}))
    sock.shutdown(socket.SHUT_WR)
    got = reader.read_until(lambda f: f.get("uuid") == u)
    assert got["message"] == "writer: bye"
    assert reader.read_until(lambda f: f.get("event") == "leave")["reason"] == "quit"
    reader.confirm(u)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert b'"event":"join","nickname":"writer"' in data
    assert data.endswith(frame_bytes := b'{"type":"confirm","uuid":"%s","delivered":1,'
                         b'"recipients":1}' % u.encode()), data
    assert frame_bytes


def test_a_half_closed_client_is_closed_after_the_grace_without_receipts(chat):
    h = chat(shutdown_grace=0.3)
    h.client("silent")  # never confirms
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    assert sock.recv(10) == PROMPT
    u = str(uuid.uuid4())
    sock.sendall(b"w\n" + frame({"type": "message", "uuid": u, "message": "w: x"}))
    sock.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert 0.2 < time.monotonic() - started < 3
    assert b'"event":"join"' in data and b'"type":"confirm"' not in data
    sock.close()


# --- 12. exact receipt counts with three and more recipients

def chatting(h, *names):
    clients = [h.client(n) for n in names]
    for i, c in enumerate(clients):  # everyone has seen every join
        for later in names[i + 1:]:
            c.read_until(lambda f, n=later: f.get("event") == "join" and f.get("nickname") == n)
    return clients


def receive(clients, u):
    for c in clients:
        c.read_until(lambda f: f.get("uuid") == u)


def test_three_recipients_all_confirming(chat):
    h = chat()
    s, *rs = chatting(h, "s", "r1", "r2", "r3")
    u = s.say("x")
    receive(rs, u)
    for r in rs:
        r.confirm(u)
    assert s.read() == {"type": "confirm", "uuid": u, "delivered": 3, "recipients": 3}
    assert h.log.named("delivery") == [{"uuid": u, "room": "general", "delivered": 3,
                                        "recipients": 3}]


def test_four_recipients_two_confirming_one_leaving_one_silent(chat):
    h = chat(receipt_wait=0.3, confirm_timeout=3)
    s, r1, r2, r3, r4 = chatting(h, "s", "r1", "r2", "r3", "r4")
    u = s.say("x")
    receive([r1, r2, r3, r4], u)
    started = time.monotonic()
    r1.confirm(u)
    r2.confirm(u)
    r3.close()
    receipt = s.read_until(lambda f: f.get("uuid") == u)
    assert receipt == {"type": "confirm", "uuid": u, "delivered": 2, "recipients": 4}
    assert 0.25 < time.monotonic() - started < 2  # at receipt_wait, not at the timeout
    assert h.log.named("delivery") == []  # the final count is not known yet
    r4.confirm(u)  # after the receipt: taken silently
    wait_for(lambda: h.log.named("delivery"))
    assert h.log.named("delivery") == [{"uuid": u, "room": "general", "delivered": 3,
                                        "recipients": 4}]
    u2 = r4.say("no error came before this")
    assert s.read_until(lambda f: f.get("type") == "message" or f.get("event") == "error") \
        ["uuid"] == u2


def test_three_recipients_two_confirming_one_leaving_is_immediate(chat):
    h = chat(receipt_wait=30, confirm_timeout=60)
    s, r1, r2, r3 = chatting(h, "s", "r1", "r2", "r3")
    u = s.say("x")
    receive([r1, r2, r3], u)
    r1.confirm(u)
    r2.confirm(u)
    r3.close()
    assert s.read_until(lambda f: f.get("uuid") == u) == {
        "type": "confirm", "uuid": u, "delivered": 2, "recipients": 3}


def test_a_confirm_sent_just_before_the_close_counts(chat):
    """A read of confirms alone is served after the loop's next round (messages first);
    the recipient's end, read in a later turn, never overtakes it (five rounds)."""
    h = chat(receipt_wait=30, confirm_timeout=60)
    s, r = chatting(h, "s", "r")
    for round_ in range(5):
        u = s.say(f"x{round_}")
        receive([r], u)
        r.confirm(u)
        r.close()
        assert s.read_until(lambda f: f.get("uuid") == u) == {
            "type": "confirm", "uuid": u, "delivered": 1, "recipients": 1}
        s.read_until(lambda f: f.get("event") == "leave")
        r = h.client("r")
        s.read_until(lambda f: f.get("event") == "join")


def test_three_recipients_timing_out_one_confirming_late(chat):
    h = chat(receipt_wait=30, confirm_timeout=0.5)
    s, r1, r2, r3 = chatting(h, "s", "r1", "r2", "r3")
    u = s.say("x")
    receive([r1, r2, r3], u)
    r1.confirm(u)
    assert s.read_until(lambda f: f.get("uuid") == u) == {
        "type": "confirm", "uuid": u, "delivered": 1, "recipients": 3}
    r2.confirm(u)  # after the timeout: silent
    u2 = s.say("nobody confirms this")
    receive([r1, r2, r3], u2)
    assert s.read_until(lambda f: f.get("uuid") == u2) == {
        "type": "system", "event": "undelivered", "uuid": u2, "recipients": 3,
        "message": "Message not delivered: nobody confirmed it"}
    assert h.log.named("protocol_error") == []
    assert [(d["delivered"], d["recipients"]) for d in h.log.named("delivery")] == [(1, 3)]
    assert h.log.named("undelivered") == [{"uuid": u2, "room": "general",
                                           "reason": "nobody_confirmed"}]


def test_the_room_stays_usable_after_every_probe(chat):
    h = chat()
    good = h.client("good")
    for raw in (raw_frame(nested(10_000, BASE)), frame({"type": "confirm", "uuid": "{%s}" % BASE})):
        bad = h.client(f"bad{len(raw)}")
        bad.send_raw(raw)
        bad.read_until(lambda f: f.get("event") == "error")
    assert_room_still_works(h, good)


def test_a_half_closed_sender_gets_every_receipt_of_a_bulk_confirm(chat):
    """Confirms settled together are handed over before the sender is let go (the race
    it guards against shows in some rounds only: five rounds)."""
    h = chat(flood_rate=0)
    reader = h.client("reader")
    for round_ in range(5):
        sock = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        assert sock.recv(10) == PROMPT
        uuids = [str(uuid.uuid4()) for _ in range(800)]
        sock.sendall(b"writer%d\n" % round_ + b"".join(
            frame({"type": "message", "uuid": u, "message": f"x: {i}"})
            for i, u in enumerate(uuids)))
        sock.shutdown(socket.SHUT_WR)
        for u in uuids:
            reader.read_until(lambda f, u=u: f.get("uuid") == u)
        reader.send_raw(b"".join(frame({"type": "confirm", "uuid": u}) for u in uuids))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        receipts = [u for u in uuids if b'"type":"confirm","uuid":"%s"' % u.encode() in data]
        assert len(receipts) == len(uuids), f"round {round_}"


# --- a failure inside the daemon ends one connection, never the loop

def _failing_for(monkeypatch, method: str, nickname: str) -> list:
    """Session.<method> raises once for `nickname` once armed (append to the list
    returned)."""
    from tcpchatd.net.session import Session
    armed: list = []
    original = getattr(Session, method)

    def failing(self, *args, **kwargs):
        if armed and self.nickname == nickname:
            armed.clear()
            raise RuntimeError(f"planted failure in {method}")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Session, method, failing)
    return armed


def _ended_by_the_planted_failure(h, victim, method: str) -> None:
    """The victim's connection is closed; the traceback went to the error log once and
    never to the peer; nothing else failed."""
    assert victim.closed(5.0)
    assert len(h.tracebacks) == 1, h.tracebacks
    assert "internal error in 127.0.0.1:" in h.tracebacks[0]
    assert f"RuntimeError: planted failure in {method}" in h.tracebacks[0]
    h.tracebacks.clear()  # (the fixture's teardown asserts that none is left)


def test_a_send_that_fails_ends_that_member_and_the_round_goes_on(chat, monkeypatch):
    """bob is sent the round's news between alice and carol: his send fails, the others
    still get the message at once and the room goes on."""
    h = chat()
    alice, bob, carol = h.client("alice"), h.client("bob"), h.client("carol")
    for watcher in (alice, bob):
        watcher.read_until(lambda f: f.get("nickname") == "carol")
    armed = _failing_for(monkeypatch, "flush", "bob")
    armed.append(True)
    u = alice.say("past bob")
    assert carol.read_until(lambda f: f.get("uuid") == u)["message"] == "alice: past bob"
    _ended_by_the_planted_failure(h, bob, "flush")
    assert_room_still_works(h, carol)


def test_a_read_that_fails_ends_that_member_and_the_loop_goes_on(chat, monkeypatch):
    """bob's bytes and carol's come while the loop is busy, so that one wait for events
    finds both: bob's read fails, carol's message is still served and delivered."""
    h = chat()
    alice, bob, carol = h.client("alice"), h.client("bob"), h.client("carol")
    alice.read_until(lambda f: f.get("nickname") == "carol")
    armed = _failing_for(monkeypatch, "readable", "bob")
    armed.append(True)
    busy = threading.Event()
    loop = h.server.engine.loops[0]
    loop.call_soon(next(iter(loop.connections)), lambda: (busy.set(), time.sleep(0.3)))
    assert busy.wait(5.0)
    bob.send_raw(b"x")  # any byte: the read fails before it is looked at
    u = carol.say("after bob's failure")
    assert alice.read_until(lambda f: f.get("uuid") == u)["message"] == \
        "carol: after bob's failure"
    _ended_by_the_planted_failure(h, bob, "readable")
    assert_room_still_works(h, alice)
