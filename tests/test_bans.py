"""Bans that last (issue 15): the list and its file, then through the real daemon and
tcpchatctl: kicks, refusals at the door and at the nickname, expiry, restarts."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tcpchatd.chat.bans import BanList, parse_duration, parse_target
from tcpchatd.chat.bans import BanError, BanListError

from conftest import status_port
from rawclient import PROMPT, RawClient, wait_for
from conftest import ctl
from test_systemd import with_fds


# --- the list and its file

@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("2h", 7200),
                                          ("7d", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "5", "5w", "1.5h", "-3m", "h", "10 m",
                                  "9999999d", "3651d", "87601h"])
def test_bad_durations_are_bad_request(text):
    with pytest.raises(BanError) as info:
        parse_duration(text)
    assert info.value.code == "invalid"


@pytest.mark.parametrize("text,kept,is_network", [
    ("203.0.113.7", "203.0.113.7", True), ("2001:db8::/32", "2001:db8::/32", True),
    ("203.0.113.7/24", "203.0.113.0/24", True), ("::ffff:198.51.100.9", "198.51.100.9", True),
    ("spammer", "spammer", False), ("Zoë", "Zoë", False)])
def test_targets(text, kept, is_network):
    target, network = parse_target(text)
    assert (target, network is not None) == (kept, is_network)


@pytest.mark.parametrize("text", ["", "   ", "300.1.2.3", "10.0.0.0/33", "1.2.3.4/x",
                                  "127.1", "10.0.0", "1.2.3.4.5", "fe80::zz"[:6] + ":1:2:3:4:5:6:7:8"])
def test_bad_targets_are_bad_request(text):
    with pytest.raises(BanError) as info:
        parse_target(text)
    assert info.value.code == "invalid"


def test_matching_mapped_peers_nicknames_and_everything(tmp_path):
    bans = BanList(str(tmp_path))
    bans.add("198.51.100.0/24", None, "spam", 0)
    assert bans.for_address("198.51.100.7").target == "198.51.100.0/24"
    assert bans.for_address("::ffff:198.51.100.7").target == "198.51.100.0/24"
    assert bans.for_address("198.51.101.7") is None
    bans.add("ＡＮＮ", 60, "rude", 0)  # fullwidth: the nickname key folds it
    assert bans.for_nickname("ann").reason == "rude"
    for everything in ("0.0.0.0/0", "::/0"):
        with pytest.raises(BanError) as info:
            bans.add(everything, None, "x", 0)
        assert info.value.code == "invalid" and "--force" in info.value.message
    bans.add("::/0", None, "closed", 0, force=True)
    assert bans.for_address("2001:db8::1").reason == "closed"
    with pytest.raises(BanError) as info:
        bans.remove("nobody")
    assert info.value.code == "unknown"


@pytest.mark.parametrize("network,inside,outside", [
    ("10.1.0.0/16", ["10.1.0.0", "10.1.255.255", "::ffff:10.1.0.0", "::ffff:10.1.255.255"],
     ["10.0.255.255", "10.2.0.0", "::ffff:10.2.0.0", "11.1.0.0"]),
    ("2001:db8:1::/48", ["2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"],
     ["2001:db8:0:ffff:ffff:ffff:ffff:ffff", "2001:db8:2::"]),
    ("198.51.100.7", ["198.51.100.7", "::ffff:198.51.100.7"],
     ["198.51.100.6", "198.51.100.8"]),
])
def test_a_network_ban_holds_from_its_first_address_to_its_last_and_no_further(
        tmp_path, network, inside, outside):
    bans = BanList(str(tmp_path))
    bans.add(network, None, "edge", 0)
    assert [ip for ip in inside if bans.for_address(ip) is None] == []
    assert [ip for ip in outside if bans.for_address(ip) is not None] == []


@pytest.mark.parametrize("banned,look_alike", [
    ("pope", "\u0440\u043e\u0440\u0435"), ("bob", "b\u0585b"), ("ann", "\u0251nn"),
    ("scott", "\ua731cott"), ("sophie", "\u0455\u043e\u0440\u04bb\u0456\u0435")])
def test_a_nickname_ban_holds_for_its_look_alikes(tmp_path, banned, look_alike):
    bans = BanList(str(tmp_path))
    bans.add(banned, None, "spam", 0)
    assert bans.for_nickname(look_alike).target == banned
    assert bans.matches(bans.all()[0], look_alike, "192.0.2.1")


def test_a_planted_link_is_never_written_through(tmp_path):
    """The temporary file's name cannot be guessed; the names an older version used (the
    target's name with the PID) are left alone, links planted there included."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir()
    for guess in (f"bans.json.{os.getpid()}.tmp", f".bans.json.{os.getpid()}.tmp"):
        (state / guess).symlink_to(elsewhere)
    BanList(str(state)).add("troll", None, "spam", 0)
    assert elsewhere.read_text() == "precious\n"
    assert json.loads((state / "bans.json").read_text())["bans"][0]["target"] == "troll"
    assert not (state / "bans.json").is_symlink()


def test_a_full_disk_keeps_the_old_list_and_leaves_no_temporary_file(tmp_path):
    """In a child whose file size limit is 200 bytes (the kernel refuses the write, as a
    full disk does): the change is refused with a clear error, nothing is left behind."""
    bans = BanList(str(tmp_path))
    bans.add("first", None, "short", 0)
    before = (tmp_path / "bans.json").read_bytes()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: refused by the kernel, says what it got
        os.close(read_fd)
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        try:
            bans.add("second", None, "a reason long enough to pass 200 bytes " * 5, 0)
            outcome = "added"
        except BanError as exc:
            outcome = f"{exc.code}: {exc.message}"
        os.write(write_fd, outcome.encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as fh:
        outcome = fh.read()
    assert outcome.startswith("unwritable: cannot write the ban list") and \
        "nothing was changed" in outcome, outcome
    assert (tmp_path / "bans.json").read_bytes() == before
    assert os.listdir(tmp_path) == ["bans.json"]


@pytest.mark.parametrize("until", [1e20, 1e300, 253402300800])
def test_a_kept_end_beyond_every_date_is_a_ban_with_no_end(tmp_path, until):
    """An older version took any duration: its file still loads and lists."""
    (tmp_path / "bans.json").write_text(json.dumps({"format": 1, "bans": [
        {"target": "eve", "until": until, "reason": "x", "by_uid": 0, "since": 1.0}]}))
    bans = BanList(str(tmp_path))
    bans.load()
    assert bans.all()[0].record()["until"] is None
    assert bans.for_nickname("eve") is not None


def test_the_file_survives_a_new_list_and_expiry_drops_bans(tmp_path):
    bans = BanList(str(tmp_path))
    bans.add("10.0.0.1", 1, "short", 5)
    bans.add("eve", None, "long", 6)
    again = BanList(str(tmp_path))
    again.load()
    assert [(b.target, b.by_uid) for b in again.all()] == [("10.0.0.1", 5), ("eve", 6)]
    assert [b.target for b in again.expire(time.time() + 2)] == ["10.0.0.1"]
    third = BanList(str(tmp_path))
    third.load()
    assert [b.target for b in third.all()] == ["eve"]
    assert os.listdir(tmp_path) == ["bans.json"]  # no temporary file left behind


@pytest.mark.parametrize("content", ["{not json", '{"format": 1}', '{"format": 9, "bans": []}',
                                     '{"format": 1, "bans": [{"target": "x"}]}', "[]"])
def test_a_file_that_does_not_parse_stops_the_start(tmp_path, content):
    (tmp_path / "bans.json").write_text(content)
    with pytest.raises(BanListError) as info:
        BanList(str(tmp_path)).load()
    assert str(tmp_path / "bans.json") in str(info.value)
    assert (tmp_path / "bans.json").read_text() == content  # never emptied


# --- through the daemon

@pytest.fixture
def banning(daemon_factory, short_tmp):
    def start(*args):
        path = os.path.join(short_tmp, f"b{len(os.listdir(short_tmp))}.sock")
        state = os.path.join(short_tmp, f"st{len(os.listdir(short_tmp))}")
        d = daemon_factory("--admin-socket", path, "--state-dir", state, *args)
        return d, path, status_port(d), state
    return start


def test_ban_an_address_kicks_and_refuses_at_the_door(banning):
    d, path, port, state = banning()
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann"), ben.join("ben")
    result = ctl(path, "ban", "127.0.0.1", "--reason", "spam", "--for", "2h")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"banned 127\.0\.0\.1 until \S+Z; kicked ann, ben\n", result.stdout)
    for c in (ann, ben):  # told it is a ban, and for how long (not "kicked")
        notice = c.read_until(lambda f: f.get("event") == "kick")
        assert notice["banned"] is True
        assert re.fullmatch(r"You were banned: spam \(until \S+Z\)", notice["message"])
        assert c.closed()
    assert ann.closed()
    wait_for(lambda: "leave nick=ben room=general reason=banned" in d.stderr())  # the log's own thread
    door = RawClient(port)  # loopback is exempt from limits, not from bans
    err = door.read()
    assert (err["event"], err["code"]) == ("error", "banned")
    assert "spam" in err["message"] and "until" in err["message"]
    assert door.closed()
    # the log writer is a thread of its own: the line follows the refusal shortly
    wait_for(lambda: "refused addr=127.0.0.1 code=banned" in d.stderr())
    assert re.search(r"ban target=127\.0\.0\.1 until=\S+ reason=spam uid=0 pid=\d+", d.stderr())
    listed = json.loads(ctl(path, "bans", "--json").stdout)["bans"]
    assert [(b["target"], b["reason"], b["by_uid"]) for b in listed] == [("127.0.0.1", "spam", 0)]
    unban = ctl(path, "unban", "127.0.0.1")
    assert (unban.returncode, unban.stdout) == (0, "unbanned 127.0.0.1\n")
    assert RawClient(port).join("back")["nickname"] == "back"
    assert re.search(r"unban target=127\.0\.0\.1 uid=0 pid=\d+", d.stderr())


def test_ban_a_nickname_is_asked_again_and_nick_requests_are_refused(banning):
    from rawclient import frame
    d, path, port, state = banning()
    eve, bob = RawClient(port), RawClient(port)
    eve.join("Eve"), bob.join("bob")
    assert ctl(path, "ban", "ＥＶＥ", "--reason", "impostor").stdout.endswith("kicked Eve\n")
    eve.read_until(lambda f: f.get("event") == "kick")
    again = RawClient(port)
    assert again.recv_exact(10) == PROMPT
    again.send_raw(b"eve")
    err = again.read()
    assert err["code"] == "banned" and "impostor" in err["message"]
    assert again.recv_exact(10) == PROMPT  # like a taken one
    again.send_raw(b"adam")
    assert again.read()["nickname"] == "adam"
    bob.send_raw(frame({"type": "request", "id": 5, "cmd": "nick", "nickname": "EVE"}))
    refused = bob.read_until(lambda f: f.get("event") == "error")
    assert (refused["code"], refused["id"]) == ("banned", 5)
    # the traffic log's thread writes it soon after the refusal
    assert wait_for(lambda: "nick_rejected" in d.stderr() and "code=banned" in d.stderr())


def test_an_address_ban_holds_for_a_connection_accepted_before_it(banning):
    d, path, port, state = banning()
    early = RawClient(port)
    assert early.recv_exact(10) == PROMPT  # accepted and asked before the ban
    assert ctl(path, "ban", "127.0.0.1", "--reason", "spam").returncode == 0
    early.send_raw(b"sneaky")
    err = early.read()
    assert err["code"] == "banned" and "spam" in err["message"]
    assert early.closed()  # no other nickname helps
    assert "sneaky" not in [c["nickname"] for c in
                            json.loads(ctl(path, "who", "--json").stdout)["clients"]]
    assert re.search(r"refused addr=127\.0\.0\.1 code=banned", d.stderr())


def test_a_wide_ban_names_who_it_would_kick_and_asks_for_force(banning):
    d, path, port, state = banning()
    members = {name: RawClient(port) for name in ("ann", "ben", "cy", "dee")}
    for name, client in members.items():
        client.join(name)
    refused = ctl(path, "ban", "127.0.0.0/8", "testing", "things")
    assert refused.returncode == 1
    assert refused.stderr == ("tcpchatctl: banning 127.0.0.0/8 would kick 4 members (ann, "
                              "ben, cy, dee); add --force if you mean it\n")
    assert ctl(path, "bans").stdout == "no bans\n"  # nothing kept, nobody kicked
    assert len(json.loads(ctl(path, "who", "--json").stdout)["clients"]) == 4
    forced = ctl(path, "ban", "127.0.0.0/8", "closing", "for", "tonight", "--force")
    assert forced.returncode == 0 and forced.stdout.endswith(
        "permanently (until unbanned); kicked ann, ben, cy, dee\n")
    listed = ctl(path, "bans").stdout.splitlines()
    assert listed[0].split() == ["TARGET", "UNTIL", "SINCE", "BY", "REASON"]
    assert listed[1].split()[:2] == ["127.0.0.0/8", "permanent"]
    assert listed[1].split()[3:5] == ["uid", str(os.getuid())]  # an operator's ban
    assert listed[1].endswith("closing for tonight")
    notice = members["ann"].read_until(lambda f: f.get("event") == "kick")
    assert notice["message"] == "You were banned: closing for tonight (with no end)"


def test_a_ban_of_a_few_members_needs_no_force(banning):
    d, path, port, state = banning("--ban-force-over", "1")
    ann = RawClient(port)
    ann.join("ann")
    assert ctl(path, "ban", "ann", "spamming", "links").stdout.endswith("; kicked ann\n")
    assert "spamming links" in ann.read_until(lambda f: f.get("event") == "kick")["message"]


def test_bad_ban_requests_and_unknown_unban(banning):
    d, path, port, state = banning()
    for args, words in ((["ban", "10.0.0.0/33"], "bad address"), (["ban", "x", "--for", "3w"],
                        "bad duration"), (["ban", "0.0.0.0/0"], "--force"),
                        (["unban", "nobody"], "no such ban"),
                        (["ban", "bob", "--for", "9999999d"], "longer than 3650d"),
                        (["ban", "127.1"], "bad address"), (["ban", "10.0.0"], "bad address")):
        result = ctl(path, *args)
        assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert ctl(path, "bans").stdout == "no bans\n"
    forced = ctl(path, "ban", "::/0", "--force", "--reason", "closed for maintenance")
    assert forced.returncode == 0


def test_a_ban_expires_by_itself_and_says_so(banning):
    d, path, port, state = banning()
    assert ctl(path, "ban", "127.0.0.1", "--for", "1s").returncode == 0
    err = RawClient(port).read()
    assert err["code"] == "banned"
    wait_for(lambda: "ban_expired target=127.0.0.1 by_uid=0" in d.stderr(), timeout=10)
    assert RawClient(port).join("free")["nickname"] == "free"
    assert ctl(path, "bans").stdout == "no bans\n"


def test_bans_survive_a_restart_and_a_reload(banning, daemon_factory):
    d, path, port, state = banning()
    ctl(path, "ban", "mallory", "--reason", "again")
    ctl(path, "ban", "192.0.2.0/24")
    d.signal(signal.SIGHUP)
    d.messages.clear()
    d.wait_notify("READY=1")
    assert len(json.loads(ctl(path, "bans", "--json").stdout)["bans"]) == 2
    assert d.stop() == 0
    again = daemon_factory("--admin-socket", path, "--state-dir", state)
    port = status_port(again)
    c = RawClient(port)
    assert c.recv_exact(10) == PROMPT
    c.send_raw(b"Mallory")
    assert c.read()["code"] == "banned"
    assert [b["target"] for b in json.loads(ctl(path, "bans", "--json").stdout)["bans"]] == \
        ["mallory", "192.0.2.0/24"]


def test_a_ban_list_that_does_not_parse_stops_the_daemon(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "broken")
    os.makedirs(state)
    with open(os.path.join(state, "bans.json"), "w") as fh:
        fh.write('{"format": 1, "bans": [')
    d = daemon_factory("--state-dir", state, wait_ready=False)
    assert d.proc.wait(10) == 1
    lines = d.stderr().splitlines()
    assert len(lines) == 1 and os.path.join(state, "bans.json") in lines[0]
    with open(os.path.join(state, "bans.json")) as fh:
        assert fh.read() == '{"format": 1, "bans": ['


def test_a_dual_stack_peer_matches_an_ipv4_ban(short_tmp):
    """An IPv4 client on an IPv6 socket with V6ONLY off is ::ffff:127.0.0.1 to it."""
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen()
    port = listener.getsockname()[1]
    admin_path = os.path.join(short_tmp, "ds.sock")
    argv = [sys.executable, "-m", "tcpchatd", "--log-target", "stderr", "--admin-socket",
            admin_path, "--state-dir", os.path.join(short_tmp, "ds")]
    proc = subprocess.Popen(with_fds(argv, [listener.fileno()]), pass_fds=[listener.fileno()],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(admin_path), timeout=10)
        first = RawClient(port)
        assert first.join("mapped")["nickname"] == "mapped"
        who = json.loads(ctl(admin_path, "who", "--json").stdout)["clients"]
        assert who[0]["address"].startswith("[::ffff:127.0.0.1]:")
        assert ctl(admin_path, "ban", "127.0.0.0/8").stdout.endswith("kicked mapped\n")
        assert RawClient(port).read()["code"] == "banned"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        listener.close()


def test_the_ban_file_is_written_atomically_on_the_real_daemon(short_tmp):
    """fsync of the temporary file, rename over bans.json, fsync of the folder, in order;
    the temporary file of an unpredictable name, created with O_EXCL and O_NOFOLLOW."""
    assert shutil.which("strace"), ".ci/run installs strace"
    state = os.path.join(short_tmp, "at")
    admin_path = os.path.join(short_tmp, "at.sock")
    trace = os.path.join(short_tmp, "trace")
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
         "-o", trace, sys.executable, "-m", "tcpchatd", "--log-target", "stderr",
         "--listen", "127.0.0.1:0", "--admin-socket", admin_path, "--state-dir", state],
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(admin_path), timeout=30)
        assert ctl(admin_path, "ban", "troll").returncode == 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    with open(trace) as fh:
        calls = fh.read().splitlines()
    bans = os.path.join(state, "bans.json")
    opened = [i for i, c in enumerate(calls) if f'"{state}/.bans.json.' in c
              and "openat(" in c and "O_CREAT" in c]
    assert len(opened) == 1, calls
    assert "O_EXCL" in calls[opened[0]] and "O_NOFOLLOW" in calls[opened[0]]
    assert f'"{state}/.bans.json.{proc.pid}.tmp"' not in calls[opened[0]]
    fds = {}
    for i, call in enumerate(calls):
        match = re.search(r'openat\(AT_FDCWD, "([^"]+)", [^)]*\) = (\d+)', call)
        if match:
            fds.setdefault(match.group(1), []).append((i, match.group(2)))
    temp_fd = fds[calls[opened[0]].split('"')[1]][0][1]
    dir_opens = [(i, fd) for i, fd in fds.get(state, []) if i > opened[0]]
    assert dir_opens, "the folder is opened to be fsynced"
    order = []
    for i, call in enumerate(calls[opened[0]:], opened[0]):
        if re.search(rf"\bfsync\({temp_fd}\)", call) and not order:
            order.append("fsync file")
        elif re.search(rf'rename(at2?)?\(.*"{re.escape(bans)}"', call) and \
                order == ["fsync file"]:
            order.append("rename")
        elif re.search(rf"\bfsync\({dir_opens[0][1]}\)", call) and order == [
                "fsync file", "rename"] and i > dir_opens[0][0]:
            order.append("fsync folder")
    assert order == ["fsync file", "rename", "fsync folder"], calls[opened[0]:]
