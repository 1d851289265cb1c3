"""Many rooms in one daemon (issue 25): on the wire, with an in-process server, and
through tcpchatctl on its admin socket."""

import json

import pytest
from conftest import ctl
from rawclient import RawClient, frame, untimed, wait_for


def error_of(client, request_id=None, frame_uuid=None) -> dict:
    """The error frame that answers a request or a message."""
    found = client.read_until(lambda f: f.get("event") == "error" and (
        request_id is None or f.get("id") == request_id) and (
        frame_uuid is None or f.get("uuid") == frame_uuid))
    return found


def test_a_client_that_asks_for_nothing_is_in_the_default_room_and_sees_only_it(chat):
    h = chat()
    ann = h.client("ann")  # the original client's way: a nickname, then chat
    assert ann.names["room"] == "general" and "rooms" in ann.names["features"]
    ben = h.client("ben")
    ben.enter("dev")
    ann.read_until(lambda f: f.get("event") == "join" and f["nickname"] == "ben")
    cy = h.client("cy")
    cy.enter("dev")
    ben.read_until(lambda f: f.get("event") == "join" and f["nickname"] == "cy"
                   and f["room"] == "dev")
    secret = ben.say("only for dev", room="dev")
    got = cy.read_until(lambda f: f.get("type") == "message")
    assert got["uuid"] == secret and got["room"] == "dev"
    assert got["message"] == "ben: only for dev"
    public = ben.say("hello all")  # no room: the default room
    seen = ann.read_until(lambda f: f.get("type") == "message")
    assert seen["uuid"] == public and seen["room"] == "general"  # never the dev message
    # the dev message had one recipient: cy
    assert wait_for(lambda: [e for e in h.log.named("message") if e["uuid"] == secret])
    line = [e for e in h.log.named("message") if e["uuid"] == secret][0]
    assert line["room"] == "dev" and line["recipients"] == 1


def test_joining_a_room_gives_its_join_names_topic_and_history(chat):
    h = chat()
    ann = h.client("ann")
    names = ann.enter("#Dev")  # `#` is not part of the name; the first spelling stays
    assert names["room"] == "Dev" and names["nicknames"] == ["ann"] and names["topic"] == ""
    ann.answer(ann.request("topic", room="dev", topic="release on friday"))
    ann.say("first", room="dev")
    ben = h.client("ben")
    names = ben.enter("dev")
    assert names["nicknames"] == ["ann", "ben"] and names["topic"] == "release on friday"
    assert names["history"] == 1
    assert [m["message"] for m in ben.history["messages"]] == ["ann: first"]
    assert ben.history["room"] == "Dev"
    joined = ann.read_until(lambda f: f.get("event") == "join" and f["nickname"] == "ben"
                            and f["room"] == "Dev")
    assert untimed(joined) == {"type": "system", "event": "join", "nickname": "ben",
                               "message": "ben joined!", "room": "Dev"}


def test_the_rooms_list_and_the_topic(chat):
    h = chat(rooms=("ops",))
    ann = h.client("ann")
    ann.enter("dev")
    rooms = ann.answer(ann.request("rooms"))
    assert rooms["event"] == "rooms"
    assert rooms["rooms"] == [{"room": "dev", "members": 1, "topic": ""},
                              {"room": "general", "members": 1, "topic": ""},
                              {"room": "ops", "members": 0, "topic": ""}]
    ben = h.client("ben")
    ben.enter("dev")
    ann.request("topic", room="dev", topic="ship it")
    told = ben.read_until(lambda f: f.get("event") == "topic")
    assert untimed(told) == {"type": "system", "event": "topic", "room": "dev",
                             "topic": "ship it", "nickname": "ann",
                             "message": "ann set the topic: ship it"}
    asked = ben.answer(ben.request("topic", room="#dev"))
    assert asked["topic"] == "ship it" and asked["nickname"] == "ann"
    assert h.log.named("topic")[-1] == {"room": "dev", "nick": "ann", "text": "ship it"}


def test_part_tells_the_parting_client_and_the_room(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ann.enter("dev")
    ben.enter("dev")
    request_id = ann.request("part", room="dev")
    own = ann.answer(request_id)
    assert own["event"] == "leave" and own["reason"] == "part" and own["room"] == "dev"
    other = ben.read_until(lambda f: f.get("event") == "leave")
    assert untimed(other) == {"type": "system", "event": "leave", "nickname": "ann",
                              "reason": "part", "message": "ann left!", "room": "dev"}
    ben.say("still here?", room="dev")
    assert ben.read_until(lambda f: f.get("event") == "undelivered")["recipients"] == 0
    assert {"nick": "ann", "room": "dev", "reason": "part"} in h.log.named("leave")


@pytest.mark.parametrize("cmd,fields,code", [
    ("join", {"room": "bad name"}, "room_name_invalid"),
    ("join", {"room": ""}, "room_name_invalid"),
    ("join", {"room": "x" * 33}, "room_name_invalid"),
    ("join", {"room": "general"}, "already_in_room"),
    ("join", {"room": "GENERAL"}, "already_in_room"),
    ("part", {"room": "general"}, "last_room"),
    ("part", {"room": "nowhere"}, "no_such_room"),
    ("topic", {"room": "nowhere"}, "no_such_room"),
    ("who", {"room": "nowhere"}, "no_such_room"),
    ("join", {}, "bad_json"),
    ("join", {"room": 7}, "bad_json"),
    ("teleport", {}, "unknown_command"),
])
def test_bad_room_requests_get_a_clear_error_and_lose_nothing(chat, cmd, fields, code):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    request_id = ann.request(cmd, **fields)
    error = error_of(ann, request_id)
    assert error["code"] == code, error
    ann.say("after the error")  # the connection goes on
    assert ben.read_until(lambda f: f.get("type") == "message")["message"] == \
        "ann: after the error"


def test_a_look_alike_of_a_room_is_refused_naming_the_room(chat):
    h = chat()
    ann = h.client("ann")
    ann.enter("paypal")
    ben = h.client("ben")
    request_id = ben.request("join", room="PAYPA1")  # the digit one for l
    error = error_of(ben, request_id)
    assert error["code"] == "room_name_taken" and "#paypal" in error["message"]
    request_id = ben.request("join", room="pаypal")  # Cyrillic а: refused as a mix
    assert error_of(ben, request_id)["code"] == "room_name_invalid"


def test_room_limits(chat):
    h = chat(max_rooms=2, max_rooms_per_client=2)
    ann = h.client("ann")
    ann.enter("dev")  # general and dev: the list is full
    request_id = ann.request("join", room="ops")
    assert error_of(ann, request_id)["code"] == "room_limit"
    ben = h.client("ben")
    ben.enter("dev")
    ann.request("part", room="dev")
    ben.request("part", room="dev")  # dev is empty now: it goes, and ops has room
    wait_for(lambda: len(h.hall.rooms) == 1)
    cy = h.client("cy")
    cy.enter("ops")
    request_id = cy.request("join", room="dev")  # general, ops: cy is in two already
    assert error_of(cy, request_id)["code"] in ("too_many_rooms", "room_limit")


def test_only_the_operator_makes_rooms_when_room_create_is_admin(chat):
    h = chat(room_create="admin", rooms=("ops",))
    ann = h.client("ann")
    request_id = ann.request("join", room="dev")
    error = error_of(ann, request_id)
    assert error["code"] == "no_such_room" and "operator" in error["message"]
    assert ann.enter("ops")["room"] == "ops"  # a declared room


def test_a_message_to_a_room_it_is_not_in_is_refused(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ben.enter("dev")
    sent = ann.say("sneaking in", room="dev")
    error = error_of(ann, frame_uuid=sent)
    assert error["code"] == "not_in_room"
    sent = ann.say("to nowhere", room="nowhere")
    assert error_of(ann, frame_uuid=sent)["code"] == "no_such_room"
    ben.request("part", room="general")
    sent = ben.say("no room named")  # it left the default room: it must name one
    error = error_of(ben, frame_uuid=sent)
    assert error["code"] == "not_in_room" and "name the room" in error["message"]


def test_receipts_are_per_room_and_a_part_settles_what_the_member_owed(chat):
    h = chat()
    ann, ben, cy = h.client("ann"), h.client("ben"), h.client("cy")
    for client in (ann, ben, cy):
        client.enter("dev")
    sent = ann.say("to dev", room="dev")
    ben.confirm(ben.read_until(lambda f: f.get("type") == "message")["uuid"])
    cy.read_until(lambda f: f.get("type") == "message")
    cy.request("part", room="dev")  # it never confirms: its part settles it
    receipt = ann.read_until(lambda f: f.get("type") == "confirm")
    assert receipt == {"type": "confirm", "uuid": sent, "delivered": 1, "recipients": 2}
    assert h.hall.pending_count() == 0


def test_a_member_of_several_rooms_gets_each_room_s_news_once_in_order(chat):
    """Messages interleaved over a member's three rooms: every one once, with its room,
    in the order sent; a join in a quiet room is heard beside the chat of another."""
    h = chat()
    many = h.client("many")
    for room in ("r1", "r2", "r3"):
        many.enter(room)
    senders = {}
    for room in ("r1", "r2", "r3"):
        senders[room] = h.client(f"s{room}")
        senders[room].enter(room)
        many.read_until(lambda f, room=room: f.get("event") == "join" and f["room"] == room
                        and f["nickname"] == f"s{room}")
    sent = []
    for n in range(12):  # interleaved over the three rooms, each read before the next
        room = ("r1", "r2", "r3")[n % 3]
        u = senders[room].say(f"{room} number {n}", room=room)
        got = many.read_until(lambda f: f.get("type") == "message")
        assert (got["uuid"], got["room"]) == (u, room)
        sent.append(u)
    late = h.client("late")
    late.enter("r2")  # a notice alone in r2, while r1 chats
    u = senders["r1"].say("r1 after the join", room="r1")
    wanted = {("message", "r1", u), ("system", "r2", "late")}  # (and late's join into
    heard: set = set()                                         # general, the default room)
    while not wanted <= heard:
        f = many.read_until(lambda f: f.get("type") == "message" or f.get("event") == "join")
        heard.add((f["type"], f["room"], f.get("uuid") or f["nickname"]))
    assert heard - wanted <= {("system", "general", "late")}
    many.sock.settimeout(0.5)  # nothing more: no message came twice
    extra = []
    with pytest.raises(TimeoutError):
        while True:
            extra.append(many.read())
    assert [f for f in extra if f.get("type") == "message"] == []


def test_private_messages_go_between_people_whatever_their_rooms(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ben.enter("dev")
    ben.request("part", room="general")
    sent = str(__import__("uuid").uuid4())
    ann.send_raw(frame({"type": "message", "uuid": sent, "message": "psst", "to": "ben"}))
    got = ben.read_until(lambda f: f.get("type") == "message")
    assert got["private"] is True and "room" not in got
    ben.confirm(got["uuid"])
    assert ann.read_until(lambda f: f.get("type") == "confirm")["delivered"] == 1


def test_a_rename_is_heard_in_every_room_of_the_member(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ann.enter("dev")
    ben.enter("dev")
    ann.request("nick", nickname="anna")
    heard = [ben.read_until(lambda f: f.get("event") == "nick") for _ in range(2)]
    assert sorted(f["room"] for f in heard) == ["dev", "general"]
    assert all(f["old"] == "ann" and f["nickname"] == "anna" for f in heard)


def test_an_empty_undeclared_room_goes_a_declared_one_stays(chat):
    h = chat(rooms=("ops",))
    ann = h.client("ann")
    ann.enter("dev")
    ann.enter("ops")
    ann.request("part", room="dev")
    ann.request("part", room="ops")
    rooms = ann.answer(ann.request("rooms"))["rooms"]
    assert [r["room"] for r in rooms] == ["general", "ops"]
    assert h.log.named("room_open")[-1] == {"room": "dev", "by": "ann"}
    assert h.log.named("room_close") == [{"room": "dev"}]


def test_a_quit_is_a_leave_in_every_room_with_the_room_in_each_log_line(chat):
    h = chat()
    ann, ben = h.client("ann"), h.client("ben")
    ann.enter("dev")
    ben.enter("dev")
    ann.quit()
    left = [ben.read_until(lambda f: f.get("event") == "leave") for _ in range(2)]
    assert sorted(f["room"] for f in left) == ["dev", "general"]
    wait_for(lambda: len([e for e in h.log.named("leave") if e["nick"] == "ann"]) == 2)
    assert sorted(e["room"] for e in h.log.named("leave") if e["nick"] == "ann") == \
        ["dev", "general"]
    assert {e["room"] for e in h.log.named("join")} == {"general", "dev"}


# --- tcpchatctl

def test_ctl_rooms_who_topic_say_and_stats_per_room(admin_chat):
    h, path, _ = admin_chat()
    ann, ben = h.client("ann"), h.client("ben")
    ann.enter("dev")
    rooms = ctl(path, "rooms")
    assert rooms.returncode == 0, rooms.stderr
    assert rooms.stdout.split("\n")[0].split() == ["ROOM", "MEMBERS", "TOPIC"]
    assert "#dev" in rooms.stdout and "#general" in rooms.stdout
    who = json.loads(ctl(path, "who", "#dev", "--json").stdout)
    assert who["room"] == "dev" and [c["nickname"] for c in who["clients"]] == ["ann"]
    everyone = ctl(path, "who")
    assert "ROOMS" in everyone.stdout and "#general #dev" in everyone.stdout
    topic = ctl(path, "topic", "dev", "release", "friday")
    assert topic.returncode == 0 and topic.stdout.strip() == "topic of #dev: release friday"
    told = ann.read_until(lambda f: f.get("event") == "topic")
    assert told["nickname"] == "operator" and told["topic"] == "release friday"
    assert ctl(path, "topic", "dev").stdout.strip() == "topic of #dev: release friday"
    said = ctl(path, "say", "--room", "dev", "deploy", "now")
    assert said.stdout.strip() == "announced to 1 client in #dev"
    announce = ann.read_until(lambda f: f.get("event") == "announce")
    assert announce["room"] == "dev" and announce["message"] == "deploy now"
    everyone = ctl(path, "say", "maintenance")
    assert everyone.stdout.strip() == "announced to 2 clients"
    for client in (ann, ben):  # once each, though ann is in two rooms
        got = client.read_until(lambda f: f.get("event") == "announce"
                                and f["message"] == "maintenance")
        assert "room" not in got
    ann.say("in dev", room="dev")
    stats = json.loads(ctl(path, "stats", "--json").stdout)
    assert stats["rooms"]["dev"]["members"] == 1 and stats["rooms"]["dev"]["messages"] == 1
    assert stats["rooms"]["general"]["members"] == 2
    assert "rooms:" in ctl(path, "stats").stdout


def test_ctl_kick_from_one_room_or_from_the_daemon(admin_chat):
    h, path, _ = admin_chat()
    ann, ben = h.client("ann"), h.client("ben")
    ann.enter("dev")
    ben.enter("dev")
    kicked = ctl(path, "kick", "ann", "--room", "dev", "off", "topic")
    assert kicked.returncode == 0 and kicked.stdout.strip() == "kicked ann from #dev"
    notice = ann.read_until(lambda f: f.get("event") == "kick")
    assert notice["room"] == "dev" and notice["message"] == "You were kicked from #dev: off topic"
    seen = ben.read_until(lambda f: f.get("event") == "leave" and f["room"] == "dev")
    assert seen["reason"] == "kicked"
    ann.say("still connected")  # in the default room still
    assert ben.read_until(lambda f: f.get("type") == "message")["message"] == \
        "ann: still connected"
    again = ctl(path, "kick", "ann", "--room", "dev")
    assert again.returncode == 1 and "not in #dev" in again.stderr
    nowhere = ctl(path, "kick", "ann", "--room", "nowhere")
    assert nowhere.returncode == 1 and "no such room" in nowhere.stderr
    last = ctl(path, "kick", "ann", "--room", "general")  # its last room: out of the daemon
    assert last.returncode == 0
    assert ann.read_until(lambda f: f.get("event") == "kick")["message"] == \
        "You were kicked: kicked by an operator"
    assert ann.closed()


@pytest.mark.parametrize("args,words", [
    (("who", "nowhere"), "no such room: #nowhere"),
    (("say", "--room", "nowhere", "hi"), "no such room: #nowhere"),
    (("topic", "nowhere", "x"), "no such room: #nowhere"),
])
def test_ctl_names_an_unknown_room(admin_chat, args, words):
    _, path, _ = admin_chat()
    result = ctl(path, *args)
    assert result.returncode == 1 and words in result.stderr, result.stderr


# --- tcpchat-client: rooms in the terminal, the pipe and post modes

def test_the_terminal_joins_switches_and_counts_unread(daemon_factory):
    from test_client import interactive
    from conftest import status_port
    port = status_port(daemon_factory())
    ben = RawClient(port)
    ben.join("ben")
    term = interactive(port, "ann")
    try:
        term.expect(r"\[#general\] ann>")
        term.type("/join dev\r")
        term.expect(r"now talking in #dev")
        term.expect(r"\[#dev\] ann>")
        ben.enter("dev")
        term.type("hello dev\r")  # goes to dev: the room the prompt shows
        got = ben.read_until(lambda f: f.get("type") == "message")
        assert got["room"] == "dev" and got["message"] == "ann: hello dev"
        ben.say("over in general")  # another room: marked with it, counted unread
        term.expect(r"#general ben: over in general")
        term.expect(r"#general \(1\)")
        term.type("/room general\r")
        term.expect(r"\[#general\] ann>")
        term.type("/topic coffee at 3\r")
        told = ben.read_until(lambda f: f.get("event") == "topic")
        assert told["room"] == "general" and told["topic"] == "coffee at 3"
        term.type("/rooms\r")
        term.expect(r"\* #dev  2 members")
        term.type("/part dev\r")
        left = ben.read_until(lambda f: f.get("event") == "leave")
        assert left["room"] == "dev" and left["reason"] == "part"
        term.expect(r"#dev ann left!")  # its own part's answer, shown (then it is out)
        term.type("/room dev\r")
        term.expect(r"you are not in #dev: /join it first")
    finally:
        term.close()


def test_pipe_and_post_modes_talk_in_the_room_named(daemon_factory):
    from test_daemon import run_client
    from conftest import status_port
    port = status_port(daemon_factory())
    ben = RawClient(port)
    ben.join("ben")
    ben.enter("dev")
    seen = []

    def read_and_confirm():
        while len(seen) < 2:
            f = ben.read()
            if f.get("type") == "message":
                seen.append(f)
                ben.confirm(f["uuid"])
    import threading
    reader = threading.Thread(target=read_and_confirm, daemon=True)
    reader.start()
    piped = run_client(port, "from the pipe\n", "--nick", "bot", "--room", "#dev")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "delivered to 1 of 1: from the pipe\n"
    posted = run_client(port, "", "--post", "--nick", "ci", "--room", "dev", "build green")
    assert posted.returncode == 0, posted.stderr
    reader.join(10)
    assert [(f["room"], f["message"]) for f in seen] == [
        ("dev", "bot: from the pipe"), ("dev", "ci: build green")]
    refused = run_client(port, "x\n", "--nick", "bot2", "--room", "bad name")
    assert refused.returncode == 1
    assert "room name may not contain spaces" in refused.stderr


def test_a_reconnected_client_is_back_in_the_rooms_it_was_in(chat):
    """What tcpchat-client does after a lost connection (chatlink.back_in): the same
    rooms, and out of the default room if it had left it."""
    import argparse
    from tcpchatd.cli.chatlink import back_in, connect_and_join
    h = chat()
    args = argparse.Namespace(host="127.0.0.1", port=h.port, timeout=5.0, tls_context=None)
    conn = connect_and_join(args, "ann")
    conn.enter("dev")
    conn.enter("ops")
    told = []
    again = connect_and_join(args, "ann2")
    back_in(again, ["dev", "ops", "gone"], told.append)
    # `gone` is made again (anyone may make rooms); general was not among them: parted
    wait_for(lambda: h.hall.rooms_of(h.hall.find("ann2")) == ["dev", "ops", "gone"])
    strict = chat(room_create="admin", rooms=("dev",))
    args.port = strict.port
    third = connect_and_join(args, "cy")
    back_in(third, ["dev", "gone"], told.append)
    assert told == ["#gone: no room #gone (rooms here are made by the operator)"]
    wait_for(lambda: strict.hall.rooms_of(strict.hall.find("cy")) == ["dev"])
    for c in (conn, again, third):
        c.close()


def test_a_reload_declares_rooms_and_undeclares_them(chat):
    """The config's rooms follow a reload: a new one exists at once, one no longer
    declared goes when nobody is in it (a room someone is in stays until it empties)."""
    from tcpchatd.service.config import Config
    h = chat(rooms=("ops", "old"))
    ann = h.client("ann")
    ann.enter("old")
    h.hall.config = Config(listen=("127.0.0.1:0",), rooms=("ops", "new"))
    names = [r["room"] for r in h.hall.room_list()]
    assert names == ["general", "new", "old", "ops"]  # old: ann is in it
    ann.answer(ann.request("part", room="old"))
    assert [r["room"] for r in h.hall.room_list()] == ["general", "new", "ops"]
    h.hall.config = Config(listen=("127.0.0.1:0",))
    assert [r["room"] for r in h.hall.room_list()] == ["general"]


def test_a_hello_may_name_the_first_room_instead_of_the_default_room(chat):
    h = chat(room_create="anyone")
    ann = h.client("ann")
    ben = RawClient(h.port)
    h.clients.append(ben)
    joined = ben.hello(nickname="ben", room="#Dev")
    assert joined["event"] == "join" and joined["room"] == "Dev"
    names = ben.read()
    assert names["event"] == "names" and names["room"] == "Dev" and names["nicknames"] == ["ben"]
    public = ann.say("in general")
    dev = ben.say("in dev", room="dev")
    cy = h.client("cy")  # ann's message never reached ben, who is not in general
    cy.enter("dev")
    got = ben.read_until(lambda f: f.get("type") == "message" or f.get("event") == "join"
                         and f.get("nickname") == "cy")
    assert got["event"] == "join" and got["room"] == "Dev"
    assert [e["uuid"] for e in h.log.named("message")] == [public, dev]
    line = [e for e in h.log.named("join") if e["nick"] == "ben"][0]
    assert line["room"] == "Dev"


@pytest.mark.parametrize("room,settings,code", [
    ("two words", {}, "room_name_invalid"),
    ("ops", {"room_create": "admin"}, "no_such_room"),
])
def test_a_hello_s_room_that_cannot_be_joined_is_refused_and_closed(chat, room, settings,
                                                                   code):
    h = chat(**settings)
    client = RawClient(h.port)
    h.clients.append(client)
    assert client.hello(nickname="ben", room=room)["code"] == code
    assert client.closed()
    assert len(h.hall) == 0
