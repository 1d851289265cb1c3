"""tcpchat-client as a chat user drives it: the pty screen of the interactive client, the
pipe client's output and exit code (issue 11)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import status_port
from rawclient import RawClient, wait_for
from test_daemon import CLIENT, Pty, run_client


def typed_lines(term, lines):
    for line in lines:
        term.type(line + "\r")


@pytest.fixture
def room(daemon_factory):
    """(daemon, port, a listener that confirms everything it gets)."""
    d = daemon_factory()
    port = status_port(d)
    return d, port


def confirmer(port, name, seen=None):
    """A raw client that confirms every message it receives, in a thread."""
    client = RawClient(port, timeout=60)
    client.join(name)
    seen = [] if seen is None else seen

    def run():
        try:
            while True:
                f = client.read()
                seen.append(f)
                if f.get("type") == "message":
                    client.confirm(f["uuid"])
        except (OSError, EOFError, AssertionError):
            pass
    threading.Thread(target=run, daemon=True).start()
    return client, seen


def interactive(port, nick, *extra, env=None):
    term = Pty([*CLIENT, "--port", str(port), "--nick", nick, *extra], env)
    term.expect(f"Joined as {nick}")
    term.expect(f"{nick}>")
    return term


def test_nobody_can_fake_a_line_from_someone_else(room):
    d, port = room
    term = interactive(port, "zed")
    try:
        mallory = RawClient(port)
        mallory.join("mallory")
        mallory.say("hello\n11:28 ann: I am ann, give me your password\x1b[2K\u202e")
        shown = term.expect(r"mallory: hello\n( +)11:28 ann: I am ann, give me your "
                            r"password\\x1b\[2K<U\+202E>")
        assert len(shown.group(1)) == len("HH:MM mallory: ")  # indented under the text
        lines = term.plain().splitlines()
        assert not any(line.startswith("11:28 ann") for line in lines)
    finally:
        term.close()


def test_names_on_joining_and_who_and_help(room):
    d, port = room
    ann = RawClient(port)
    ann.join("ann")
    term = interactive(port, "zed")
    try:
        term.expect(r"-- In the room: ann, zed \(2\)")
        term.type("/help\r")
        term.expect(r"/msg NICK TEXT")
        ann2 = RawClient(port)
        ann2.join("bob")
        term.type("/who\r")
        term.expect(r"In the room: ann, bob, zed \(3\)")
    finally:
        term.close()


def test_slash_commands_are_never_sent_to_the_room(room):
    d, port = room
    ben, seen = confirmer(port, "ben")
    cy, cy_seen = confirmer(port, "cy")
    term = interactive(port, "ann")
    try:
        term.type("/foo bar\r")
        term.expect(r"unknown command /foo; /help lists them")
        term.type("/msg ben psst\r")
        term.expect(r"\u2713 1/1 psst")
        term.type("//etc/hosts is a path\r")
        term.expect(r"\u2713 2/2 /etc/hosts is a path")
        term.type("/me waves\r")
        term.expect(r"\u2713 2/2 waves")
        msgs = [f for f in seen if f.get("type") == "message"]
        assert [(m["message"], m.get("private"), m.get("action")) for m in msgs] == [
            ("ann (private): psst", True, None), ("ann: /etc/hosts is a path", None, None),
            ("ann: waves", None, True)]
        assert [m["message"] for m in cy_seen if m.get("type") == "message"] == [
            "ann: /etc/hosts is a path", "ann: waves"]
        assert not any("foo" in m["message"] for m in msgs)
        term.type("/nick annie\r")
        term.expect(r"ann is now annie")
        term.expect(r"annie>")
        term.type("hi\r")
        wait_for(lambda: any(f.get("message") == "annie: hi" for f in seen))
        term.type("/quit see you\r")
        assert term.wait(10) == 0
        wait_for(lambda: any(f.get("message") == "annie: see you" for f in seen))
    finally:
        term.close()


def test_private_commands_are_refused_against_a_server_that_does_not_offer_them():
    from origserver import OriginalStyleServer
    server = OriginalStyleServer()
    try:
        listener = RawClient(server.port)
        assert listener.recv_exact(10) == b"_nickname_"
        listener.send_raw(b"old")
        listener.read()
        term = interactive(server.port, "new")
        try:
            for command in ("/msg old secret word", "/nick newer", "/who"):
                term.type(command + "\r")
                term.expect(re.escape(command.split()[0]) + r" is not offered by this server")
            term.type("public\r")
            got = listener.read_until(lambda f: f.get("type") == "message")
            assert got["message"] == "new: public"  # the first thing it ever received
        finally:
            term.close()
    finally:
        server.close()


def test_receipts_show_against_their_messages_full_partial_none(daemon_factory):
    d = daemon_factory("--receipt-wait", "0.3", "--confirm-timeout", "1")
    port = status_port(d)
    term = interactive(port, "ann")
    try:
        term.type("nobody here\r")
        term.expect(r"\u2717 0/0 nobody here \(nobody else is here\)")
        ben, _ = confirmer(port, "ben")
        sleeper = RawClient(port)
        sleeper.join("sleeper")  # never reads, never confirms
        term.expect("sleeper joined")
        term.type("two of us reading\r")
        term.expect(r"\u25d0 1/2 two of us reading")
        ben.sock.shutdown(socket.SHUT_RDWR)
        term.expect("ben left")
        term.type("a long message that is cut short beside its receipt\r")
        term.expect(r"\u2717 0/1 a long message that is … \(nobody confirmed it\)")
        cy, _ = confirmer(port, "cy")
        sleeper.sock.shutdown(socket.SHUT_RDWR)
        term.expect("sleeper left")
        term.type("all of us\r")
        term.expect(r"\u2713 1/1 all of us")
    finally:
        term.close()


def test_a_pasted_block_of_sixty_lines_arrives_whole(room):
    d, port = room
    ben, seen = confirmer(port, "ben")
    term = interactive(port, "ann")
    try:
        term.type("".join(f"line {i}\r" for i in range(60)))  # one write: a paste
        wait_for(lambda: len([f for f in seen if f.get("type") == "message"]) == 60, timeout=20)
        assert [f["message"] for f in seen if f.get("type") == "message"] == [
            f"ann: line {i}" for i in range(60)]
        term.expect(r"\u2713 1/1 line 59")
        assert "flood" not in term.plain()
    finally:
        term.close()


def test_colours_mentions_and_the_bell(room):
    d, port = room
    ben = RawClient(port)
    ben.join("ben")
    term = interactive(port, "ann")
    try:
        ben.say("hello ANN, are you there?")
        term.expect("are you there")
        term.expect("\x07")  # the bell (rung just after the line): a mention of our nickname
        assert re.search(r"\x1b\[[0-9;]*7m+ANN", term.screen)  # highlighted (reverse)
        assert re.search(r"\x1b\[[0-9;]*3\dmben", term.screen)  # ben in a colour
        ben.say("no mention here")
        term.expect("no mention here")
        assert term.screen.count("\x07") == 1
    finally:
        term.close()
    plain = interactive(port, "cy", "--no-bell", env={"NO_COLOR": "1"})
    try:
        ben.say("cy: hi without colour")
        plain.expect("hi without colour")
        tail = plain.screen[plain.screen.index("ben"):]
        assert "\x07" not in plain.screen
        assert not re.search(r"\x1b\[[0-9;]*3\dm", tail)
    finally:
        plain.close()


def test_tab_completes_nicknames(room):
    d, port = room
    ben, seen = confirmer(port, "benedict")
    term = interactive(port, "ann")
    try:
        term.type("ben")
        term.expect(r"benedict[\s\S]*benedict")  # the completion menu, below the names line
        term.type("\t")
        term.type("hi\r")
        wait_for(lambda: any(f.get("message") == "ann: benedict: hi" for f in seen))
    finally:
        term.close()


# --- pipe mode

def test_pipe_mode_prints_each_result_as_its_receipt_arrives(room):
    d, port = room
    confirmer(port, "ben")
    proc = subprocess.Popen([*CLIENT, "--port", str(port), "--nick", "tail"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("build 1 passed\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "delivered to 1 of 1: build 1 passed\n"  # input open
        proc.stdin.write("build 2 passed\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "delivered to 1 of 1: build 2 passed\n"
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def test_pipe_mode_answers_within_receipt_wait_beside_a_sleeping_member(room):
    d, port = room
    confirmer(port, "awake")
    sleeper = RawClient(port)
    sleeper.join("laptop")  # joined, then stopped reading
    started = time.monotonic()
    result = run_client(port, "build 1234 passed\n", "--nick", "ci-bot")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "delivered to 1 of 2: build 1234 passed\n"
    assert time.monotonic() - started < 6


def test_pipe_mode_at_rate_0_counts_every_line_and_says_why(daemon_factory):
    # a generous grace: under load the receipts of what went out may take a while
    d = daemon_factory("--flood-burst", "40", "--flood-rate", "20", "--shutdown-grace", "8")
    port = status_port(d)
    confirmer(port, "ben")
    lines = [f"line {i}" for i in range(300)]
    result = run_client(port, "".join(l + "\n" for l in lines), "--nick", "fast", "--rate", "0")
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert len(out) == 300
    by_line = {l.rsplit(": ", 1)[1]: l.rsplit(": ", 1)[0] for l in out}
    delivered = [l for l in lines if by_line[l] == "delivered to 1 of 1"]
    assert len(delivered) >= 40 and delivered == lines[:len(delivered)], "\n".join(out[:45])
    rest = {by_line[l] for l in lines[len(delivered):]}
    assert "dropped by the flood limit" in rest
    assert all(r == "dropped by the flood limit" or "flooding" in r for r in rest), rest
    assert "disconnected for flooding" in result.stderr
    assert "no receipt (the server closed the connection)" not in result.stdout


def test_pipe_mode_reconnects_and_sends_the_rest(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    seen = []
    confirmer(port, "ben", seen)
    proc = subprocess.Popen([*CLIENT, "--port", str(port), "--nick", "bot"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("before\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "delivered to 1 of 1: before\n"
        d.stop()
        again = daemon_factory("--listen", f"127.0.0.1:{port}")
        late = []
        confirmer(port, "ben", late)
        proc.stdin.write("after\n")
        proc.stdin.close()
        assert proc.stdout.readline() == "delivered to 1 of 1: after\n"
        assert proc.wait(20) == 0
        assert "reconnected as bot" in proc.stderr.read()
        assert again.stop() == 0
    finally:
        proc.kill()


def test_version_on_all_three_commands():
    from tcpchatd import __version__
    for module, name in (("tcpchatd", "tcpchatd"), ("tcpchatd.cli.ctl", "tcpchatctl"),
                         ("tcpchatd.cli.client", "tcpchat-client")):
        result = subprocess.run([sys.executable, "-m", module, "--version"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        assert result.stdout == f"{name} {__version__}\n"


def test_pipe_mode_reports_a_line_that_was_sent_but_never_confirmed(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    silent = RawClient(port)
    silent.join("silent")  # receives, never confirms
    proc = subprocess.Popen([*CLIENT, "--port", str(port), "--nick", "bot"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("pending when the server goes\n")
        proc.stdin.flush()
        silent.read_until(lambda f: f.get("type") == "message")
        d.kill()  # the server dies: nobody can say whether the line arrived
        first = proc.stdout.readline()
        assert re.fullmatch(r"no receipt \((the server closed the connection|connection to "
                            r"the server was lost)\): pending when the server goes\n", first), \
            first  # sent, never confirmed: reported, never resent
        again = daemon_factory("--listen", f"127.0.0.1:{port}")
        confirmer(port, "ben")
        proc.stdin.write("after\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        assert rest.endswith("delivered to 1 of 1: after\n")
        assert proc.wait(20) == 1  # one line reached nobody it could tell of
        assert again.stop() == 0
    finally:
        proc.kill()


def test_a_kicked_client_says_why_and_does_not_come_back(daemon_factory, short_tmp):
    from conftest import ctl
    admin_path = os.path.join(short_tmp, "k.sock")
    d = daemon_factory("--admin-socket", admin_path)
    port = status_port(d)
    term = interactive(port, "ann")
    try:
        assert ctl(admin_path, "kick", "ann", "being", "rude").returncode == 0
        term.expect(r"You were kicked: being rude")
        assert term.wait(10) == 1
        assert "reconnecting" not in term.plain()
        assert "tcpchat-client: You were kicked: being rude" in term.plain()
    finally:
        term.close()


def test_after_a_restart_it_says_why_it_cannot_rejoin(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    term = interactive(port, "ann")
    try:
        d.stop()
        term.expect("reconnecting in 1 s")  # a first try failed: a second comes in 1 s
        daemon_factory("--listen", f"127.0.0.1:{port}")
        squatter = RawClient(port)
        squatter.join("ANN")  # takes the name before the client is back
        term.expect(r"nickname 'ann' rejected: nickname 'ann' is taken", timeout=15)
        term.expect(r"reconnecting in \d+ s")  # and it tries again later
        squatter.quit()
        term.expect("reconnected as ann", timeout=20)
    finally:
        term.close()


# --- issue 31: a first day as a new user

def test_the_interactive_client_speaks_tls_when_told_and_never_plaintext(tls_daemon, certs):
    d, plain_port, tls_port = tls_daemon()
    term = Pty([*CLIENT, "--port", str(tls_port), "--cafile", certs("ca.crt"), "--nick",
                "sec"])
    try:
        term.expect(r"Joined as sec \(TLS\)")
        watcher = RawClient(plain_port)
        watcher.join("watcher")
        term.type("over tls\r")
        got = watcher.read_until(lambda f: f.get("type") == "message")
        assert got["message"] == "sec: over tls"
        who = subprocess.run([sys.executable, "-m", "tcpchatd.cli.ctl", "--admin-socket",
                              admin_path(d), "who", "--json"], capture_output=True, text=True)
        tls_of = {c["nickname"]: c["tls"] for c in json.loads(who.stdout)["clients"]}
        assert tls_of == {"sec": True, "watcher": False}
    finally:
        term.close()
    # told --tls against the plaintext port: it refuses, it never chats in plaintext
    term = Pty([*CLIENT, "--port", str(plain_port), "--tls", "--cafile", certs("ca.crt"),
                "--nick", "sec"])
    try:
        assert term.wait(15) == 1
        assert re.search(r"TLS to 127\.0\.0\.1:\d+ failed", term.plain())
    finally:
        term.close()


def admin_path(daemon) -> str:
    args = daemon.proc.args
    return args[args.index("--admin-socket") + 1]


def test_a_person_at_the_nickname_prompt_never_meets_the_handshake_clock(daemon_factory):
    """The nickname is asked before connecting: reading the screen for longer than
    handshake_timeout (here 1 s) costs nothing, even after a refused nickname."""
    d = daemon_factory("--handshake-timeout", "1")
    port = status_port(d)
    other = RawClient(port)
    other.join("taken")
    term = Pty([*CLIENT, "--port", str(port)])
    try:
        term.expect("Choose your nickname:")
        time.sleep(2)  # a person reads the screen
        term.type("taken\r")
        term.expect(r"Nickname rejected: nickname 'taken' is taken")
        term.expect("Choose your nickname:")
        time.sleep(2)  # and thinks again
        term.type("zed\r")
        term.expect("Joined as zed")
        assert "no nickname was sent in time" not in term.plain()
    finally:
        term.close()
    assert "handshake_timeout" not in d.stderr()


def test_a_refusal_at_the_door_shows_the_servers_reason_and_is_logged(daemon_factory):
    d = daemon_factory("--max-per-address", "1", "--exempt-addresses", "")
    port = status_port(d)
    first = RawClient(port)
    first.join("first")
    result = run_client(port, "hello\n", "--nick", "second")
    assert result.returncode == 1
    assert result.stderr == ("tcpchat-client: too many connections from 127.0.0.1 "
                             "(limit 1)\n")
    term = Pty([*CLIENT, "--port", str(port), "--nick", "third"])
    try:
        assert term.wait(10) == 1
        assert "too many connections from 127.0.0.1 (limit 1)" in term.plain()
    finally:
        term.close()
    wait_for(lambda: d.stderr().count("refused addr=127.0.0.1 code=address_limit") == 2)


def test_a_plaintext_client_on_the_tls_port_is_told_to_use_tls(tls_daemon):
    d, plain_port, tls_port = tls_daemon()
    started = time.monotonic()
    result = run_client(tls_port, "hello\n", "--nick", "plain")
    assert result.returncode == 1
    assert result.stderr == ("tcpchat-client: this port speaks TLS: connect with TLS "
                             "(tcpchat-client --tls)\n")
    assert time.monotonic() - started < 8  # tls_hello_wait (2 s), not handshake_timeout
    wait_for(lambda: "protocol_error addr=127.0.0.1" in d.stderr() and
             "code=tls_required" in d.stderr())


def test_post_mode_needs_no_join_and_exits_0_once_the_server_took_it(daemon_factory):
    """Two CI jobs post as `ci` at once: both are taken (one as ci-2), nobody sees a join
    or a leave, and a post to an empty room still exits 0 (it is kept in history)."""
    d = daemon_factory()
    port = status_port(d)
    alone = run_client(port, "", "--post", "--nick", "ci", "build", "1", "passed")
    assert (alone.returncode, alone.stdout) == (0, "accepted (0 recipients): build 1 passed\n")
    watcher, seen = confirmer(port, "watcher")
    jobs = [subprocess.Popen([*CLIENT, "--port", str(port), "--post", "--nick", "ci"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for n, job in enumerate(jobs):
        job.stdin.write(f"job {n} line 1\njob {n} line 2\n")
        job.stdin.flush()
    outputs = [job.communicate(timeout=30) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0]
    for n, (out, err) in enumerate(outputs):
        assert out == (f"accepted (1 recipients): job {n} line 1\n"
                       f"accepted (1 recipients): job {n} line 2\n")
    assert sorted(err for _, err in outputs) == [
        "", "tcpchat-client: ci is taken: posted as ci-2\n"]
    wait_for(lambda: len([f for f in seen if f.get("type") == "message"]) == 4)
    assert not [f for f in seen if f.get("event") in ("join", "leave")]
    late = RawClient(port)
    late.join("late")
    assert [m["message"] for m in late.history["messages"]][0] == "ci: build 1 passed"


def test_post_mode_can_demand_delivery(daemon_factory):
    d = daemon_factory("--confirm-timeout", "1")
    port = status_port(d)
    empty = run_client(port, "", "--post", "--require-delivery", "--nick", "ci", "hello?")
    assert empty.returncode == 1
    assert empty.stdout == "not delivered: nobody else is here: hello?\n"
    watcher, _ = confirmer(port, "watcher")
    heard = run_client(port, "", "--post", "--require-delivery", "--nick", "ci", "hello!")
    assert (heard.returncode, heard.stdout) == (0, "delivered to 1 of 1: hello!\n")


def test_post_mode_against_the_original_server_says_it_cannot(short_tmp):
    from origserver import OriginalStyleServer
    server = OriginalStyleServer()
    try:
        result = run_client(server.port, "", "--post", "--nick", "ci", "hi")
        assert result.returncode == 1
        assert "this server does not take --post" in result.stderr
    finally:
        server.listener.close()


def test_alt_enter_adds_a_new_line_to_the_message(room):
    d, port = room
    other = RawClient(port)
    other.join("other")
    term = interactive(port, "ann")
    try:
        term.type("first line\x1b\rsecond line\r")
        got = other.read_until(lambda f: f.get("type") == "message")
        assert got["message"] == "ann: first line\nsecond line"
    finally:
        term.close()


def test_emoji_sequences_are_shown_whole_and_a_hiding_joiner_is_not(room):
    d, port = room
    other = RawClient(port)
    other.join("other")
    term = interactive(port, "ann")
    try:
        other.say("family \U0001f468\u200d\U0001f469\u200d\U0001f467 coder "
                  "\U0001f469\u200d\U0001f4bb pride \U0001f3f3\ufe0f\u200d\U0001f308 "
                  "pay\u200dpal")
        term.expect("pay<U\\+200D>pal")
        line = [l for l in term.plain().splitlines() if "family" in l][-1]
        assert "\U0001f468\u200d\U0001f469\u200d\U0001f467" in line
        assert "\U0001f469\u200d\U0001f4bb" in line and "\U0001f3f3\ufe0f\u200d\U0001f308" \
            in line
        assert line.count("<U+200D>") == 1
    finally:
        term.close()


def test_an_error_receipt_shows_no_count(room):
    d, port = room
    term = interactive(port, "ann")
    try:
        term.type("x" * 5000 + "\r")  # over max_text: the server's error is the receipt
        term.expect(r"\u2717 x+… \(message text of \d+ bytes is over the limit")
        assert "None" not in term.plain()
    finally:
        term.close()


def test_ctl_output_into_a_closed_pipe_is_no_error(room):
    d, port = room
    result = subprocess.run(f"{sys.executable} -m tcpchatd.cli.ctl --admin-socket "
                            f"{admin_path(d)} stats | head -2", shell=True,
                            capture_output=True, text=True, timeout=30)
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == ""


def test_a_notice_read_late_shows_when_it_happened():
    """A laptop that wakes reads the joins it missed: each shows the server's time, not
    the time it was read."""
    from datetime import datetime, timezone
    from tcpchatd.cli import render
    stamp = datetime(2026, 1, 1, 10, 2, tzinfo=timezone.utc)
    shown = render.plain(render.notice({"type": "system", "event": "join",
                                        "message": "ann joined!",
                                        "time": "2026-01-01T10:02:00.000Z"}))
    assert shown == f"{stamp.astimezone().strftime('%H:%M')} -- ann joined!"
