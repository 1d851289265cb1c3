"""The SHIPPED units under a real systemd (a user manager in its own namespaces).

A test drop-in changes only what a user manager or this machine needs: ExecStart (the
test's install), ListenStream (a free port, a temp admin path) and WatchdogSec (shorter).
The system user and admin group come from the shipped sysusers file.
"""

import configparser
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from conftest import ctl, free_port
from rawclient import RawClient, TlsRawClient, wait_for
from systemd_lab import UserManager


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(ROOT, "contrib", "systemd")
SERVICE, CHAT, ADMIN = "tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket"
TLS = "tcpchatd-tls.socket"
METRICS = "tcpchatd-metrics.socket"
# ProtectProc=, ProcSubset=, ProtectKernelTunables= and ProtectControlGroups= work for a
# system manager only (test_package.py runs the unit as shipped under one): under this
# per-user manager the service is never taken as ready with them, so the lab resets those.
ALLOWED_DROP_IN = {"Service": {"ExecStart", "WatchdogSec", "User", "Group", "DynamicUser",
                               "ProtectProc", "ProcSubset", "ProtectKernelTunables",
                               "ProtectControlGroups"},
                   "Socket": {"ListenStream", "SocketGroup"}}
LAB_RESETS = ("ProtectProc=default\nProcSubset=all\nProtectKernelTunables=no\n"
              "ProtectControlGroups=no\n")


@pytest.fixture(scope="module")
def lab():
    subprocess.run(["systemd-sysusers", os.path.join(UNITS, "tcpchatd.sysusers")], check=True)
    manager = UserManager().start()
    try:
        admin_path = os.path.join(manager.base, "admin", "admin.sock")
        port, tls_port, metrics_port = free_port(), free_port(), free_port()
        drop_ins = {
            SERVICE: "[Service]\nExecStart=\n"
                     f"ExecStart={sys.executable} -m tcpchatd\nWatchdogSec=2\n" + LAB_RESETS,
            CHAT: f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
            ADMIN: f"[Socket]\nListenStream=\nListenStream={admin_path}\n",
            TLS: f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{tls_port}\n",
            METRICS: f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{metrics_port}\n",
        }
        for unit, text in drop_ins.items():
            directory = os.path.join(manager.unit_dir, f"{unit}.d")
            os.makedirs(directory)
            with open(os.path.join(directory, "test.conf"), "w") as fh:
                fh.write(text)
        for unit in (SERVICE, CHAT, ADMIN, TLS, METRICS):
            manager.systemctl("link", os.path.join(UNITS, unit))
        manager.systemctl("daemon-reload")
        manager.port, manager.admin_path, manager.drop_ins = port, admin_path, drop_ins
        manager.tls_port, manager.metrics_port = tls_port, metrics_port
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def units(lab):
    """Every test starts with the three units stopped and no failure recorded."""
    lab.systemctl("stop", SERVICE, CHAT, ADMIN, TLS, METRICS, check=False)
    lab.systemctl("reset-failed", check=False)
    yield lab
    lab.systemctl("stop", SERVICE, CHAT, ADMIN, TLS, METRICS, check=False)


def active(lab, unit):
    return lab.systemctl("is-active", unit, check=False).stdout.strip()


def lab_ctl(lab, *args):
    return ctl(lab.admin_path, *args)


def who(lab):
    result = lab_ctl(lab, "who", "--json")
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
    result = lab_ctl(units, "ban", "spammer", "--reason", "lab")
    assert result.returncode == 0, result.stderr
    units.systemctl("restart", SERVICE)
    listed = json.loads(lab_ctl(units, "bans", "--json").stdout)["bans"]
    assert [(b["target"], b["reason"]) for b in listed] == [("spammer", "lab")]
    c = RawClient(units.port)
    assert c.recv_exact(10) == b"_nickname_"
    c.send_raw(b"SPAMMER")
    assert c.read()["code"] == "banned"
    assert lab_ctl(units, "unban", "spammer").returncode == 0


# --- TLS through the shipped tcpchatd-tls.socket

def test_a_tls_socket_without_a_certificate_leaves_tls_unserved_and_chat_on(units):
    units.systemctl("start", TLS, SERVICE)
    assert active(units, SERVICE) == "active"
    assert "TLS not served" in units.show(SERVICE, "StatusText")
    c = RawClient(units.port)
    assert c.join("plain")["nickname"] == "plain"
    assert int(units.show(SERVICE, "NRestarts")) == 0


@pytest.fixture
def group_readable_pair(units, certs):
    """The README's second way: a pair the service's group can read, named by flags (the
    lab changes ExecStart anyway; an operator writes tls_cert and tls_key in the config)."""
    import grp
    folder = os.path.join(units.base, "tls")
    os.mkdir(folder, 0o750)
    gid = grp.getgrnam("tcpchatd").gr_gid
    os.chown(folder, 0, gid)
    for name in ("one.crt", "one.key"):
        target = os.path.join(folder, name)
        subprocess.run(["cp", certs(name), target], check=True)
        os.chown(target, 0, gid)
        os.chmod(target, 0o640)
    text = (units.drop_ins[SERVICE].replace(
        "-m tcpchatd\n", f"-m tcpchatd --tls-cert {folder}/one.crt "
                         f"--tls-key {folder}/one.key\n"))
    path = os.path.join(units.unit_dir, f"{SERVICE}.d", "test.conf")
    with open(path, "w") as fh:
        fh.write(text)
    units.systemctl("daemon-reload")
    yield text
    with open(path, "w") as fh:
        fh.write(units.drop_ins[SERVICE])
    units.systemctl("stop", SERVICE, TLS, check=False)
    units.systemctl("daemon-reload")
    shutil.rmtree(folder)


def test_tls_through_the_shipped_socket_with_a_real_certificate(units, group_readable_pair,
                                                                certs):
    units.systemctl("start", TLS, SERVICE)
    assert "TLS not served" not in units.show(SERVICE, "StatusText")
    secure = TlsRawClient(units.tls_port, ssl.create_default_context(cafile=certs("ca.crt")))
    assert secure.join("secure")["nickname"] == "secure"
    plain = RawClient(units.port)
    plain.join("plain")
    u = plain.say("to both kinds")
    assert secure.read_until(lambda f: f.get("uuid") == u)["message"] == "plain: to both kinds"
    result = lab_ctl(units, "who", "--json")
    assert {c["nickname"]: c["tls"] for c in json.loads(result.stdout)["clients"]} == {
        "secure": True, "plain": False}
    assert "tls_cert_expires" in json.loads(lab_ctl(units, "stats", "--json").stdout)
    units.systemctl("reload", SERVICE)  # a renewal hook's reload: the client stays
    v = plain.say("after the reload")
    assert secure.read_until(lambda f: f.get("uuid") == v)["message"] == "plain: after the reload"
    assert int(units.show(SERVICE, "NRestarts")) == 0


def test_a_hitless_upgrade_under_systemd(units):
    """tcpchatctl upgrade under the shipped (hardened) unit: same MainPID, no restart
    counted, the watchdog fed by the new image, the clients still chatting."""
    units.systemctl("start", SERVICE)
    pid = units.main_pid(SERVICE)
    a, b = RawClient(units.port), RawClient(units.port)
    a.join("a")
    b.join("b")
    result = lab_ctl(units, "upgrade")
    assert result.returncode == 0, result.stderr
    assert f"(pid {pid}); 2 clients carried" in result.stdout
    u = a.say("through the upgrade")
    assert b.read_until(lambda f: f.get("uuid") == u)["message"] == "a: through the upgrade"
    import time
    time.sleep(3)  # past WatchdogSec=2: only pings from the new image keep it alive
    assert units.main_pid(SERVICE) == pid and active(units, SERVICE) == "active"
    assert int(units.show(SERVICE, "NRestarts")) == 0
    assert units.show(SERVICE, "Result") == "success"
    v = b.say("and after")
    assert a.read_until(lambda f: f.get("uuid") == v)["message"] == "b: and after"
    assert json.loads(lab_ctl(units, "stats", "--json").stdout)["upgrades"] == 1


def test_metrics_through_the_shipped_socket_and_a_hitless_upgrade(units):
    """tcpchatd-metrics.socket: a scrape starts the daemon (socket activation), which
    serves /metrics on the socket passed (FileDescriptorName=metrics); the same socket
    answers through `tcpchatctl upgrade`."""
    from test_metrics import scrape
    units.systemctl("start", METRICS)
    assert active(units, SERVICE) == "inactive"
    first = scrape(units.metrics_port)  # waits in the backlog while the daemon starts
    assert active(units, SERVICE) == "active"
    assert first[("tcpchatd_members", ())] == 0
    pid = units.main_pid(SERVICE)
    client = RawClient(units.port)
    client.join("scraped")
    assert lab_ctl(units, "upgrade").returncode == 0
    after = scrape(units.metrics_port)
    assert (after[("tcpchatd_members", ())], after[("tcpchatd_upgrades_total", ())]) == (1, 1)
    assert units.main_pid(SERVICE) == pid
    listening = units.show(METRICS, "Listen")
    assert f"127.0.0.1:{units.metrics_port}" in listening


@pytest.fixture
def chat_socket_masked(units):
    """The README's TLS-only set-up: tcpchatd.socket masked (here its link replaced by
    the mask), the TLS socket enabled; restored afterwards."""
    link = os.path.join(units.unit_dir, CHAT)
    os.unlink(link)
    units.systemctl("mask", CHAT)
    units.systemctl("daemon-reload")
    yield units
    units.systemctl("stop", SERVICE, TLS, check=False)
    units.systemctl("unmask", CHAT)
    units.systemctl("link", os.path.join(UNITS, CHAT))
    units.systemctl("daemon-reload")


def test_tls_only_with_the_plaintext_socket_masked(chat_socket_masked, group_readable_pair,
                                                   certs):
    units = chat_socket_masked
    units.systemctl("start", TLS, SERVICE)
    assert active(units, SERVICE) == "active" and active(units, CHAT) != "active"
    status = units.show(SERVICE, "StatusText")
    assert status.endswith(f"listening on 127.0.0.1:{units.tls_port} (tls)"), status
    with pytest.raises(ConnectionRefusedError):  # neither systemd nor the daemon has it
        socket.create_connection(("127.0.0.1", units.port), timeout=5)
    with pytest.raises(ConnectionRefusedError):  # nor the daemon's own default
        socket.create_connection(("127.0.0.1", 55555), timeout=5)
    secure = TlsRawClient(units.tls_port, ssl.create_default_context(cafile=certs("ca.crt")))
    assert secure.join("secure")["nickname"] == "secure"
    assert who(units) == ["secure"]


def test_history_and_accounts_survive_a_restart_of_the_service(units):
    """Issues 26 and 27 under the shipped unit: the accounts and the lasting history are
    in its StateDirectory, and `systemctl restart` keeps both."""
    from conftest import CTL
    from test_history import answer
    units.systemctl("start", SERVICE)
    added = subprocess.run([*CTL, "--socket", units.admin_path, "account", "add", "lab"],
                           input="lab password\n", text=True, capture_output=True,
                           timeout=30)
    assert added.returncode == 0, added.stderr
    ann = RawClient(units.port)
    ann.join("ann")
    sent = [ann.say(f"before the restart {n}") for n in range(5)]
    wait_for(lambda: json.loads(lab_ctl(units, "stats", "--json").stdout)[
        "history_written"] == 5, timeout=10)
    units.systemctl("restart", SERVICE)
    lab = RawClient(units.port)
    assert lab.hello(account="lab", password="lab password")["event"] == "login"
    lab.joined()
    page = answer(lab, "history", limit=5)  # (the lab's earlier tests chatted too)
    assert [m["uuid"] for m in page["messages"]] == sent
    assert lab_ctl(units, "account", "del", "lab").returncode == 0
