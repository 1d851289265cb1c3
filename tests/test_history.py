"""History that lasts (issue 27): every public message in SQLite, scrollback in pages,
search through FTS5; on the wire with an in-process server, and through the real daemon
(a restart, kill -9, tcpchatctl history and forget, a database that is broken)."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import ctl, status_port
from rawclient import RawClient, wait_for


def rows(folder: str, where: str = "1", args=()) -> list[tuple]:
    """What the database holds, read as another process would (WAL: a reader sees every
    committed transaction)."""
    path = os.path.join(folder, "history.sqlite3")
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT uuid, room, sender, text, kind FROM messages WHERE {where}"
                            " ORDER BY id", args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def say_many(client: RawClient, count: int, room: str | None = None, prefix="line") -> list:
    return [client.say(f"{prefix} {n}", room=room) for n in range(count)]


def answer(client: RawClient, cmd: str, **fields) -> dict:
    return client.answer(client.request(cmd, **fields))


def test_scrollback_pages_back_through_the_room_oldest_first(chat, short_tmp):
    h = chat(history_dir=short_tmp, history_page=10)
    ann, ben = h.client("ann"), h.client("ben")
    sent = say_many(ann, 25)
    assert wait_for(lambda: len(rows(short_tmp)) == 25)
    page = answer(ben, "history", room="general", limit=10)
    assert page["event"] == "history" and page["room"] == "general" and page["more"] is True
    assert [m["uuid"] for m in page["messages"]] == sent[15:]
    assert page["messages"][0]["message"] == "ann: line 15"
    assert page["messages"][0]["nickname"] == "ann" and page["messages"][0]["kind"] == "message"
    older = answer(ben, "history", room="general", before=sent[15], limit=100)  # capped
    assert [m["uuid"] for m in older["messages"]] == sent[5:15] and older["more"] is True
    oldest = answer(ben, "history", before=sent[5])  # no room: the default room
    assert [m["uuid"] for m in oldest["messages"]] == sent[:5] and oldest["more"] is False
    by_time = answer(ben, "history", before="2000-01-01T00:00:00Z")
    assert by_time["messages"] == [] and by_time["more"] is False


def test_a_page_is_bounded_like_the_history_frame(chat, short_tmp):
    h = chat(history_dir=short_tmp, history_bytes=2000, max_text=4000)
    ann, ben = h.client("ann"), h.client("ben")
    sent = [ann.say("x" * 900) for _ in range(5)]
    assert wait_for(lambda: len(rows(short_tmp)) == 5)
    page = answer(ben, "history", limit=5)
    assert len(json.dumps(page)) <= 2100
    assert [m["uuid"] for m in page["messages"]] == sent[-len(page["messages"]):]
    assert page["more"] is True and 1 <= len(page["messages"]) < 5


def test_search_finds_words_and_takes_no_operator_it_was_not_asked_for(chat, short_tmp):
    h = chat(history_dir=short_tmp)
    ann, ben = h.client("ann"), h.client("ben")
    ben.enter("dev")
    ann.enter("dev")
    first = ann.say("the release is on friday", room="dev")
    ann.say("lunch at noon", room="dev")
    second = ben.say("friday release notes are ready", room="dev")
    ann.say("friday in general")
    assert wait_for(lambda: len(rows(short_tmp)) == 4)
    found = answer(ben, "search", room="dev", words="release friday")
    assert found["event"] == "search" and found["room"] == "dev"
    assert [m["uuid"] for m in found["messages"]] == [second, first]  # newest first
    assert found["messages"][0]["message"] == "ben: friday release notes are ready"
    # what FTS5 would read as operators is searched as words
    for words in ('friday OR lunch', 'NEAR(friday lunch)', 'fri*', 'text:friday', '"'):
        got = answer(ben, "search", room="dev", words=words)
        assert got["event"] == "search", (words, got)
    assert answer(ben, "search", room="dev", words="friday OR lunch")["messages"] == []
    asked = answer(ben, "search", room="dev", words="friday OR lunch", syntax="fts5")
    assert len(asked["messages"]) == 3
    bad = answer(ben, "search", room="dev", words="NEAR(", syntax="fts5")
    assert bad["code"] == "history_failed"
    assert answer(ben, "search", room="dev", words="friday", limit=1)["messages"][0]["uuid"] \
        == second


def test_history_requests_are_for_members_of_the_room(chat, short_tmp):
    h = chat(history_dir=short_tmp)
    ann = h.client("ann")
    ann.enter("dev")
    ben = h.client("ben")
    assert answer(ben, "history", room="dev")["code"] == "not_in_room"
    assert answer(ben, "search", room="dev", words="x")["code"] == "not_in_room"
    assert answer(ben, "history", room="nowhere")["code"] == "no_such_room"
    assert answer(ben, "search", room="dev")["code"] == "bad_json"  # no words
    assert answer(ben, "history", limit=0)["code"] == "bad_json"
    assert answer(ben, "history", limit="ten")["code"] == "bad_json"


def test_without_a_store_history_is_off(chat):
    h = chat()
    ann = h.client("ann")
    assert answer(ann, "history")["code"] == "history_off"


def test_private_messages_are_kept_only_when_asked(chat, short_tmp):
    plain = os.path.join(short_tmp, "plain")
    h = chat(history_dir=plain)
    ann, ben = h.client("ann"), h.client("ben")
    secret = ann.send_raw(b"") or ann.say("psst")  # a public one, to wait on
    private = "11111111-2222-4333-8444-555555555555"
    from rawclient import frame
    ann.send_raw(frame({"type": "message", "uuid": private, "message": "ann: just you",
                        "to": "ben"}))
    ben.read_until(lambda f: f.get("uuid") == private)
    assert wait_for(lambda: rows(plain))
    time.sleep(0.2)
    assert [r[0] for r in rows(plain)] == [secret]
    kept = os.path.join(short_tmp, "kept")
    h2 = chat(history_dir=kept, history_private=True)
    cy, dee = h2.client("cy"), h2.client("dee")
    cy.send_raw(frame({"type": "message", "uuid": private, "message": "cy: just you",
                       "to": "dee"}))
    dee.read_until(lambda f: f.get("uuid") == private)
    assert wait_for(lambda: rows(kept)) and rows(kept)[0][:2] == (private, None)


def test_retention_keeps_history_max_per_room(chat, short_tmp):
    h = chat(history_dir=short_tmp, history_max=5)
    ann, ben = h.client("ann"), h.client("ben")
    sent = say_many(ann, 12)
    assert wait_for(lambda: len(rows(short_tmp)) == 12)
    assert h.hall.history_store.expire() == 7
    assert [r[0] for r in rows(short_tmp)] == sent[7:]
    assert h.log.named("history_expired") == [{"count": 7}]
    del ben



def test_a_batch_of_many_messages_is_written_once_each_in_order_and_found(short_tmp):
    """One transaction of 253 messages (more than one INSERT statement's rows), three of
    them twice (as a node's replay brings them): each kept once, in order, searchable."""
    from conftest import RecordingLog
    from tcpchatd.store.history import ROWS_PER_INSERT, HistoryStore, Kept
    kept = [Kept(f"00000000-0000-4000-8000-{n:012d}", "general", "general", "ann", "ann",
                 None, 1_000_000.0 + n / 8, f"word{n} common") for n in range(250)]
    assert len(kept) > 2 * ROWS_PER_INSERT
    store = HistoryStore(short_tmp, RecordingLog())
    for item in kept + kept[:3]:  # queued before the writer starts: one batch
        store.put(item)
    store.open()
    try:
        assert wait_for(lambda: len(rows(short_tmp)) == 250)
        assert [r[0] for r in rows(short_tmp)] == [k.uuid for k in kept]
        assert store.written == 250
        found = store.search("general", "word249", 10).result(5)
        assert found == [kept[249]]  # every column read back as it was put, the time too
        assert len(store.search("general", "common", 1000).result(5)) == 250
    finally:
        store.close()

# --- the real daemon

def start(daemon_factory, state, *args):
    d = daemon_factory("--state-dir", state, *args)
    return d, status_port(d), d.proc.args[d.proc.args.index("--admin-socket") + 1]


def test_what_was_written_survives_kill_9_and_a_restart(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "st")
    d, port, _ = start(daemon_factory, state)
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    sent = say_many(ann, 40)
    for frame_uuid in sent:
        ben.read_until(lambda f: f.get("uuid") == frame_uuid)
    # the writer commits within WRITE_WAIT: the window a kill -9 can lose
    assert wait_for(lambda: len(rows(state)) == 40, timeout=5)
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait(5)
    d2, port2, _ = start(daemon_factory, state)
    cy = RawClient(port2)
    cy.join("cy")
    page = answer(cy, "history", limit=100)
    assert [m["uuid"] for m in page["messages"]] == sent
    d2.stop()
    d3, port3, _ = start(daemon_factory, state)  # and a clean stop: the same, once each
    dee = RawClient(port3)
    dee.join("dee")
    assert len(answer(dee, "history", limit=100)["messages"]) == 40
    assert len(rows(state)) == 40


def test_tcpchatctl_history_and_forget(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "st")
    d, port, admin = start(daemon_factory, state)
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    ann.say("hello from ann")
    ben.say("hello from ben")
    assert wait_for(lambda: len(rows(state)) == 2)
    shown = ctl(admin, "history", "general")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith("ann: hello from ann") and lines[1].endswith("ben: hello from ben")
    as_json = json.loads(ctl(admin, "--json", "history", "#general", "--since",
                             "2000-01-01T00:00:00Z").stdout)
    assert [m["nickname"] for m in as_json["messages"]] == ["ann", "ben"]
    assert json.loads(ctl(admin, "--json", "history", "general", "--since",
                          "2999-01-01T00:00:00Z").stdout)["messages"] == []
    bad = ctl(admin, "history", "general", "--since", "yesterday")
    assert bad.returncode == 1 and "--since" in bad.stderr
    assert ctl(admin, "history", "nowhere").returncode == 1
    forgot = ctl(admin, "forget", "ANN")
    assert forgot.returncode == 0 and forgot.stdout.strip() == "forgot 1 message of ANN"
    assert [r[2] for r in rows(state)] == ["ben"]
    assert answer(ben, "search", words="hello")["messages"][0]["nickname"] == "ben"
    assert len(answer(ben, "search", words="hello")["messages"]) == 1  # gone from search
    assert "forget who=ANN count=1 uid=" in d.stderr()


def test_a_broken_database_leaves_the_chat_running(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "st")
    os.makedirs(state)
    with open(os.path.join(state, "history.sqlite3"), "wb") as fh:
        fh.write(b"this is not a database" * 100)
    d, port, admin = start(daemon_factory, state)
    assert "the chat runs without lasting history" in d.stderr()
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    sent = ann.say("still chatting")
    assert ben.read_until(lambda f: f.get("uuid") == sent)
    assert answer(ben, "history")["code"] == "history_off"
    stats = json.loads(ctl(admin, "--json", "stats").stdout)
    assert stats["history"] == "off"


def test_a_locked_database_is_logged_and_counted_and_nothing_else_is_lost(daemon_factory,
                                                                          short_tmp):
    state = os.path.join(short_tmp, "st")
    d, port, admin = start(daemon_factory, state)
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    ann.say("before the lock")
    assert wait_for(lambda: len(rows(state)) == 1)
    holder = sqlite3.connect(os.path.join(state, "history.sqlite3"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the database
    try:
        locked = ann.say("during the lock")
        assert ben.read_until(lambda f: f.get("uuid") == locked)  # the chat ran on
        wait_for(lambda: "history_error op=write" in d.stderr(), timeout=10)
        stats = json.loads(ctl(admin, "--json", "stats").stdout)
        assert stats["history_errors"] >= 1 and stats["history_written"] == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    after = ann.say("after the lock")
    assert ben.read_until(lambda f: f.get("uuid") == after)
    assert wait_for(lambda: [r[3] for r in rows(state)] == ["before the lock",
                                                            "after the lock"])


def test_the_upgrade_hands_the_writer_s_queue_over_and_writes_nothing_twice(short_tmp):
    from test_upgrade import start as start_upgradable
    d, admin, port = start_upgradable(short_tmp)
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    sent = say_many(ann, 30, prefix="before")
    for frame_uuid in sent:
        ben.read_until(lambda f: f.get("uuid") == frame_uuid)
    assert ctl(admin, "upgrade").returncode == 0
    sent += say_many(ann, 30, prefix="after")
    for frame_uuid in sent[30:]:
        ben.read_until(lambda f: f.get("uuid") == frame_uuid)
    state = os.path.join(short_tmp, "st")
    assert wait_for(lambda: len(rows(state)) == 60)
    assert [r[0] for r in rows(state)] == sent
    page = answer(ben, "history", limit=100)
    assert [m["uuid"] for m in page["messages"]] == sent
    assert d.stop() == 0


@pytest.mark.parametrize("words", ["release", "Release notes"])
def test_search_from_the_client_in_a_pipe(daemon_factory, short_tmp, words):
    state = os.path.join(short_tmp, "st")
    d, port, _ = start(daemon_factory, state)
    ann = RawClient(port)
    ann.join("ann")
    ann.say("release notes are out")
    assert wait_for(lambda: rows(state))
    import sys
    result = subprocess.run(
        [sys.executable, "-m", "tcpchatd.cli.client", "--port", str(port), "--nick", "ben",
         "--search", words], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ann: release notes are out" in result.stdout


def test_the_terminal_pages_back_and_searches(daemon_factory, short_tmp):
    from test_client import interactive
    state = os.path.join(short_tmp, "st")
    d, port, _ = start(daemon_factory, state, "--history", "3")
    ann = RawClient(port)
    ann.join("ann")
    for n in range(8):
        ann.say(f"note {n}" + (" about friday" if n == 2 else ""))
    assert wait_for(lambda: len(rows(state)) == 8)
    term = interactive(port, "zed")
    try:
        term.expect(r"-- 3 earlier messages --")  # the join's: the last 3, in memory
        term.expect(r"ann: note 7")
        term.type("\x1b[5~")  # Page Up: the page before the oldest shown (note 5)
        term.expect(r"-- 5 earlier messages --")
        term.expect(r"ann: note 0")
        term.expect(r"the beginning of the room's history")
        term.type("/search friday\r")
        term.expect(r"-- 1 match in #general --")
        term.expect(r"ann: note 2 about friday")
        term.type("/history 2\r")  # before the oldest shown now: nothing older
        term.expect(r"-- 0 earlier messages --")
    finally:
        term.close()


def test_a_full_disk_is_counted_and_the_chat_runs_on(daemon_factory, short_tmp):
    """RLIMIT_FSIZE stands for a full disk: the database's writes fail with EFBIG (SQLite:
    `database or disk is full`), which the daemon counts; every message is delivered."""
    import resource
    from conftest import DaemonProcess
    state = os.path.join(short_tmp, "st")
    limit = 300 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    admin = os.path.join(short_tmp, "full.sock")
    d = DaemonProcess(short_tmp, ["--listen", "127.0.0.1:0", "--admin-socket", admin,
                                  "--state-dir", state, "--syslog-address",
                                  os.path.join(short_tmp, "no-syslog"), "--flood-rate", "0",
                                  "--max-text", "8192"], preexec=small_files)
    try:
        d.ready()
        port = status_port(d)
        ann, ben = RawClient(port), RawClient(port)
        ann.join("ann")
        ben.join("ben")
        for n in range(120):
            frame_uuid = ann.say(f"{n} " + "x" * 4000)
            ben.read_until(lambda f: f.get("uuid") == frame_uuid)  # each one delivered
        def counted():
            stats = json.loads(ctl(admin, "--json", "stats").stdout)
            return stats if stats["history_errors"] else None
        stats = wait_for(counted, timeout=10)
        assert 0 < stats["history_written"] < 120
        assert d.proc.poll() is None  # still serving
    finally:
        d.kill()
