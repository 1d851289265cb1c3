"""The traffic log through a real rsyslogd and the SHIPPED rule file."""

import collections
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

from tcpchatd.control import admin
from tcpchatd.service.config import Config
from tcpchatd.service.trafficlog import TrafficLog, format_line

from conftest import status_port
from rawclient import RawClient, frame, wait_for
from syslogparse import parse_file, parse_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULE = os.path.join(ROOT, "contrib", "rsyslog", "30-tcpchatd.conf")
LOGROTATE = os.path.join(ROOT, "contrib", "logrotate", "tcpchatd")
SHIPPED_LOG = "/var/log/tcpchatd.log"


class Rsyslog:
    """rsyslogd -n with the shipped rule (output path moved to a temp dir) and a catch-all."""

    def __init__(self, workdir):
        self.dir = workdir
        self.socket = os.path.join(workdir, "log.sock")
        self.chat_log = os.path.join(workdir, "tcpchatd.log")
        self.catch_all = os.path.join(workdir, "all.log")
        self.rule = os.path.join(workdir, "30-tcpchatd.conf")
        with open(RULE) as fh:
            shipped = fh.read()
        assert shipped.count(SHIPPED_LOG) == 1
        with open(self.rule, "w") as fh:
            fh.write(shipped.replace(SHIPPED_LOG, self.chat_log))
        self.conf = os.path.join(workdir, "rsyslog.conf")
        with open(self.conf, "w") as fh:
            fh.write(f'global(workDirectory="{workdir}")\n'
                     'module(load="imuxsock" SysSock.Use="off")\n'
                     f'input(type="imuxsock" Socket="{self.socket}")\n'
                     f'include(file="{self.rule}")\n'
                     f'*.* action(type="omfile" file="{self.catch_all}")\n')
        self.proc = None

    def check(self):
        return subprocess.run(["rsyslogd", "-N1", "-f", self.conf], capture_output=True,
                              text=True)

    def start(self):
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-iNONE", "-f", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: os.path.exists(self.socket) and _accepts(self.socket), timeout=10)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def events(self):
        return parse_file(self.chat_log) if os.path.exists(self.chat_log) else []

    def wait_events(self, predicate, timeout=15):
        wait_for(lambda: predicate(self.events()), timeout=timeout)
        return self.events()


def _accepts(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


@pytest.fixture
def rsyslog(short_tmp):
    server = Rsyslog(short_tmp).start()
    yield server
    server.stop()


def syslog_daemon(daemon_factory, rsyslog, *args):
    d = daemon_factory("--syslog-address", rsyslog.socket, *args)
    return d, status_port(d)


def count(events, name):
    return sum(1 for event, _ in events if event == name)


def test_scenario_lands_exactly_in_the_rule_file(daemon_factory, rsyslog):
    """3 clients, 1,000 messages with receipts, a rejected nickname, a malformed frame."""
    d, port = syslog_daemon(daemon_factory, rsyslog, "--flood-rate", "0")
    names = ["ann", "ben", "cy"]
    clients = [RawClient(port, timeout=30) for _ in names]
    for c, n in zip(clients, names):
        c.join(n)
    rejected = RawClient(port)
    rejected.recv_exact(10)
    rejected.send_raw(b"ANN")  # taken, in another case
    assert rejected.read()["code"] == "nickname_taken"
    rejected.close()
    clients[2].send_raw(b"11        {not json!}")
    assert clients[2].read_until(lambda f: f.get("event") == "error")["code"] == "bad_json"

    sent = {}

    def reader(c, messages, receipts):
        """Confirm every message; count the receipts for our own."""
        while messages or receipts:
            f = c.read()
            if f["type"] == "message":
                c.confirm(f["uuid"])
                messages -= 1
            elif f["type"] == "confirm":
                assert f["delivered"] == 2
                receipts -= 1

    def sender(index, n):
        for i in range(n):
            text = f"message {i} from {names[index]}"
            sent[clients[index].say(text)] = (names[index], f"{names[index]}: {text}")
            if i % 50 == 49:
                time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(clients[0], 500, 500)),
               threading.Thread(target=reader, args=(clients[1], 500, 500)),
               threading.Thread(target=reader, args=(clients[2], 1000, 0)),
               threading.Thread(target=sender, args=(0, 500)),
               threading.Thread(target=sender, args=(1, 500))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    for c in clients:
        c.quit()
    assert d.stop() == 0

    events = rsyslog.wait_events(lambda ev: count(ev, "stop") == 1)
    kinds = collections.Counter(event for event, _ in events)
    assert kinds == {"start": 1, "join": 3, "nick_rejected": 1, "protocol_error": 1,
                     "message": 1000, "delivery": 1000, "leave": 3, "stop": 1}, kinds
    assert count(events, "log_dropped") == 0
    by_uuid = {f["uuid"]: f for e, f in events if e == "message"}
    assert set(by_uuid) == set(sent)
    for u, (nick, text) in sent.items():
        assert by_uuid[u] == {"nick": nick, "room": "general", "uuid": u, "recipients": "2",
                              "text": text}
    deliveries = [f for e, f in events if e == "delivery"]
    assert all(f["delivered"] == "2" and f["recipients"] == "2" for f in deliveries)
    assert {f["uuid"] for f in deliveries} == set(sent)
    joins = [f for e, f in events if e == "join"]
    assert [j["nick"] for j in joins] == names
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", j["addr"]) for j in joins)
    (nick_rejected,) = [f for e, f in events if e == "nick_rejected"]
    assert nick_rejected["nick"] == "ANN" and nick_rejected["code"] == "nickname_taken"
    (proto,) = [f for e, f in events if e == "protocol_error"]
    assert proto["nick"] == "cy" and proto["code"] == "bad_json"
    start = events[0]
    assert start[0] == "start" and start[1]["listen"] == f"127.0.0.1:{port}"
    assert {f["reason"] for e, f in events if e == "leave"} == {"quit"}
    # other programs, even on the chat facility, still reach the catch-all; chat lines do not
    subprocess.run(["logger", "-u", rsyslog.socket, "-p", "local6.info", "-t", "other",
                    "catch-all probe"], check=True)
    wait_for(lambda: os.path.exists(rsyslog.catch_all) and
             "catch-all probe" in open(rsyslog.catch_all).read())
    with open(rsyslog.catch_all, encoding="utf-8") as fh:
        assert "tcpchatd" not in fh.read()  # the rule stopped every chat line
    assert stat.S_IMODE(os.stat(rsyslog.chat_log).st_mode) == 0o640


def test_undelivered_flood_leave_and_confirms_each(daemon_factory, rsyslog):
    d, port = syslog_daemon(daemon_factory, rsyslog, "--log-confirms", "each",
                            "--flood-rate", "0.4", "--flood-burst", "1")
    alone = RawClient(port)
    alone.join("alone")
    u_alone = alone.say("hello?")
    # settled before anyone else is here (else "other" might join first and receive it)
    assert alone.read_until(lambda f: f.get("event") == "undelivered")["uuid"] == u_alone
    other = RawClient(port)
    other.join("other")
    u = alone.say("second")  # within 2.5 s of the first: over the flood limit
    assert alone.read_until(lambda f: f.get("event") == "error")["code"] == "flood"
    time.sleep(2.6)  # a token again
    u2 = alone.say("third")
    other.confirm(other.read_until(lambda f: f.get("type") == "message")["uuid"])
    other.close()
    events = rsyslog.wait_events(lambda ev: count(ev, "leave") == 1)
    # every line of what happened in a room names it
    assert ("undelivered", {"uuid": u_alone, "room": "general", "reason": "nobody_here"}) \
        in events
    assert ("flood", {"nick": "alone", "uuid": u}) in events
    assert ("confirm", {"uuid": u2, "room": "general", "nick": "other"}) in events
    assert ("delivery", {"uuid": u2, "room": "general", "delivered": "1",
                         "recipients": "1"}) in events
    assert ("leave", {"nick": "other", "room": "general", "reason": "quit"}) in events


def test_control_characters_quotes_and_newlines_land_as_one_parsable_line(daemon_factory,
                                                                          rsyslog):
    d, port = syslog_daemon(daemon_factory, rsyslog)
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    nasty = ('line one\nline two\r\n\ttabbed "quoted" \\back\\slash\x1b[31mred\x00nul'
             '\x7fdel\x85nel\u2028sep émoji 🎉 key=value')
    u = a.say(nasty)
    events = rsyslog.wait_events(lambda ev: count(ev, "message") == 1)
    (message,) = [f for e, f in events if e == "message"]
    assert message["text"] == f"a: {nasty}"
    assert message["uuid"] == u
    with open(rsyslog.chat_log, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len([l for l in lines if " message " in l]) == 1
    assert "#0" not in lines[-1]  # rsyslog found no control character to escape


def test_an_ascii_value_is_quoted_and_its_delete_character_escaped():
    # ASCII text takes a path of its own (no Unicode classes): DEL is its one unsafe char
    for text, shown in (("two words", '"two words"'), ("del\x7fhere", '"del\\u007fhere"'),
                        ('say "hi"\\', '"say \\"hi\\"\\\\"')):
        line = format_line("message", {"nick": "a", "text": text})
        assert line == f"message nick=a text={shown}"
        assert parse_message(line)[1]["text"] == text


def test_long_line_is_cut_with_truncated_yes():
    text = "é" * 5000  # 10,000 bytes of UTF-8
    line = format_line("message", {"nick": "a", "uuid": "u", "recipients": 1, "text": text})
    assert len(line.encode()) <= 8000
    event, fields = parse_message(line)
    assert fields["truncated"] == "yes" and text.startswith(fields["text"])
    assert len(fields["text"]) > 3900


@pytest.mark.parametrize("hostile", ["x" * 65536, "\x01" * 65536, "é" * 32768,
                                     "\U0001f600" * 16384, '"\\' * 32768,
                                     "\u202e" * 65536])
def test_a_huge_hostile_value_is_formatted_twice_at_most_and_parses_back(monkeypatch,
                                                                          hostile):
    """A line cut to 8,000 bytes costs two formats of what could fit, not one per step of
    a search over the whole value (issue 23, item 9)."""
    from tcpchatd.service import trafficlog
    calls = []
    real = trafficlog.format_value
    monkeypatch.setattr(trafficlog, "format_value",
                        lambda value: calls.append(len(str(value))) or real(value))
    line = format_line("nick_rejected", {"addr": "192.0.2.1:4242", "nick": hostile,
                                         "code": "nickname_invalid"})
    assert len(line.encode()) <= 8000
    event, fields = parse_message(line)
    assert fields["truncated"] == "yes" and hostile.startswith(fields["nick"])
    assert len(fields["nick"].encode()) > 1000  # cut near the limit, not far below it
    long_calls = [n for n in calls if n > 100]
    assert len(long_calls) <= 2 and all(n <= 8001 for n in long_calls), calls


def test_a_rejected_nickname_is_logged_capped(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    attacker = RawClient(port)
    assert attacker.recv_exact(10) == b"_nickname_"
    attacker.send_raw("é".encode() * 30000 + b"\x01" * 4000)
    assert attacker.read()["code"] == "nickname_invalid"
    line = wait_for(lambda: [l for l in d.stderr().splitlines()
                             if l.startswith("nick_rejected ")])[0]
    nick = parse_message(line)[1]["nick"]
    assert nick == "é" * 128 and "truncated" not in line  # 256 bytes of it, no more


def test_long_message_is_truncated_in_the_log_but_not_in_the_chat(daemon_factory, rsyslog):
    d, port = syslog_daemon(daemon_factory, rsyslog)
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    text = "\x01" * 3000  # each escapes to 6 bytes in the log
    a.say(text)
    assert b.read_until(lambda f: f.get("type") == "message")["message"] == f"a: {text}"
    events = rsyslog.wait_events(lambda ev: count(ev, "message") == 1)
    (message,) = [f for e, f in events if e == "message"]
    assert message["truncated"] == "yes" and f"a: {text}".startswith(message["text"])


def test_rsyslog_restart_in_the_middle_of_traffic(daemon_factory, rsyslog, short_tmp):
    ctl_socket = os.path.join(short_tmp, "r.sock")
    d, port = syslog_daemon(daemon_factory, rsyslog, "--log-queue", "50", "--flood-rate", "0",
                            "--admin-socket", ctl_socket)
    a = RawClient(port)
    a.join("a")
    rsyslog.wait_events(lambda ev: count(ev, "join") == 1)
    rsyslog.stop()
    for i in range(200):  # while syslog is down: 200 message + 200 undelivered lines
        a.say(f"while down {i}")
        a.read_until(lambda f: f.get("event") == "undelivered")
    rsyslog.start()
    # the writer reconnects, sends what its queue held, then reports what it dropped
    rsyslog.wait_events(lambda ev: count(ev, "log_dropped") == 1)
    after = a.say("after the restart")
    events = rsyslog.wait_events(
        lambda ev: any(f.get("uuid") == after for e, f in ev if e == "message"))
    stats = admin.call(ctl_socket, "stats")
    dropped = sum(int(f["count"]) for e, f in events if e == "log_dropped")
    assert stats["log_dropped"] > 0  # the queue of 50 could not hold 400 lines
    assert dropped == stats["log_dropped"]
    landed = [f["text"] for e, f in events if e == "message"]
    assert len(landed) + stats["log_dropped"] >= 200 - 50  # nothing vanished uncounted


def test_no_syslog_at_all_one_warning_and_the_chat_works(daemon_factory, short_tmp):
    d = daemon_factory("--syslog-address", os.path.join(short_tmp, "no", "log"))
    port = status_port(d)
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    u = a.say("works without syslog")
    b.confirm(b.read_until(lambda f: f.get("type") == "message")["uuid"])
    assert a.read_until(lambda f: f.get("type") == "confirm")["uuid"] == u
    warnings = [l for l in d.stderr().splitlines() if "syslog" in l]
    assert len(warnings) == 1 and "warning" in warnings[0]
    assert d.stop() == 0


def test_default_facility_matches_the_shipped_rule():
    with open(RULE) as fh:
        rule = fh.read()
    facilities = re.findall(r'\$syslogfacility-text == "(\w+)"', rule)
    assert facilities == [Config().syslog_facility]
    assert re.findall(r'\$programname == "(\w+)"', rule) == ["tcpchatd"]


def test_rsyslogd_accepts_the_shipped_rule(short_tmp):
    result = Rsyslog(short_tmp).check()
    assert result.returncode == 0, result.stderr + result.stdout
    broken = os.path.join(short_tmp, "broken.conf")
    with open(broken, "w") as fh:
        fh.write('include(file="/nonexistent/30-tcpchatd.conf")\nif $x = then {\n')
    assert subprocess.run(["rsyslogd", "-N1", "-f", broken], capture_output=True).returncode != 0


def test_logrotate_accepts_the_shipped_file(short_tmp):
    state = os.path.join(short_tmp, "state")
    result = subprocess.run(["logrotate", "-d", "-s", state, LOGROTATE], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "/var/log/tcpchatd.log" in result.stderr
    assert "error" not in result.stderr.lower()


def test_other_facility_is_not_taken_by_the_rule(daemon_factory, rsyslog):
    d, port = syslog_daemon(daemon_factory, rsyslog, "--syslog-facility", "local5")
    c = RawClient(port)
    c.join("elsewhere")
    wait_for(lambda: os.path.exists(rsyslog.catch_all)
             and "join nick=elsewhere" in open(rsyslog.catch_all).read())
    assert rsyslog.events() == []


def test_a_flood_of_unknown_confirms_never_pushes_the_chat_out_of_the_log(daemon_factory,
                                                                          rsyslog):
    # unknown_uuid counts against error_limit: raised here, so that 30,000 are answered
    d, port = syslog_daemon(daemon_factory, rsyslog, "--log-queue", "100", "--flood-rate", "0",
                            "--confirm-timeout", "1", "--error-limit", "100000")
    victim, friend, attacker = RawClient(port), RawClient(port), RawClient(port, timeout=60)
    victim.join("victim"), friend.join("friend"), attacker.join("attacker")
    strays = b"".join(frame({"type": "confirm", "uuid": str(uuid.uuid4())})
                      for _ in range(30_000))
    errors_back = []
    reader = threading.Thread(target=lambda: errors_back.extend(
        attacker.read_until(lambda f: f.get("code") == "unknown_uuid") for _ in range(30_000)))
    reader.start()
    sent = []
    for i in range(20):  # 1,500 at a time, read as they come (a client that reads)
        attacker.send_raw(strays[i * len(strays) // 20:(i + 1) * len(strays) // 20])
        wait_for(lambda: len(errors_back) >= (i + 1) * 1500, timeout=30)
        sent.append(victim.say(f"message {i}"))
        friend.confirm(friend.read_until(lambda f: f.get("uuid") == sent[-1])["uuid"])
    reader.join(60)
    assert len(errors_back) == 30_000  # every error answered; the attacker is still here
    u = attacker.say("still connected")
    assert friend.read_until(lambda f: f.get("type") == "message")["uuid"] == u
    attacker.close()  # its repeated errors are written when it leaves
    events = rsyslog.wait_events(lambda ev: count(ev, "leave") == 1
                                 and count(ev, "delivery") == len(sent))
    logged = [f["uuid"] for e, f in events if e == "message" and f["nick"] == "victim"]
    assert logged == sent
    assert sorted(f["uuid"] for e, f in events if e == "delivery") == sorted(sent)
    errors_logged = [f for e, f in events if e == "protocol_error"]
    assert sum(int(f.get("repeated", 1)) for f in errors_logged) == 30_000
    assert len(errors_logged) <= 3


def test_chat_lines_take_the_place_of_other_lines_in_a_full_queue(short_tmp):
    server = Rsyslog(short_tmp)  # not started yet: lines wait in the queue
    log = TrafficLog(address=server.socket, queue_size=10)
    log.start()
    for i in range(20):
        log.event("protocol_error", nick="attacker", addr="127.0.0.1:1", code=f"c{i}")
    for i in range(5):
        log.event("message", nick="victim", uuid=f"u{i}", recipients=1, text=f"m{i}")
    server.start()
    try:
        # the drop's own line may land before the chat lines behind it (a full suite
        # once read the file between them): wait for both
        events = server.wait_events(lambda ev: count(ev, "log_dropped") == 1
                                    and count(ev, "message") >= 5)
        assert [f["uuid"] for e, f in events if e == "message"] == [f"u{i}" for i in range(5)]
        others = [f for e, f in events if e == "protocol_error"]
        assert len(others) + log.dropped == 20  # every other line landed or was counted
        (dropped_line,) = [f for e, f in events if e == "log_dropped"]
        assert int(dropped_line["count"]) == log.dropped
    finally:
        log.close()
        server.stop()


def test_bidi_and_zero_width_characters_are_escaped_in_the_log():
    line = format_line("message", {"text": "a\u202eb\u200bc\u2066d\ufeffe\U000e0041f é"})
    assert line == 'message text="a\\u202eb\\u200bc\\u2066d\\ufeffe\\udb40\\udc41f é"'
    assert parse_message(line)[1]["text"] == "a\u202eb\u200bc\u2066d\ufeffe\U000e0041f é"


class SlowSyslog:
    """A syslog socket of the test's own that reads one line every `pause` seconds (or
    none at all): the kernel holds max_dgram_qlen lines, then the daemon's sends wait."""

    def __init__(self, path: str, pause: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.5)
        self.pause, self.lines, self.stop = pause, [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            if self.pause is None:
                self.stop.wait(0.1)
                continue
            try:
                self.lines.append(self.sock.recv(65536).decode().split(": ", 1)[1])
            except (TimeoutError, OSError):
                continue
            time.sleep(self.pause)

    def events(self, name: str) -> list[dict]:
        return [parse_message(line)[1] for line in self.lines if line.split(" ")[0] == name]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def chat_then_stop(daemon_factory, short_tmp, pause, grace, count=150):
    """`count` messages between two clients while syslog reads slowly, then SIGTERM."""
    syslog = SlowSyslog(os.path.join(short_tmp, "slow.sock"), pause)
    d = daemon_factory("--syslog-address", syslog.sock.getsockname(), "--flood-rate", "0",
                       "--shutdown-grace", str(grace))
    port = status_port(d)
    a, b = RawClient(port), RawClient(port)
    a.join("a"), b.join("b")
    sent = [a.say(f"#{i}") for i in range(count)]
    for _ in sent:
        b.confirm(b.read_until(lambda f: f.get("type") == "message")["uuid"])
    for u in sent:
        a.read_until(lambda f: f.get("uuid") == u and f.get("type") == "confirm")
    started = time.monotonic()
    assert d.stop(timeout=30) == 0
    return syslog, d, sent, time.monotonic() - started


def test_sigterm_with_a_slow_syslog_writes_every_queued_line(daemon_factory, short_tmp):
    """~300 lines wait (the kernel holds 10); at 5 ms a line they need ~1.5 s, more than
    the old 1 s: all go out within shutdown_grace, the leaves at shutdown too (issue 23,
    item 10)."""
    syslog, d, sent, took = chat_then_stop(daemon_factory, short_tmp, pause=0.005, grace=10)
    try:
        wait_for(lambda: syslog.events("stop"), timeout=5)
        assert [f["uuid"] for f in syslog.events("message")] == sent
        assert len(syslog.events("delivery")) == len(sent)
        wait_for(lambda: len(syslog.events("leave")) == 2, timeout=5)
        assert "not written" not in d.stderr()
    finally:
        syslog.close()


def test_sigterm_with_a_syslog_that_takes_nothing_says_how_many_lines_were_lost(
        daemon_factory, short_tmp):
    syslog, d, sent, took = chat_then_stop(daemon_factory, short_tmp, pause=None, grace=0.5,
                                           count=30)
    try:
        found = re.search(r"tcpchatd: (\d+) traffic log lines were not written: syslog at "
                          r"\S+ did not take them within shutdown_grace \(0\.5 s\)", d.stderr())
        assert found, d.stderr()
        # the kernel took 10 lines; every other line of the session is counted
        assert int(found.group(1)) >= 2 * len(sent) + 2 + 1 - 10
        assert took < 10  # the grace for clients, then the grace for the log
    finally:
        syslog.close()


def test_an_action_is_marked_in_the_log(daemon_factory):
    """`/me waves` is `message ... action=yes` (issue 31, item 7)."""
    d = daemon_factory()
    port = status_port(d)
    a, b = RawClient(port), RawClient(port)
    a.join("a"), b.join("b")
    u = str(uuid.uuid4())
    a.send_raw(frame({"type": "message", "uuid": u, "message": "a: waves", "action": True}))
    assert b.read_until(lambda f: f.get("type") == "message")["action"] is True
    line = wait_for(lambda: [l for l in d.stderr().splitlines()
                             if l.startswith("message ") and u in l])[0]
    assert parse_message(line)[1]["action"] == "yes"


def test_an_idle_log_lets_lines_gather_then_writes_them_all_in_order(daemon_factory):
    """`log_gather`: the writer, woken by a line after a quiet spell, waits that long for
    more before it writes (one wake-up a batch under load); nothing is lost or reordered."""
    d = daemon_factory("--log-gather", "1.5")
    port = status_port(d)
    started = time.monotonic()
    c = RawClient(port)
    c.join("gatherer")
    sent = [c.say(f"line {i}") for i in range(5)]
    c.read_until(lambda f: f.get("event") == "undelivered" and f.get("uuid") == sent[-1])
    assert "join nick=gatherer" not in d.stderr()  # gathering: nothing written yet
    wait_for(lambda: d.stderr().count("undelivered ") == 5, timeout=15)
    assert time.monotonic() - started >= 1.4  # not before the gathering's end
    events = [parse_message(line) for line in d.stderr().splitlines()
              if line.startswith(("join ", "message ", "undelivered "))]
    assert events[0] == ("join", {"nick": "gatherer", "room": "general",
                                  "addr": events[0][1]["addr"]})
    assert [f["uuid"] for e, f in events if e == "message"] == sent


def test_a_stop_writes_the_lines_the_log_was_gathering(daemon_factory):
    """A stop does not wait out `log_gather`: the held lines are written at once."""
    d = daemon_factory("--log-gather", "60")
    c = RawClient(status_port(d))
    c.join("last")
    assert "join nick=last" not in d.stderr()
    began = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - began < 20
    assert d.stderr().count("join nick=last ") == 1
