"""Chat features beyond the original, on the wire (issue 11): names, requests, private
messages, actions, history; every new frame reads well in the original client."""

import uuid

import pytest

from rawclient import PROMPT, frame, untimed
from test_wire import error_of

FEATURES = ["request", "private", "history", "nick", "action", "rooms", "accounts",
            "scrollback", "confirms"]


def request(client, cmd, request_id=1, **fields):
    client.send_raw(frame({"type": "request", "id": request_id, "cmd": cmd, **fields}))


def test_a_joiner_sees_its_join_then_who_is_here_then_the_history(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    u = ann.say("hello")
    ben.confirm(ben.read_until(lambda f: f.get("uuid") == u)["uuid"])
    cy = h.client()
    assert cy.recv_exact(10) == PROMPT
    cy.send_raw(b"cy")
    joined, names, history = cy.read(), cy.read(), cy.read()
    assert joined["event"] == "join" and joined["nickname"] == "cy"
    assert names == {"type": "system", "event": "names", "nicknames": ["ann", "ben", "cy"],
                     "features": FEATURES, "history": 1, "room": "general", "topic": "",
                     "message": "In the room: ann, ben, cy (3)"}
    stamp = history["messages"][0]["time"]
    assert history == {"type": "system", "event": "history", "room": "general",
                       "messages": [{"nickname": "ann", "time": stamp, "message": "ann: hello",
                                     "uuid": u}],
                       "message": f"-- 1 earlier message --\n[{stamp[11:16]}] ann: hello"}


def test_names_lists_fifty_in_its_message_and_everyone_in_the_list(chat):
    h = chat(max_per_address=100)
    for i in range(52):
        h.client(f"n{i:02d}")
    last = h.clients[-1]
    assert len(last.names["nicknames"]) == 52
    assert last.names["message"].endswith("n49 and 2 more (52)")


def test_who_request_answers_with_names_and_the_id(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("Ben")
    request(ann, "who", "q1")
    names = ann.read_until(lambda f: f.get("event") == "names")
    assert names["id"] == "q1" and names["nicknames"] == ["ann", "Ben"]


def test_unknown_request_and_bad_requests(chat):
    h = chat()
    ann = h.client("ann")
    request(ann, "dance", 7)
    err = error_of(ann, "unknown_command")
    assert err["id"] == 7 and "dance" in err["message"]
    ann.send_raw(frame({"type": "request", "id": 8}))
    assert error_of(ann, "unknown_command")["id"] == 8
    ann.send_raw(frame({"type": "request", "id": [1], "cmd": "who"}))
    error_of(ann, "bad_json")


def test_nick_change_is_announced_to_everyone(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    request(ben, "nick", 2, nickname="benny")
    expected = {"type": "system", "event": "nick", "nickname": "benny", "old": "ben",
                "message": "ben is now benny", "room": "general"}
    assert untimed(ann.read_until(lambda f: f.get("event") == "nick")) == expected
    assert untimed(ben.read_until(lambda f: f.get("event") == "nick")) == expected
    u = ben.say("renamed")  # the client still writes its old prefix: the server adds the new
    assert ann.read_until(lambda f: f.get("uuid") == u)["nickname"] == "benny"
    assert {"old": "ben", "new": "benny", "rooms": "general"} in h.log.named("nick")
    cy = h.client()
    assert cy.recv_exact(10) == PROMPT
    cy.send_raw(b"BEN")  # the old name is free again
    assert cy.read()["nickname"] == "BEN"


@pytest.mark.parametrize("new,code", [("ANN", "nickname_taken"), ("\u0430nn", "nickname_invalid"),
                                      ("two words", "nickname_invalid")])
def test_nick_change_refused(chat, new, code):
    h = chat()
    h.client("ann")
    ben = h.client("ben")
    request(ben, "nick", 3, nickname=new)
    err = error_of(ben, code)
    assert err["id"] == 3
    request(ben, "who", 4)
    assert "ben" in ben.read_until(lambda f: f.get("event") == "names")["nicknames"]


def test_private_message_reaches_only_its_recipient(chat):
    h = chat()
    ann, ben, cy = h.client("ann"), h.client("ben"), h.client("cy")
    u = str(uuid.uuid4())
    ann.send_raw(frame({"type": "message", "uuid": u, "message": "ann: psst", "to": "BEN"}))
    got = ben.read_until(lambda f: f.get("uuid") == u)
    assert got["message"] == "ann (private): psst"
    assert (got["to"], got["private"], got["nickname"]) == ("ben", True, "ann")
    ben.confirm(u)
    assert ann.read_until(lambda f: f.get("uuid") == u) == {
        "type": "confirm", "uuid": u, "delivered": 1, "recipients": 1}
    u2 = ann.say("public now")
    assert cy.read_until(lambda f: f.get("type") == "message")["uuid"] == u2  # never saw u
    (logged,) = [m for m in h.log.named("message") if m["uuid"] == u]
    assert logged["to"] == "ben" and logged["recipients"] == 1
    dan = h.client("dan")
    assert [m["message"] for m in dan.history["messages"]] == ["ann: public now"]


def test_private_message_to_nobody_is_no_such_nickname(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    for to in ("zed", "ann"):
        u = str(uuid.uuid4())
        ann.send_raw(frame({"type": "message", "uuid": u, "message": "x", "to": to}))
        assert error_of(ann, "no_such_nickname")["uuid"] == u
    u = ann.say("after")
    assert ben.read_until(lambda f: f.get("type") == "message")["uuid"] == u


def test_private_receipts_do_not_upset_the_room_s_accounting(chat):
    h = chat(pending_confirms=5)
    ann, ben, cy = h.client("ann"), h.client("ben"), h.client("cy")
    for i in range(20):  # cy confirms everything it gets: never over pending_confirms
        u = str(uuid.uuid4())
        ann.send_raw(frame({"type": "message", "uuid": u, "message": f"p{i}", "to": "cy"}))
        cy.confirm(cy.read_until(lambda f, u=u: f.get("uuid") == u)["uuid"])
        assert ann.read_until(lambda f, u=u: f.get("uuid") == u)["delivered"] == 1
    u = ann.say("to all")
    for c in (ben, cy):
        c.confirm(c.read_until(lambda f: f.get("uuid") == u)["uuid"])
    assert ann.read_until(lambda f: f.get("uuid") == u)["delivered"] == 2


def test_action_is_forwarded_as_an_action(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    u = str(uuid.uuid4())
    ann.send_raw(frame({"type": "message", "uuid": u, "message": "ann: waves", "action": True}))
    got = ben.read_until(lambda f: f.get("uuid") == u)
    assert got["action"] is True and got["message"] == "ann: waves"


def test_history_keeps_the_newest_within_its_bytes_and_can_be_off(chat):
    import json
    for limit, expected in ((16384, 3), (400, 1)):  # (an entry carries its uuid)
        h = chat(history=3, history_bytes=limit)
        ann, ben = h.client("ann"), h.client("ben")
        for i in range(5):
            u = ann.say(f"m{i} " + "x" * 60)
            ben.confirm(ben.read_until(lambda f, u=u: f.get("uuid") == u)["uuid"])
        cy = h.client("cy")
        texts = [m["message"][:7] for m in cy.history["messages"]]
        assert texts == ["ann: m2", "ann: m3", "ann: m4"][-expected:]
        assert cy.names["history"] == expected
        body = json.dumps(cy.history, ensure_ascii=False, separators=(",", ":")).encode()
        assert len(body) <= limit
    off = chat(history=0)
    a = off.client("a")
    a.say("alone")
    assert off.client("b").history is None


def test_requests_count_against_the_flood_limit(chat):
    h = chat(flood_rate=1, flood_burst=2)
    ann = h.client("ann")
    for i in range(3):
        request(ann, "who", i)
    ann.read_until(lambda f: f.get("id") == 1)
    err = error_of(ann, "flood")
    assert err["id"] == 2


def test_every_new_frame_has_a_readable_message(chat):
    """The original client prints `message` of every system frame it gets."""
    h = chat()
    ann = h.client("ann")
    u = ann.say("x")
    ben = h.client("ben")
    request(ben, "nick", 1, nickname="bob")
    request(ben, "dance", 2)
    frames = [ben.names, ben.history,
              ben.read_until(lambda f: f.get("event") == "nick"),
              ben.read_until(lambda f: f.get("event") == "error")]
    assert all(isinstance(f["message"], str) and f["message"] for f in frames)
    assert ben.history["messages"][0]["message"] == "ann: x" and u


# --- posters: a script's messages without joining the conversation (issue 31, item 3)

def hello(client, nickname: str, mode: str = "post") -> dict:
    assert client.recv_exact(10) == PROMPT
    client.send_raw(frame({"type": "hello", "nickname": nickname, "mode": mode}))
    joined = client.read()
    client.nickname = joined.get("nickname")
    return joined


def test_a_poster_joins_and_leaves_unannounced_and_is_told_at_once(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ci = h.client()
    joined = hello(ci, "ci")
    assert (joined["event"], joined["nickname"]) == ("join", "ci")
    u = ci.say("build 1234 passed")
    accepted = ci.read_until(lambda f: f.get("uuid") == u)
    assert (accepted["event"], accepted["recipients"]) == ("accepted", 2)
    for member in (ann, ben):
        got = member.read_until(lambda f: f.get("type") == "message")
        assert got["message"] == "ci: build 1234 passed" and got["nickname"] == "ci"
        member.confirm(got["uuid"])
    receipt = ci.read_until(lambda f: f.get("type") == "confirm")
    assert (receipt["uuid"], receipt["delivered"], receipt["recipients"]) == (u, 2, 2)
    ci.quit()
    v = ann.say("after ci")
    seen = ben.read_until(lambda f: f.get("type") == "message" or f.get("event") in
                          ("join", "leave"))
    assert seen["uuid"] == v  # neither its join nor its leave came before
    names = request_names(ann)
    assert names == ["ann", "ben"]
    joins = [f for f in h.log.named("join") if f["nick"] == "ci"]
    assert [(f["nick"], f["post"]) for f in joins] == [("ci", "yes")]


def request_names(client) -> list[str]:
    client.send_raw(frame({"type": "request", "cmd": "who", "id": "w"}))
    return client.read_until(lambda f: f.get("id") == "w")["nicknames"]


def test_two_posters_under_one_name_take_free_variants(chat):
    h = chat()
    ann = h.client("ann")
    first, second, third = h.client(), h.client(), h.client()
    assert hello(first, "ci")["nickname"] == "ci"
    assert hello(second, "ci")["nickname"] == "ci-2"
    assert hello(third, "CI")["nickname"] == "CI-3"
    assert request_names(ann) == ["ann"]  # posters are in no names list
    u = second.say("from the second job")
    assert ann.read_until(lambda f: f.get("type") == "message")["nickname"] == "ci-2"
    assert second.read_until(lambda f: f.get("uuid") == u)["event"] == "accepted"


def test_a_poster_alone_is_accepted_and_told_nobody_heard_it(chat):
    h = chat()
    ci = h.client()
    hello(ci, "ci")
    u = ci.say("nobody here")
    got = [ci.read_until(lambda f: f.get("uuid") == u) for _ in range(2)]
    assert [f["event"] for f in got] == ["undelivered", "accepted"]
    assert got[1]["recipients"] == 0


@pytest.mark.parametrize("body,code", [
    ({"type": "hello", "nickname": "ci", "mode": "lurk"}, "bad_hello"),
    ({"type": "hello", "mode": "post"}, "bad_hello"),
    ({"type": "message", "uuid": "x", "message": "hi"}, "bad_hello"),
    ({"type": "hello", "nickname": "a b", "mode": "post"}, "nickname_invalid")])
def test_a_bad_hello_is_refused_with_a_code_and_closed(chat, body, code):
    h = chat()
    ann = h.client("ann")
    bad = h.client()
    assert bad.recv_exact(10) == PROMPT
    bad.send_raw(frame(body))
    assert bad.read()["code"] == code
    assert bad.closed()
    assert request_names(ann) == ["ann"]


def test_a_poster_is_not_a_recipient_of_the_room(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ci = h.client()
    hello(ci, "ci")
    u = ann.say("to the people")
    ben.confirm(ben.read_until(lambda f: f.get("type") == "message")["uuid"])
    receipt = ann.read_until(lambda f: f.get("uuid") == u)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 1)
