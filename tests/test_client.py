"""tcpchat-client as a chat user drives it: the pty screen of the interactive client, the
pipe client's output and exit code (issue 11)."""

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
    from test_ctl import ctl
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
