"""Hitless upgrade: the real daemon re-executes itself in place while clients chat.

Numbered messages from several senders, every client confirming what it reads, and every
stream checked for gaps, duplicates and order; the PID and its start time unchanged."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import DaemonProcess, client_context, status_port
from rawclient import PROMPT, RawClient, TlsRawClient, frame, wait_for, untimed
from conftest import CTL, ctl
from test_systemd import alive, read_pid

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tcpchatd")


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime


@pytest.fixture
def installed_copy(short_tmp):
    """A copy of the package on the daemon's PYTHONPATH: what an upgrade installs."""
    site = os.path.join(short_tmp, "site")
    shutil.copytree(PACKAGE, os.path.join(site, "tcpchatd"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


STARTED: list[DaemonProcess] = []  # ended by pid after each test, passed or failed


@pytest.fixture(autouse=True)
def end_started_daemons():
    yield
    while STARTED:
        STARTED.pop().kill()


def start(short_tmp, *args, env=None):
    admin_path = os.path.join(short_tmp, f"u{time.monotonic_ns() % 10**6}.sock")
    # --log-gather 0: a line is on stderr once the action that logs it is done (the
    # gathering of lines across an upgrade: test_an_upgrade_writes_the_line_the_log_held)
    d = DaemonProcess(short_tmp, ["--listen", "127.0.0.1:0", "--admin-socket", admin_path,
                                  "--log-target", "stderr", "--flood-rate", "0",
                                  "--log-gather", "0",
                                  "--state-dir", os.path.join(short_tmp, "st"), *args],
                      env=env, cwd="/")  # not the source tree: PYTHONPATH decides
    STARTED.append(d)
    d.ready()
    return d, admin_path, status_port(d)


class Chatter:
    """A client that confirms everything it reads and keeps what it read, in order."""

    def __init__(self, port: int, name: str, connect=RawClient) -> None:
        self.client = connect(port, timeout=20)
        self.client.join(name)
        self.name = name
        self.messages: list[tuple[str, int]] = []  # (sender, number)
        self.receipts: dict[str, dict] = {}
        self.frames: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                f = self.client.read()
                self.frames.append(f)
                if f.get("type") == "message":
                    number = int(f["message"].rsplit("#", 1)[1])
                    self.messages.append((f["nickname"], number))
                    self.client.confirm(f["uuid"])
                elif f.get("type") == "confirm" or f.get("event") == "undelivered":
                    self.receipts[f["uuid"]] = f
        except (OSError, EOFError, AssertionError):
            pass


def chat_through(port: int, upgrade, senders=3, readers=3, count=120, connect=RawClient,
                 interval=0.004, ready=None):
    """Senders send `count` numbered messages each, one every `interval` seconds, while
    `upgrade()` runs halfway; `connect(port, timeout=)` makes each client; `ready(names)`,
    if given, waits until every member is known everywhere (a cluster's nodes)."""
    names = [f"s{i}" for i in range(senders)] + [f"r{i}" for i in range(readers)]
    chatters = {name: Chatter(port, name, connect) for name in names}
    if ready is not None:
        ready(names)
    sent: dict[str, list[str]] = {name: [] for name in names[:senders]}
    halfway = threading.Barrier(senders + 1, timeout=60)  # a sender that died: no hang

    def send(name):
        client = chatters[name].client
        for number in range(1, count + 1):
            sent[name].append(client.say(f"#{number}"))
            if number == count // 2:
                halfway.wait()
            time.sleep(interval)
    threads = [threading.Thread(target=send, args=(name,)) for name in sent]
    for thread in threads:
        thread.start()
    halfway.wait()
    upgrade()
    for thread in threads:
        thread.join()
    recipients = len(names) - 1
    for name, uuids in sent.items():  # every receipt arrives, every delivery confirmed
        wait_for(lambda: all(u in chatters[name].receipts for u in uuids), timeout=30)
        for u in uuids:
            assert chatters[name].receipts[u] == {
                "type": "confirm", "uuid": u, "delivered": recipients,
                "recipients": recipients}, chatters[name].receipts[u]
    for name, chatter in chatters.items():  # no gap, no duplicate, no reordering
        for sender in sent:
            if sender != name:
                got = [n for s, n in chatter.messages if s == sender]
                assert got == list(range(1, count + 1)), (name, sender, got[:5], len(got))
    return chatters


def test_tcpchatctl_upgrade_carries_every_client_and_loads_the_new_version(
        short_tmp, installed_copy):
    d, admin_path, port = start(short_tmp, env={"PYTHONPATH": installed_copy})
    pid, started = d.proc.pid, start_time(d.proc.pid)
    results = []

    def upgrade():  # the new code installed meanwhile: a bumped version
        init = os.path.join(installed_copy, "tcpchatd", "__init__.py")
        with open(init) as fh:
            text = fh.read()
        with open(init, "w") as fh:
            fh.write(re.sub(r'__version__ = "([^"]+)"', r'__version__ = "\1+bumped"', text))
        results.append(ctl(admin_path, "upgrade"))
    chat_through(port, upgrade)
    result = results[0]
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"upgraded to tcpchatd \S+\+bumped \(pid \d+\); \d+ clients carried, "
                        r"pause \d+ ms\n", result.stdout)
    assert d.proc.pid == pid and start_time(pid) == started and d.proc.poll() is None
    stats = json.loads(ctl(admin_path, "stats", "--json").stdout)
    assert stats["upgrades"] == 1 and stats["version"].endswith("+bumped")
    assert stats["clients"] == 6
    assert d.stop() == 0
    log = d.stderr()
    assert re.search(r"^upgrade ok=yes version=\S+\+bumped previous=\S+ clients=6 "
                     r"tls_closed=0 pause_ms=\d+ handover_ms=\d+ start_ms=\d+$", log, re.M)
    assert "Traceback" not in log and "leave" not in log.split("upgrade ok=yes")[1].split(
        "stop")[0].replace("leave nick", "")  # nobody left before the stop


def test_sigusr2_upgrades_the_same(short_tmp):
    d, admin_path, port = start(short_tmp)
    pid, started = d.proc.pid, start_time(d.proc.pid)

    def upgrade():
        d.drain_notify()
        d.messages.clear()
        d.signal(signal.SIGUSR2)
        d.wait_notify("RELOADING=1")
        d.wait_notify("READY=1")
    chat_through(port, upgrade)
    assert start_time(pid) == started
    assert json.loads(ctl(admin_path, "stats", "--json").stdout)["upgrades"] == 1
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_an_upgrade_writes_the_line_the_log_held(short_tmp):
    """A line the log was gathering (`log_gather`) when an upgrade began is written once:
    the old image writes what it holds before it hands over."""
    d, admin_path, port = start(short_tmp, "--log-gather", "1.5")
    c = RawClient(port)
    c.join("held")
    assert "join nick=held" not in d.stderr()
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "upgrade ok=yes" in d.stderr(), timeout=20)
    assert d.stderr().count("join nick=held ") == 1
    c.say("after")  # the new image serves it
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_refused_upgrades_leave_the_daemon_as_it_was(short_tmp, installed_copy):
    conf = os.path.join(short_tmp, "tcpchatd.toml")
    with open(conf, "w") as fh:
        fh.write("max_clients = 50\n")
    d, admin_path, port = start(short_tmp, "--config", conf, env={"PYTHONPATH": installed_copy})
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    check = ctl(admin_path, "upgrade", "--check")
    assert (check.returncode, check.stdout) == (0, f"pre-flight passed: tcpchatd "
                                                   f"{json.loads(ctl(admin_path, 'stats', '--json').stdout)['version']} would start\n")
    with open(conf, "w") as fh:  # a config that no longer loads
        fh.write("max_clients = 'many'\n")
    refused = ctl(admin_path, "upgrade")
    assert refused.returncode == 1
    assert "upgrade refused: the config does not load" in refused.stderr
    with open(conf, "w") as fh:
        fh.write("max_clients = 50\n")
    room = os.path.join(installed_copy, "tcpchatd", "chat", "room.py")
    with open(room, "a") as fh:  # a module of the installed package broken on purpose
        fh.write("\ndef broken(:\n")
    refused = ctl(admin_path, "upgrade")
    assert refused.returncode == 1 and "the new code does not import" in refused.stderr
    assert refused.stderr.count("\n") == 1
    u = a.say("still the same daemon")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: still the same daemon"
    assert json.loads(ctl(admin_path, "stats", "--json").stdout)["upgrades"] == 0
    d.signal(signal.SIGUSR2)  # by signal too: refused, logged, served on
    wait_for(lambda: d.stderr().count("upgrade ok=no") == 3)
    v = b.say("and still")
    assert a.read_until(lambda f: f.get("uuid") == v)["message"] == "b: and still"
    assert d.stop() == 0
    log = d.stderr()
    assert "upgrade ok=no error=\"the config does not load" in log
    assert "Traceback" not in log


def test_two_sigusr2_at_once_and_a_sigterm_during_the_new_start_are_never_fatal(short_tmp):
    d, admin_path, port = start(short_tmp)
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    d.signal(signal.SIGUSR2)
    d.signal(signal.SIGUSR2)
    wait_for(lambda: json.loads(ctl(admin_path, "stats", "--json").stdout or "{}").get(
        "upgrades", 0) >= 1, timeout=20)
    time.sleep(2)  # a second one, if it was queued, has run too
    u = a.say("after two")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: after two"
    d.drain_notify()
    d.messages.clear()
    d.signal(signal.SIGUSR2)
    d.wait_notify("RELOADING=1")  # signals are held from here until the new image runs
    d.signal(signal.SIGTERM)  # held across the exec, handled once the new image runs
    assert d.proc.wait(20) == 0
    assert b.read_until(lambda f: f.get("event") == "shutdown")
    assert "Traceback" not in d.stderr()


def test_what_is_in_flight_survives(short_tmp):
    # send_buffer small: the kernel cannot take everything due to `slow`, the daemon
    # holds the rest, and the upgrade carries it (carried_bytes, checked below)
    d, admin_path, port = start(short_tmp, "--send-queue", "4194304", "--send-buffer", "8192")
    sender, reader = RawClient(port), RawClient(port)
    sender.join("sender")
    reader.join("reader")
    slow = RawClient(port, rcvbuf=4096)  # stops reading: bytes stay queued for it
    slow.join("slow")
    u = sender.say("pending receipt")  # confirmed only after the upgrade
    assert reader.read_until(lambda f: f.get("uuid") == u)
    big = [sender.say(f"big {i} " + "x" * 3000) for i in range(40)]
    half = frame({"type": "message", "uuid": "11111111-1111-4111-8111-111111111111",
                  "message": "sender: cut in two"})
    sender.send_raw(half[:15])  # a frame half-read when the upgrade starts
    newcomer = RawClient(port)
    assert newcomer.read_item() == PROMPT  # in the middle of its handshake
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr + d.stderr()[-2500:]
    sender.send_raw(half[15:])
    newcomer.send_raw(b"newcomer")
    assert newcomer.read()["event"] == "join"
    assert reader.read_until(lambda f: f.get("uuid") == half_uuid(half))["message"] == \
        "sender: cut in two"
    reader.confirm(u)
    slow.confirm(u)
    assert sender.read_until(lambda f: f.get("uuid") == u) == {
        "type": "confirm", "uuid": u, "delivered": 2, "recipients": 2}
    got = []
    while len(got) < len(big) + 1:
        f = slow.read()
        if f.get("type") == "message":
            got.append(f["uuid"])
    assert got == [u] + big  # every queued byte, in order, after the upgrade
    carried = re.search(r"^upgrade ok=yes .* carried_bytes=(\d+)$", d.stderr(), re.M)
    assert carried and int(carried.group(1)) > 60_000, d.stderr()  # held by the daemon
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def half_uuid(data: bytes) -> str:
    return json.loads(data[10:])["uuid"]


def test_tls_clients_are_asked_to_reconnect(tls_daemon, certs, short_tmp):
    admin_path = os.path.join(short_tmp, "t.sock")
    d, plain_port, tls_port = tls_daemon("--admin-socket", admin_path)
    secure = TlsRawClient(tls_port, client_context(certs))
    secure.join("secure")
    plain = RawClient(plain_port)
    plain.join("plain")
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr
    notice = secure.read_until(lambda f: f.get("event") == "restart")
    assert untimed(notice) == {"type": "system", "event": "restart",
                      "message": "Server is restarting, please reconnect"}
    assert secure.closed()
    again = TlsRawClient(tls_port, client_context(certs))
    assert again.join("secure")["nickname"] == "secure"  # TLS is served by the new image
    u = plain.say("still here")
    assert again.read_until(lambda f: f.get("uuid") == u)["message"] == "plain: still here"
    assert "tls_closed=1" in d.stderr()


def test_under_daemon_mode_the_pid_file_stays_true(short_tmp):
    pid_file = os.path.join(short_tmp, "u.pid")
    with open(os.path.join(short_tmp, "rel.toml"), "w") as fh:
        fh.write("max_clients = 5\n")
    admin_path = os.path.join(short_tmp, "d.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "tcpchatd", "--daemon", "--config", "rel.toml",
            "--pid-file", pid_file, "--admin-socket", admin_path, "--listen", "127.0.0.1:0",
            "--state-dir", os.path.join(short_tmp, "st")]
    assert subprocess.run(argv, env=env, cwd=short_tmp, timeout=30,
                          capture_output=True).returncode == 0
    pid = read_pid(pid_file)
    try:
        result = ctl(admin_path, "upgrade")  # the relative config still resolves
        assert result.returncode == 0, result.stderr
        assert read_pid(pid_file) == pid and alive(pid)
        assert f"(pid {pid})" in result.stdout
        assert json.loads(ctl(admin_path, "stats", "--json").stdout)["upgrades"] == 1
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), timeout=10)
    assert not os.path.exists(pid_file)


def test_log_lines_waiting_in_the_queue_survive(short_tmp):
    """A syslog that stops reading: the lines queued when the upgrade starts (and the one
    the writer holds) are written by the new image, each once, in order."""
    import socket
    syslog_path = os.path.join(short_tmp, "log.sock")
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    syslog.bind(syslog_path)
    admin_path = os.path.join(short_tmp, "lq.sock")
    d = DaemonProcess(short_tmp, ["--listen", "127.0.0.1:0", "--admin-socket", admin_path,
                                  "--syslog-address", syslog_path,
                                  "--state-dir", os.path.join(short_tmp, "st")],
                      cwd="/")
    STARTED.append(d)
    d.ready()
    port = status_port(d)
    clients = []
    for number in range(40):  # far more join lines than the socket holds unread
        client = RawClient(port)
        client.join(f"user{number:02d}")
        clients.append(client)
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr
    lines = []
    syslog.settimeout(5)
    try:
        while not any("upgrade ok=yes" in line for line in lines):
            lines.append(syslog.recv(65536).decode())
    except TimeoutError:
        pass
    joins = [re.search(r"join nick=(user\d+)", line).group(1) for line in lines
             if "join nick=" in line]
    assert joins == [f"user{number:02d}" for number in range(40)]
    assert d.stop() == 0


def test_a_tls_tcpchat_client_reconnects_by_itself_after_an_upgrade(tls_daemon, certs,
                                                                     short_tmp):
    from test_client import CLIENT as CLIENT_COMMAND, confirmer
    admin_path = os.path.join(short_tmp, "rc.sock")
    d, plain_port, tls_port = tls_daemon("--admin-socket", admin_path, cert="two")
    confirmer(plain_port, "ben")
    proc = subprocess.Popen([*CLIENT_COMMAND, "--host", "localhost", "--port", str(tls_port),
                             "--cafile", certs("ca.crt"), "--nick", "bot"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        proc.stdin.write("before\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "delivered to 1 of 1: before\n"
        result = ctl(admin_path, "upgrade")
        assert result.returncode == 0, result.stderr
        proc.stdin.write("after\n")
        proc.stdin.close()
        assert proc.stdout.readline() == "delivered to 1 of 1: after\n"
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "the server is restarting" in err and "reconnected as bot" in err
    finally:
        proc.kill()
    assert d.stop() == 0


def test_a_client_asked_for_its_nickname_is_not_asked_twice(short_tmp):
    """The only client is in its handshake (nothing broadcast yet): after the upgrade
    the daemon goes on waiting for its nickname, and sends no second prompt."""
    d, admin_path, port = start(short_tmp)
    waiting = RawClient(port)
    assert waiting.read_item() == PROMPT
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr
    waiting.send_raw(b"patient")
    assert untimed(waiting.read()) == {"type": "system", "event": "join", "nickname": "patient",
                                       "message": "patient joined!", "room": "general"}
    assert d.stop() == 0


# --- issue 23: the upgrade must never be what kills the daemon

@pytest.mark.parametrize("broken", ["not json", "folder"])
def test_a_ban_list_broken_on_disk_neither_stops_nor_empties_the_upgrade(short_tmp, broken):
    """The running list is handed over; the file is not read again. The pre-flight says
    that a restart would fail (item 1)."""
    d, admin_path, port = start(short_tmp)
    assert ctl(admin_path, "ban", "eve", "--reason", "impostor").returncode == 0
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    bans_file = os.path.join(short_tmp, "st", "bans.json")
    os.unlink(bans_file)
    if broken == "folder":
        os.mkdir(bans_file)
    else:
        with open(bans_file, "w") as fh:
            fh.write("{not json")
    check = ctl(admin_path, "upgrade", "--check")
    assert check.returncode == 0 and "warning:" in check.stdout and "bans.json" in check.stdout
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr + d.stderr()[-2000:]
    u = a.say("carried")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: carried"
    eve = RawClient(port)
    assert eve.recv_exact(10) == PROMPT
    eve.send_raw(b"eve")
    assert eve.read()["code"] == "banned"  # the ban held through the upgrade
    assert [x["target"] for x in json.loads(ctl(admin_path, "bans", "--json").stdout)[
        "bans"]] == ["eve"]
    assert os.path.exists(admin_path)
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_a_config_broken_after_the_preflight_does_not_stop_the_new_image(short_tmp,
                                                                        installed_copy):
    """The new image starts from the settings the pre-flight parsed, not from the file:
    here the (new) pre-flight breaks the file right after checking it (item 1)."""
    conf = os.path.join(short_tmp, "tcpchatd.toml")
    with open(conf, "w") as fh:
        fh.write("max_clients = 50\n")
    preflight = os.path.join(installed_copy, "tcpchatd", "service", "preflight.py")
    with open(preflight) as fh:
        code = fh.read()
    code = code.replace('if __name__ == "__main__":', f'''_checked = main
def main(argv):
    status = _checked(argv)
    with open({conf!r}, "w") as fh:
        fh.write("max_clients = 'many'\\n")
    return status


if __name__ == "__main__":''')
    with open(preflight, "w") as fh:
        fh.write(code)
    d, admin_path, port = start(short_tmp, "--config", conf, env={"PYTHONPATH": installed_copy})
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr + d.stderr()[-2000:]
    with open(conf) as fh:
        assert "many" in fh.read()  # broken indeed
    u = a.say("still here")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: still here"
    assert json.loads(ctl(admin_path, "stats", "--json").stdout)["upgrades"] == 1
    d.signal(signal.SIGHUP)  # a reload does read the file: it keeps the running settings
    wait_for(lambda: "reload ok=no" in d.stderr())
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_a_new_image_that_cannot_start_tells_its_clients_and_the_operator(short_tmp,
                                                                         installed_copy):
    """A fault of the new code after the exec (here: adopting the room raises). Every
    client is asked to reconnect, after what was due to it; `tcpchatctl upgrade` exits 1
    with the reason; the log says so; the admin socket is removed; exit status 1, so
    that systemd's Restart=on-failure starts the service again (item 1)."""
    upgrade_py = os.path.join(installed_copy, "tcpchatd", "service", "upgrade.py")
    with open(upgrade_py) as fh:
        code = fh.read()
    code = code.replace('''        daemon = self.daemon
        by_fd = {}''', '''        raise RuntimeError("a fault of the new version")
        daemon = self.daemon
        by_fd = {}''')
    with open(upgrade_py, "w") as fh:
        fh.write(code)
    d, admin_path, port = start(short_tmp, env={"PYTHONPATH": installed_copy})
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    u = a.say("before")
    assert b.read_until(lambda f: f.get("uuid") == u)
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 1
    assert result.stderr == ("tcpchatctl: the new image could not start: RuntimeError: "
                             "a fault of the new version\n")
    for client in (a, b):
        restart = client.read_until(lambda f: f.get("event") in ("restart", "shutdown"))
        assert restart["event"] == "restart"
        assert client.closed()
    assert d.proc.wait(10) == 1
    assert not os.path.exists(admin_path)  # the next start is not stopped by it
    log = d.stderr()
    assert "the new image could not start: RuntimeError: a fault of the new version" in log
    assert re.search(r'^upgrade ok=no version=\S+ previous=\S+ clients=2 error="the new '
                     r'image could not start', log, re.M)


def test_admin_requests_during_the_hand_over_are_done_or_refused_never_lost(short_tmp):
    """An admin connection already open keeps asking while `tcpchatctl upgrade` runs:
    every `say` answered ok reaches the room, every `kick` answered ok has kicked, the
    rest are refused with `upgrading` (item 2)."""
    d, admin_path, port = start(short_tmp)
    listener = RawClient(port, timeout=30)
    listener.join("listener")
    members = {f"m{i}": RawClient(port, timeout=30) for i in range(40)}
    for name, client in members.items():
        client.join(name)
    answers = []
    stop = threading.Event()

    def ask():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(admin_path)
            reader = sock.makefile("rb")
            for n in range(10_000):  # until the exec closes the connection
                if stop.is_set():
                    return
                kick = n % 10 == 0 and n // 10 < len(members)
                request = ({"cmd": "kick", "args": {"nickname": f"m{n // 10}"}} if kick else
                           {"cmd": "say", "args": {"text": f"say {n}"}})
                try:
                    sock.sendall(json.dumps({"v": 1, "id": n, **request}).encode() + b"\n")
                    line = reader.readline()
                except OSError:
                    return
                if not line:
                    return  # the exec closed it
                answers.append((request, json.loads(line)))
                time.sleep(0.002)
    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.03)
    result = ctl(admin_path, "upgrade")
    stop.set()
    asker.join(30)
    assert result.returncode == 0, result.stderr
    said = [r["args"]["text"] for r, a in answers if r["cmd"] == "say" and a["ok"]]
    kicked = {r["args"]["nickname"] for r, a in answers if r["cmd"] == "kick" and a["ok"]}
    refused = [a["error"]["code"] for r, a in answers if not a["ok"]]
    assert set(refused) == {"upgrading"}  # the window was hit: refused, not lost
    assert said and kicked
    heard = []
    while len(heard) < len(said):
        f = listener.read_until(lambda f: f.get("event") == "announce")
        heard.append(f["message"])
    assert heard == said
    who = {c["nickname"] for c in json.loads(ctl(admin_path, "who", "--json").stdout)[
        "clients"]}
    assert not who & kicked, who & kicked  # an ok'd kick happened
    assert (set(members) - kicked) <= who  # and nobody else was kicked
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_uptime_runs_on_through_an_upgrade(short_tmp):
    d, admin_path, port = start(short_tmp)
    time.sleep(1.0)
    assert ctl(admin_path, "upgrade").returncode == 0
    stats = json.loads(ctl(admin_path, "stats", "--json").stdout)
    assert stats["upgrades"] == 1 and stats["uptime_s"] >= 1.0
    assert d.stop() == 0


def test_the_upgrade_carries_every_room_its_members_topic_and_pending_receipts(short_tmp):
    """Issue 25: rooms, who is in each, topics, history and a receipt still pending cross
    the exec; the chat in each room goes on as it was."""
    d, admin_path, port = start(short_tmp, "--confirm-timeout", "20")
    ann, ben, cy = RawClient(port), RawClient(port), RawClient(port)
    for client, name in ((ann, "ann"), (ben, "ben"), (cy, "cy")):
        client.join(name)
    ann.enter("dev")
    ben.enter("dev")
    ben.request("part", room="general")
    ann.answer(ann.request("topic", room="dev", topic="ship friday"))
    pending = ann.say("before the upgrade", room="dev")
    assert ben.read_until(lambda f: f.get("type") == "message")["uuid"] == pending
    result = ctl(admin_path, "upgrade")
    assert result.returncode == 0, result.stderr
    ben.confirm(pending)  # the receipt that waited crosses the exec, then settles
    receipt = ann.read_until(lambda f: f.get("type") == "confirm")
    assert receipt == {"type": "confirm", "uuid": pending, "delivered": 1, "recipients": 1}
    rooms = json.loads(ctl(admin_path, "rooms", "--json").stdout)["rooms"]
    assert rooms == [{"room": "dev", "members": 2, "topic": "ship friday"},
                     {"room": "general", "members": 2, "topic": ""}]
    after = ann.say("after the upgrade", room="dev")
    got = ben.read_until(lambda f: f.get("type") == "message")
    assert (got["uuid"], got["room"]) == (after, "dev")
    late = RawClient(port)
    late.join("late")
    names = late.enter("dev")
    assert names["nicknames"] == ["ann", "ben", "late"] and names["topic"] == "ship friday"
    assert [m["message"] for m in late.history["messages"]] == [
        "ann: before the upgrade", "ann: after the upgrade"]
    cy.say("general still works")
    assert ann.read_until(lambda f: f.get("type") == "message")["room"] == "general"
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_the_upgrade_carries_the_accounts_and_who_is_logged_in(short_tmp):
    """Issue 26: the accounts in force and each member's login go through; an account
    file broken on disk is refused by the pre-flight, and the daemon runs on as it was."""
    d, admin_path, port = start(short_tmp)
    add = subprocess.run([*CTL, "--socket", admin_path, "account", "add", "mod",
                          "moderator"], input="mod pass\n", text=True, capture_output=True,
                         timeout=30)
    assert add.returncode == 0, add.stderr
    mod = RawClient(port)
    assert mod.hello(account="mod", password="mod pass")["role"] == "moderator"
    mod.joined()
    troll = RawClient(port)
    troll.join("troll")
    assert ctl(admin_path, "upgrade").returncode == 0, d.stderr()[-2000:]
    # still a moderator after the hand-over, without logging in again
    done = mod.answer(mod.request("kick", nickname="troll", reason="carried"))
    assert done["event"] == "done"
    who = json.loads(ctl(admin_path, "who", "--json").stdout)["clients"]
    assert [(c["nickname"], c["account"], c["role"]) for c in who] == [
        ("mod", "mod", "moderator")]
    guest = RawClient(port)  # the reservation held too
    assert guest.recv_exact(10) == PROMPT
    guest.send_raw(b"MOD")
    assert guest.read()["code"] == "nickname_reserved"
    with open(os.path.join(short_tmp, "st", "accounts.json"), "w") as fh:
        fh.write("{broken")
    refused = ctl(admin_path, "upgrade")
    assert refused.returncode == 1 and "accounts" in refused.stderr \
        and "do not parse" in refused.stderr
    late = RawClient(port)  # the daemon runs on as it was
    late.join("late")
    said = mod.say("still here")
    assert late.read_until(lambda f: f.get("uuid") == said)["message"] == "mod: still here"
    assert d.stop() == 0 and "Traceback" not in d.stderr()
