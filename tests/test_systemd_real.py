"""The SHIPPED units under a real systemd (a user manager in its own namespaces).

A test drop-in changes only what a user manager or this machine needs: ExecStart (the
test's install), ListenStream (a free port, a temp admin path) and WatchdogSec (shorter).
The system user and admin group come from the shipped sysusers file.
"""

import configparser
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from rawclient import RawClient, wait_for
from systemd_lab import UserManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(ROOT, "contrib", "systemd")
SERVICE, CHAT, ADMIN = "tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket"
# ProtectProc= and ProcSubset= work for a system manager only: under this per-user manager
# the service is never taken as ready with them, so the lab resets those two.
ALLOWED_DROP_IN = {"Service": {"ExecStart", "WatchdogSec", "User", "Group", "DynamicUser",
                               "ProtectProc", "ProcSubset"},
                   "Socket": {"ListenStream", "SocketGroup"}}
LAB_RESETS = "ProtectProc=default\nProcSubset=all\n"


def free_port() -> int:
    # systemd binds the port itself, so the test must name one: ask the kernel for a free
    # one and release it just before the socket unit takes it (loopback only).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    subprocess.run(["systemd-sysusers", os.path.join(UNITS, "tcpchatd.sysusers")], check=True)
    manager = UserManager().start()
    try:
        admin_path = os.path.join(manager.base, "admin", "admin.sock")
        port = free_port()
        drop_ins = {
            SERVICE: "[Service]\nExecStart=\n"
                     f"ExecStart={sys.executable} -m tcpchatd\nWatchdogSec=2\n" + LAB_RESETS,
            CHAT: f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
            ADMIN: f"[Socket]\nListenStream=\nListenStream={admin_path}\n",
        }
        for unit, text in drop_ins.items():
            directory = os.path.join(manager.unit_dir, f"{unit}.d")
            os.makedirs(directory)
            with open(os.path.join(directory, "test.conf"), "w") as fh:
                fh.write(text)
        for unit in (SERVICE, CHAT, ADMIN):
            manager.systemctl("link", os.path.join(UNITS, unit))
        manager.systemctl("daemon-reload")
        manager.port, manager.admin_path, manager.drop_ins = port, admin_path, drop_ins
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def units(lab):
    """Every test starts with the three units stopped and no failure recorded."""
    lab.systemctl("stop", SERVICE, CHAT, ADMIN, check=False)
    lab.systemctl("reset-failed", check=False)
    yield lab
    lab.systemctl("stop", SERVICE, CHAT, ADMIN, check=False)


def active(lab, unit):
    return lab.systemctl("is-active", unit, check=False).stdout.strip()


def ctl(lab, *args):
    return subprocess.run([sys.executable, "-m", "tcpchatd.cli.ctl", "--socket", lab.admin_path,
                           *args], capture_output=True, text=True, timeout=30, cwd="/")


def who(lab):
    result = ctl(lab, "who", "--json")
    assert result.returncode == 0, result.stderr
    return [c["nickname"] for c in json.loads(result.stdout)["clients"]]


def test_drop_in_changes_only_what_is_allowed(lab):
    for unit, text in lab.drop_ins.items():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read_string(text)
        for section in parser.sections():
            assert set(parser[section]) <= ALLOWED_DROP_IN[section], (unit, set(parser[section]))


def test_start_service_alone_brings_up_both_sockets_and_chats(units):
    units.systemctl("start", SERVICE)
    assert [active(units, u) for u in (SERVICE, CHAT, ADMIN)] == ["active"] * 3
    a, b = RawClient(units.port), RawClient(units.port)
    a.join("a")
    b.join("b")
    u = a.say("hello through systemd")
    b.confirm(b.read_until(lambda f: f.get("uuid") == u)["uuid"])
    assert a.read_until(lambda f: f.get("type") == "confirm")["delivered"] == 1
    assert who(units) == ["a", "b"]
    pid = units.main_pid(SERVICE)
    with open(f"/proc/{pid}/status") as fh:
        uid_line = [l for l in fh if l.startswith("Uid:")][0]
    import pwd
    assert int(uid_line.split()[1]) == pwd.getpwnam("tcpchatd").pw_uid  # not root
    assert "clients; listening on" in units.show(SERVICE, "StatusText")


def test_socket_activation_on_first_connection(units):
    units.systemctl("start", CHAT, ADMIN)
    assert active(units, SERVICE) == "inactive"
    client = RawClient(units.port, timeout=15)
    assert client.join("first")["nickname"] == "first"
    assert active(units, SERVICE) == "active"
    assert who(units) == ["first"]


def test_admin_socket_activates_and_survives_restarts(units):
    units.systemctl("start", CHAT, ADMIN)
    st = os.stat(units.admin_path)
    import grp
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == grp.getgrnam("tcpchatd-admin").gr_gid
    assert who(units) == []  # the admin connection itself starts the service
    assert active(units, SERVICE) == "active"
    units.systemctl("restart", SERVICE)
    assert os.path.exists(units.admin_path) and who(units) == []
    c = RawClient(units.port)
    c.join("after-restart")
    assert who(units) == ["after-restart"]


def test_reload_keeps_connected_clients(units):
    units.systemctl("start", SERVICE)
    pid = units.main_pid(SERVICE)
    a, b = RawClient(units.port), RawClient(units.port)
    a.join("a")
    b.join("b")
    units.systemctl("reload", SERVICE)
    assert units.main_pid(SERVICE) == pid and active(units, SERVICE) == "active"
    u = a.say("still here after reload")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: still here after reload"


def test_watchdog_restarts_a_stopped_daemon(units):
    units.systemctl("start", SERVICE)
    pid = units.main_pid(SERVICE)
    restarts = int(units.show(SERVICE, "NRestarts"))
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: units.main_pid(SERVICE) not in (0, pid)
                 and active(units, SERVICE) == "active", timeout=40, interval=0.2)
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
    assert int(units.show(SERVICE, "NRestarts")) == restarts + 1
    assert units.show(SERVICE, "Result") in ("success", "watchdog")
    assert who(units) == []  # the admin socket kept listening through it
    c = RawClient(units.port)
    assert c.join("back")["nickname"] == "back"


def test_stop_is_clean_and_clients_hear_of_it(units):
    units.systemctl("start", SERVICE)
    c = RawClient(units.port)
    c.join("c")
    units.systemctl("stop", SERVICE)
    assert c.read_until(lambda f: f.get("event") == "shutdown")["message"] == \
        "Server is shutting down"
    assert active(units, SERVICE) == "inactive"  # not failed: exit status 0
    assert units.show(SERVICE, "Result") == "success"
    assert units.show(SERVICE, "ExecMainStatus") == "0"
    assert active(units, CHAT) == "active" and active(units, ADMIN) == "active"


def test_a_ban_survives_a_restart_of_the_service(units):
    units.systemctl("start", SERVICE)
    result = ctl(units, "ban", "spammer", "--reason", "lab")
    assert result.returncode == 0, result.stderr
    units.systemctl("restart", SERVICE)
    listed = json.loads(ctl(units, "bans", "--json").stdout)["bans"]
    assert [(b["target"], b["reason"]) for b in listed] == [("spammer", "lab")]
    c = RawClient(units.port)
    assert c.recv_exact(10) == b"_nickname_"
    c.send_raw(b"SPAMMER")
    assert c.read()["code"] == "banned"
    assert ctl(units, "unban", "spammer").returncode == 0
