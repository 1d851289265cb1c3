"""The probes of issue 10 that need the real daemon: its stack, its admin socket, its
reload, its stderr, its task limit and its counters."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import status_port
from rawclient import RawClient, raw_frame, wait_for
from conftest import ctl
from test_ctl import running  # noqa: F401 (a fixture)

EVENT_LINE = re.compile(r"[a-z_]+( [a-z_]+=(\"([^\"\\]|\\.)*\"|[A-Za-z0-9._:@/+-]+))*")


def nested_message(levels: int) -> bytes:
    """A message frame body whose extra field nests `levels` arrays."""
    return (b'{"type":"message","uuid":"%s","message":"x","x":' % str(uuid.uuid4()).encode()
            + b"[" * levels + b"1" + b"]" * levels + b"}")


def admin_line(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(line + b"\n")
        except BrokenPipeError:  # answered (internal) and closed before it read the line
            pass
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"the admin socket closed without a reply to {line[:60]!r}"
            reply += chunk
    return json.loads(reply)


def test_deep_json_at_the_smallest_stack_never_kills_the_daemon(running):
    d, path, port = running("--thread-stack", "32768", "--max-json-depth", "64")
    good, bad = RawClient(port), RawClient(port)
    good.join("good"), bad.join("bad")
    good.read()
    bad.send_raw(raw_frame(nested_message(63)))  # 64 levels with the object: allowed
    assert good.read()["message"] == "bad: x"
    for levels in (64, 10_000):
        bad.send_raw(raw_frame(nested_message(levels)))
        err = bad.read_until(lambda f: f.get("event") == "error")
        assert err["code"] == "bad_json" and "nested deeper than 64" in err["message"]
    u = bad.say("alive")
    assert good.read_until(lambda f: f.get("uuid") == u)["message"] == "bad: alive"
    deep = b'{"v":1,"id":1,"cmd":"who","args":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    reply = admin_line(path, deep)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert admin_line(path, b'{"v":1,"id":2,"cmd":"who"}')["ok"] is True
    assert d.proc.poll() is None and "Traceback" not in d.stderr()


@pytest.mark.parametrize("line", [
    rb'{"v":1,"id":7,"cmd":"kick","args":{"nickname":"\u202e\u0000\ud800x"}}',
    rb'{"v":1,"id":NaN,"cmd":"who"}',
    rb'{"v":1,"id":Infinity,"cmd":"who"}',
    rb'{"v":true,"id":1,"cmd":"who"}',
    rb'{"v":1.0,"id":1,"cmd":"who"}',
    rb'{"v":1,"id":[1],"cmd":"who"}',
])
def test_admin_requests_that_cannot_be_answered_as_sent_get_bad_request(running, line):
    d, path, _ = running()
    reply = admin_line(path, line)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert admin_line(path, b'{"v":1,"id":2,"cmd":"who"}')["ok"] is True
    assert "Traceback" not in d.stderr()


def test_ctl_with_an_argument_that_is_not_utf8(running):
    d, path, _ = running()
    result = subprocess.run([sys.executable, "-m", "tcpchatd.cli.ctl", "--socket", path, "kick",
                             b"\xff"], capture_output=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "tcpchatctl: argument is not valid UTF-8: \\xff"]


def test_reload_with_an_unknown_admin_group_is_refused(running, short_tmp):
    conf = os.path.join(short_tmp, "r.toml")
    with open(conf, "w") as fh:
        fh.write("max_clients = 50\n")
    d, path, _ = running("--config", conf)
    with open(conf, "w") as fh:
        fh.write('admin_group = "no-such-group-tcpchatd"\n')
    d.messages.clear()
    d.signal(signal.SIGHUP)
    status = d.wait_notify("READY=1")
    assert "reload failed" in status and "no-such-group-tcpchatd" in status
    wait_for(lambda: "reload ok=no" in d.stderr())
    assert ctl(path, "who").returncode == 0


@pytest.fixture
def vanishing_group():
    name = f"tcdg{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=False)


def test_an_admin_connection_that_fails_inside_gets_internal(running, vanishing_group):
    d, path, _ = running("--admin-group", vanishing_group)
    assert ctl(path, "who").returncode == 0
    subprocess.run(["groupdel", vanishing_group], check=True)  # gone while the daemon runs
    reply = admin_line(path, b'{"v":1,"id":3,"cmd":"who"}')
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    result = ctl(path, "stats")
    assert result.returncode == 1 and "internal error" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_stderr_line_is_whole(daemon_factory):
    """The banner and the log events (log_target stderr) never share a line."""
    for _ in range(5):
        d = daemon_factory()
        port = status_port(d)
        clients = [RawClient(port) for _ in range(4)]
        for i, c in enumerate(clients):
            c.join(f"c{i}")
        for c in clients:
            c.say("hello")
            c.send_raw(raw_frame(b"{oops"))
        wait_for(lambda: d.stderr().count("protocol_error") >= 4)
        assert d.stop() == 0
        for line in d.stderr().splitlines():
            assert line.startswith("tcpchatd 0") and line.count("listening on") == 1 \
                or EVENT_LINE.fullmatch(line), f"spliced or stray line: {line!r}"


# --- 8. a failure between accept and join gives the slot back

def pids_cgroup_root() -> str:
    if os.path.exists("/sys/fs/cgroup/pids/cgroup.procs"):  # v1 controller (hybrid host)
        return "/sys/fs/cgroup/pids"
    with open("/sys/fs/cgroup/cgroup.controllers") as fh:  # a pure cgroup2 host
        assert "pids" in fh.read().split(), "no pids controller to set a task limit with"
    return "/sys/fs/cgroup"


@pytest.fixture
def task_limited():
    """limit(pid, extra) puts the process in a cgroup that allows `extra` more tasks."""
    root = pids_cgroup_root()
    path = os.path.join(root, f"tcpchatd-test-{os.getpid()}")
    os.mkdir(path)

    def limit(pid: int, extra: int) -> int:
        with open(os.path.join(path, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))
        tasks = len(os.listdir(f"/proc/{pid}/task"))
        with open(os.path.join(path, "pids.max"), "w") as fh:
            fh.write(str(tasks + extra))
        return tasks
    yield limit
    with open(os.path.join(path, "cgroup.procs")) as fh:
        left = fh.read().split()
    for pid in left:  # our daemon, if it still runs: back where it came from
        with open(os.path.join(root, "cgroup.procs"), "w") as fh:
            fh.write(pid)
    os.rmdir(path)


def test_clients_cost_no_threads_so_a_task_limit_refuses_nobody(running, task_limited):
    """The engine's loops own every connection: under a pids limit that allows one task
    more than the daemon has (for an admin request), 40 clients join and chat, and the
    daemon's thread count never moves."""
    d, path, port = running()
    tasks = task_limited(d.proc.pid, 1)
    clients = [RawClient(port) for _ in range(40)]
    for number, client in enumerate(clients):
        assert client.join(f"user{number}")["nickname"] == f"user{number}"
    assert len(os.listdir(f"/proc/{d.proc.pid}/task")) == tasks
    sent = clients[0].say("hello, all of you")
    for client in clients[1:]:
        message = client.read_until(lambda f: f.get("uuid") == sent)
        assert message["message"] == "user0: hello, all of you"
        client.confirm(message["uuid"])
    receipt = clients[0].read_until(lambda f: f.get("uuid") == sent)
    assert (receipt["delivered"], receipt["recipients"]) == (39, 39)
    result = ctl(path, "stats", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["clients"] == 40
    assert len(os.listdir(f"/proc/{d.proc.pid}/task")) == tasks
    for client in clients:
        client.close()
    assert d.stop() == 0
    assert "cannot" not in d.stderr() and "Traceback" not in d.stderr()


# --- 12. every stats counter after a scripted session

def test_every_stats_counter_after_a_scripted_session(running):
    d, path, port = running("--confirm-timeout", "0.5", "--receipt-wait", "0.2",
                                 "--flood-rate", "0")
    names = ["s", "r1", "r2", "r3"]
    clients = {n: RawClient(port) for n in names}
    for n in names:
        clients[n].join(n)
    s, r1, r2, r3 = (clients[n] for n in names)
    for c in (s, r1, r2):
        c.read_until(lambda f: f.get("nickname") == "r3")
    # 1: everyone confirms -> 3 of 3
    u1 = s.say("one")
    for r in (r1, r2, r3):
        r.confirm(r.read_until(lambda f: f.get("uuid") == u1)["uuid"])
    assert s.read_until(lambda f: f.get("uuid") == u1)["delivered"] == 3
    # 2: nobody confirms -> undelivered at the timeout
    u2 = s.say("two")
    for r in (r1, r2, r3):
        r.read_until(lambda f: f.get("uuid") == u2)
    assert s.read_until(lambda f: f.get("uuid") == u2)["event"] == "undelivered"
    # 3: one confirms -> 1 of 3 at receipt_wait
    u3 = s.say("three")
    for r in (r1, r2, r3):
        r.read_until(lambda f: f.get("uuid") == u3)
    r1.confirm(u3)
    assert s.read_until(lambda f: f.get("uuid") == u3)["delivered"] == 1
    # 4: alone -> undelivered at once
    lonely_port_client = r3
    for c in (r1, r2):
        c.quit()
    s.quit()
    wait_for(lambda: d.stderr().count("leave nick=") == 3)
    u4 = lonely_port_client.say("anyone?")
    assert lonely_port_client.read_until(lambda f: f.get("uuid") == u4)["event"] == "undelivered"
    # 5: a reader that never reads is disconnected for its send queue; the sender reads
    stuck = RawClient(port, rcvbuf=1024)
    stuck.join("stuck")
    lonely_port_client.read_until(lambda f: f.get("nickname") == "stuck")
    sender = lonely_port_client
    uuids = [str(uuid.uuid4()) for _ in range(2000)]
    frames = []

    def read_everything() -> None:  # the sender reads its undelivered notices as they come
        frames.append(sender.read())
        while frames[-1].get("uuid") != uuids[-1]:
            frames.append(sender.read())
    drain = threading.Thread(target=read_everything)
    drain.start()
    big = "y" * 3000
    for msg_uuid in uuids:  # its own messages never count against its own send queue
        sender.say(big, msg_uuid)
    drain.join(60)
    assert [(f["nickname"], f["reason"]) for f in frames if f.get("event") == "leave"] == [
        ("stuck", "send_queue_exceeded")]
    wait_for(lambda: d.stderr().count("undelivered uuid=") == 2002, timeout=30)
    reached_stuck = len(re.findall(r"^message nick=r3 .* recipients=1 ", d.stderr(), re.M))
    assert 0 < reached_stuck < 2000
    # every public message is in the lasting history once its writer has had it
    stats = wait_for(lambda: (lambda st: st if st["history_written"] == 2004 else None)(
        json.loads(ctl(path, "stats", "--json").stdout)), timeout=30)
    del stats["uptime_s"], stats["version"]
    deliveries = 3 + 3 + 3 + reached_stuck
    assert stats == {"clients": 1, "messages": 2004, "deliveries": deliveries,
                     "confirms": 4, "undelivered": 2002, "send_queue_disconnects": 1,
                     "log_dropped": 0, "upgrades": 0, "rooms": {"general": {
                         "members": 1, "messages": 2004, "deliveries": deliveries,
                         "undelivered": 2002}},
                     "history_written": 2004, "history_errors": 0, "history_dropped": 0,
                     "history_queue": 0}


def test_a_reload_that_changes_the_listen_address_says_it_needs_a_restart(daemon_factory,
                                                                          short_tmp):
    conf = os.path.join(short_tmp, "l.toml")
    with open(conf, "w") as fh:
        fh.write('listen = ["127.0.0.1:0"]\n')
    d = daemon_factory("--config", conf, listen=False)
    port = status_port(d)
    with open(conf, "w") as fh:
        fh.write('listen = ["127.0.0.1:1"]\nmax_clients = 7\n')
    d.messages.clear()
    d.signal(signal.SIGHUP)
    status = d.wait_notify("READY=1")
    assert "listen needs a restart" in status and f"127.0.0.1:{port}" in status
    wait_for(lambda: "reload ok=yes needs_restart=listen" in d.stderr())
    assert RawClient(port).join("still")["nickname"] == "still"  # the old address serves
