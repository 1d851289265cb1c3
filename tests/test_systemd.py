"""systemd glue without a manager: LISTEN_FDS, notifications, watchdog, --daemon, units."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tcpchatd.service import systemd
from tcpchatd.service.config import Config
from tcpchatd.chat.hall import Hall
from tcpchatd.cluster.local import LocalBroker
from tcpchatd.net.engine import Engine
from tcpchatd.net.listeners import bind_listener

from conftest import RecordingLog, client_context, lock_held_by_another_thread, status_port
from rawclient import RawClient, TlsRawClient, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(ROOT, "contrib", "systemd")
PROBE = "from tcpchatd.service import systemd; import json, sys\n" \
        "try:\n print(json.dumps([[n, s.family.name, s.getsockname() if s.family.name != " \
        "'AF_UNIX' else s.getsockname()] for n, s in systemd.listen_fds()]))\n" \
        "except systemd.InheritedSocketError as e:\n print('ERROR', e)"


def with_fds(argv, fds, names=None, pid="self", extra_env=None):
    """Run argv with `fds` moved to 3, 4, ... and LISTEN_* set as systemd would."""
    redirects = " ".join(f"{3 + i}<&{fd}" for i, fd in enumerate(fds))
    listen_pid = "$$" if pid == "self" else str(pid)
    env_part = f"LISTEN_PID={listen_pid} LISTEN_FDS={len(fds)}"
    if names is not None:
        env_part += f" LISTEN_FDNAMES={names}"
    script = f'{env_part} exec "$@" {redirects}'
    return ["bash", "-c", script, "bash", *argv]


def probe(fds, **kwargs):
    out = subprocess.run(with_fds([sys.executable, "-c", PROBE], fds, **kwargs),
                         pass_fds=fds, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_listen_fds_names_and_unnamed_are_chat(short_tmp):
    tcp = bind_listener("127.0.0.1", 0)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(os.path.join(short_tmp, "a.sock"))
    unix.listen()
    with tcp, unix:
        result = json.loads(probe([tcp.fileno(), unix.fileno()], names="chat:admin"))
        assert [r[0] for r in result] == ["chat", "admin"]
        assert result[0][2][1] == tcp.getsockname()[1]
        assert [r[0] for r in json.loads(probe([tcp.fileno()]))] == ["chat"]


def test_listen_fds_wrong_pid_or_no_variables():
    tcp = bind_listener("127.0.0.1", 0)
    with tcp:
        assert probe([tcp.fileno()], pid=1) == "[]"
    assert systemd.listen_fds(environ={}) == []
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd.listen_fds(environ=env, pid=2) == [] and env == {}  # unset either way


def test_listen_fds_refuses_a_socket_that_does_not_listen():
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))  # bound, not listening
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tcp, udp:
        assert "not a listening stream socket" in probe([tcp.fileno()])
        assert "not a listening stream socket" in probe([udp.fileno()])
    read_end, write_end = os.pipe()
    try:
        assert "is not a socket" in probe([read_end])
    finally:
        os.close(read_end)
        os.close(write_end)


def test_daemon_exits_1_on_a_bad_inherited_fd(short_tmp):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    with tcp:
        result = subprocess.run(
            with_fds([sys.executable, "-m", "tcpchatd", "--log-target", "stderr",
                      "--admin-socket", os.path.join(short_tmp, "x.sock")], [tcp.fileno()]),
            pass_fds=[tcp.fileno()], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == "tcpchatd: fd 3 (chat) passed by systemd is not a " \
                                    "listening stream socket"


def test_tls_only_sockets_from_systemd_bind_no_plaintext_port(short_tmp, certs):
    """A TLS-only set-up: systemd passes chat-tls and admin (tcpchatd.socket masked).
    The daemon serves TLS alone and binds no plaintext listener of its own, though the
    config names one (and says that it is not used)."""
    tls = bind_listener("127.0.0.1", 0)
    admin_path = os.path.join(short_tmp, "to.sock")
    admin_sock = socket.socket(socket.AF_UNIX)
    admin_sock.bind(admin_path)
    admin_sock.listen()
    with socket.socket() as probe_sock:  # a free port the config asks for
        probe_sock.bind(("127.0.0.1", 0))
        plain_port = probe_sock.getsockname()[1]
    fds = [tls.fileno(), admin_sock.fileno()]
    notify_path = os.path.join(short_tmp, "n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    proc = subprocess.Popen(
        with_fds([sys.executable, "-m", "tcpchatd", "--log-target", "stderr",
                  "--listen", f"127.0.0.1:{plain_port}", "--tls-cert", certs("one.crt"),
                  "--tls-key", certs("one.key"), "--state-dir",
                  os.path.join(short_tmp, "st")], fds, names="chat-tls:admin"),
        pass_fds=fds, env=dict(os.environ, NOTIFY_SOCKET=notify_path),
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready
        status = [line for line in ready.splitlines() if line.startswith("STATUS=")][0]
        assert status.endswith(f"listening on 127.0.0.1:{tls.getsockname()[1]} (tls)"), status
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", plain_port), timeout=5)
        secure = TlsRawClient(tls.getsockname()[1], client_context(certs))
        assert secure.join("secure")["nickname"] == "secure"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "listen not used: systemd passed the chat sockets" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        tls.close()
        admin_sock.close()


def test_socket_activation_end_to_end_without_a_manager(short_tmp):
    chat = bind_listener("127.0.0.1", 0)
    admin_path = os.path.join(short_tmp, "sa.sock")
    admin_sock = socket.socket(socket.AF_UNIX)
    admin_sock.bind(admin_path)
    admin_sock.listen()
    port = chat.getsockname()[1]
    fds = [chat.fileno(), admin_sock.fileno()]
    notify_path = os.path.join(short_tmp, "n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        with_fds([sys.executable, "-m", "tcpchatd", "--log-target", "stderr",
                  "--listen", "127.0.0.1:1"], fds, names="chat:admin"),
        pass_fds=fds, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready and f"127.0.0.1:{port}" in ready  # not the --listen one
        a, b = RawClient(port), RawClient(port)
        a.join("a")
        b.join("b")
        u = a.say("through an inherited socket")
        b.confirm(b.read_until(lambda f: f.get("uuid") == u)["uuid"])
        assert a.read_until(lambda f: f.get("type") == "confirm")["delivered"] == 1
        who = subprocess.run([sys.executable, "-m", "tcpchatd.cli.ctl", "--socket", admin_path,
                              "who"], capture_output=True, text=True, timeout=30, cwd="/")
        assert who.returncode == 0 and "a " in who.stdout and "b " in who.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        said = proc.stderr.read()
        assert "admin socket from systemd" in said
        assert ("tcpchatd: listen not used: systemd passed the chat sockets (change "
                "ListenStream= in a drop-in for tcpchatd.socket or tcpchatd-tls.socket "
                "instead)") in said
        assert "settings_ignored names=listen" in said
        assert os.path.exists(admin_path)  # never unlinked: it belongs to systemd
        # the sockets are still usable by "systemd" (us): a new daemon can take them over
        assert chat.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        chat.close()
        admin_sock.close()
        notify.close()


def test_notifications_in_order_over_reload_and_stop(daemon_factory, short_tmp):
    conf = os.path.join(short_tmp, "r.toml")
    with open(conf, "w") as fh:
        fh.write("max_text = 4096\n")
    d = daemon_factory("--config", conf, env={"WATCHDOG_USEC": "400000"})
    port = status_port(d)
    a, b = RawClient(port), RawClient(port)
    a.join("a")
    b.join("b")
    d.wait_notify("WATCHDOG=1")

    def reload_with(text, readies):
        with open(conf, "w") as fh:
            fh.write(text)
        d.signal(signal.SIGHUP)
        wait_for(lambda: sum("READY=1" in m for m in d.drain_notify()) == readies)

    # reload with a new limit: applied, no client dropped
    reload_with("max_text = 20\n", readies=2)
    a.say("x" * 30)
    assert a.read_until(lambda f: f.get("event") == "error")["code"] == "text_too_long"
    u = a.say("short")
    assert b.read_until(lambda f: f.get("type") == "message")["uuid"] == u
    # an invalid file keeps the running settings and says why
    reload_with("max_text = 'lots'\n", readies=3)
    a.say("y" * 30)
    assert a.read_until(lambda f: f.get("event") == "error")["code"] == "text_too_long"
    assert d.stop() == 0
    messages = d.drain_notify()
    kinds = []
    for m in messages:
        first = m.splitlines()[0].split("=")[0]
        if not kinds or kinds[-1] != first or first != "WATCHDOG":
            kinds.append(first)
    kinds = [k for k in kinds if k in ("READY", "RELOADING", "STOPPING")]
    assert kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]
    reloading = [m for m in messages if m.startswith("RELOADING=1")]
    assert all(re.search(r"^MONOTONIC_USEC=\d+$", m, re.M) for m in reloading)
    failed = [m for m in messages if "reload failed" in m]
    assert len(failed) == 1 and "bad value for max_text" in failed[0]
    assert "STATUS=2 clients; listening on 127.0.0.1:" in "\n".join(messages)
    assert "reload ok=yes" in d.stderr() and "reload ok=no error=" in d.stderr()


@pytest.fixture
def notify_socket(short_tmp, monkeypatch):
    path = os.path.join(short_tmp, "wd")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def received(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


class Ptrace:
    """Stops ONE thread of another process, as a wedged thread would be stopped:
    PTRACE_SEIZE then PTRACE_INTERRUPT halt that thread alone (SIGSTOP would halt all)."""

    SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17

    def __init__(self) -> None:
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]

    def _call(self, request: int, tid: int) -> None:
        import ctypes
        if self.libc.ptrace(request, tid, None, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    def stop(self, tid: int) -> None:
        self._call(self.SEIZE, tid)
        self._call(self.INTERRUPT, tid)
        os.waitpid(tid, 0x40000000)  # __WALL: wait for a thread that is not our child

    def resume(self, tid: int) -> None:
        self._call(self.DETACH, tid)


def thread_named(pid: int, name: str) -> int:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            if fh.read().strip() == name:
                return int(tid)
    raise AssertionError(f"no thread {name!r} in {pid}")


@pytest.mark.parametrize("wedged", ["tcpchatd io 0", "tcpchatd io 1", "tcpchatd accept"])
def test_the_watchdog_stops_pinging_while_one_thread_of_the_real_daemon_is_wedged(
        daemon_factory, wedged):
    """The daemon's own checks: every loop turns, the accept thread ticks. One stopped
    thread is enough to stop the pings; the chat goes on in the other loop meanwhile."""
    d = daemon_factory("--io-threads", "2", env={"WATCHDOG_USEC": "400000"})
    d.wait_notify("WATCHDOG=1")
    tid = thread_named(d.proc.pid, wedged)
    tracer = Ptrace()
    tracer.stop(tid)
    stopped = time.monotonic()
    pings = []  # read as they come: a full notify socket would block the daemon's pings
    try:
        while time.monotonic() - stopped < 6.5:
            d.messages.clear()
            d.notify.settimeout(0.05)
            try:
                if d.notify.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic() - stopped)
            except TimeoutError:
                pass
    finally:
        tracer.resume(tid)
    # pings go on while the stopped thread's last turn is recent (8 loop ticks, 4 s) ...
    assert pings and pings[0] < 1.0
    # ... and never after: a wedged loop or accept thread gets the service restarted
    assert pings[-1] < 5.0, pings[-5:]
    d.messages.clear()
    d.wait_notify("WATCHDOG=1", timeout=5)  # it turns again: the pings come back


def test_the_watchdog_never_pings_while_the_hall_lock_cannot_be_taken(notify_socket):
    hall = Hall(Config(), RecordingLog(), channel=Engine(1).channel, broker=LocalBroker())
    watchdog = systemd.Watchdog(systemd.Notifier(), 1.0, [lambda: hall.probe(0.1)])
    assert watchdog.tick(1000.0) and received(notify_socket) == ["WATCHDOG=1"]
    with lock_held_by_another_thread(hall.lock):
        assert not watchdog.tick(1001.0) and received(notify_socket) == []
    assert watchdog.tick(1002.0) and received(notify_socket) == ["WATCHDOG=1"]


def test_watchdog_interval_from_the_environment():
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}, pid=5) == 10.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4"},
                                     pid=5) is None
    assert systemd.watchdog_interval({}, pid=5) is None


def alive(pid):
    """Running, not a zombie waiting for PID 1 to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_pid(path):
    with open(path) as fh:
        return int(fh.read())


def test_daemon_mode_detaches_writes_and_removes_its_pid_file(short_tmp):
    pid_file = os.path.join(short_tmp, "d.pid")
    admin_path = os.path.join(short_tmp, "d.sock")
    chat = bind_listener("127.0.0.1", 0)  # reserve a port, hand it over by address
    port = chat.getsockname()[1]
    chat.close()
    argv = [sys.executable, "-m", "tcpchatd", "--daemon", "--pid-file", pid_file,
            "--admin-socket", admin_path, "--listen", f"127.0.0.1:{port}",
            "--log-target", "stderr"]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = read_pid(pid_file)  # there when the command returns: it waited for the daemon
    assert started.stderr == (f"tcpchatd: running in the background as pid {pid}, listening "
                              f"on 127.0.0.1:{port}; pid file {pid_file}\n")
    try:
        assert pid != os.getpid()
        os.kill(pid, 0)  # alive
        assert os.getsid(pid) != os.getsid(0)  # detached from our session
        client = RawClient(port)  # its listening socket survived the detach
        assert client.join("d")["nickname"] == "d"
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == f"tcpchatd: pid file {pid_file} names a running " \
                                        f"process ({pid}); is tcpchatd already running?"
        os.kill(pid, signal.SIGTERM)
        assert client.read_until(lambda f: f.get("event") == "shutdown")
        wait_for(lambda: not os.path.exists(pid_file), timeout=10)
        wait_for(lambda: not alive(pid), timeout=10)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_daemon_mode_replaces_a_stale_pid_file_and_never_forks_under_a_manager(
        daemon_factory, short_tmp):
    pid_file = os.path.join(short_tmp, "s.pid")
    with open(pid_file, "w") as fh:
        fh.write("999999\n")  # no such process
    # our NOTIFY_SOCKET marks a service manager: --daemon stays in the foreground
    d = daemon_factory("--daemon", "--pid-file", pid_file)
    status_port(d)
    assert d.proc.poll() is None
    notes = [l for l in d.stderr().splitlines() if "does not fork" in l]
    assert notes == ["tcpchatd: a service manager runs this process: --daemon does not fork"]
    assert d.stop() == 0


def test_daemon_mode_with_a_relative_config_reloads_it(short_tmp):
    pid_file = os.path.join(short_tmp, "r.pid")
    conf = os.path.join(short_tmp, "rel.toml")
    with open(conf, "w") as fh:
        fh.write("max_clients = 5\n")
    chat = bind_listener("127.0.0.1", 0)
    port = chat.getsockname()[1]
    chat.close()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "tcpchatd", "--daemon", "--config", "rel.toml",
            "--pid-file", pid_file, "--admin-socket", os.path.join(short_tmp, "r.sock"),
            "--listen", f"127.0.0.1:{port}"]
    assert subprocess.run(argv, env=env, cwd=short_tmp, timeout=30).returncode == 0
    pid = read_pid(pid_file)
    try:
        with open(conf, "w") as fh:
            fh.write("max_clients = 1\n")
        os.kill(pid, signal.SIGHUP)  # the detached daemon runs in /: the path was resolved
        first = RawClient(port)
        first.join("first")
        wait_for(lambda: RawClient(port).read_item() != b"_nickname_", timeout=10)
        assert RawClient(port).read()["code"] == "server_full"
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), timeout=10)


def test_daemon_mode_replaces_a_stale_pid_file(short_tmp):
    pid_file = os.path.join(short_tmp, "t.pid")
    with open(pid_file, "w") as fh:
        fh.write("999999\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "tcpchatd", "--daemon", "--pid-file", pid_file,
            "--admin-socket", os.path.join(short_tmp, "t.sock"), "--listen", "127.0.0.1:0"]
    assert subprocess.run(argv, env=env, timeout=30).returncode == 0
    wait_for(lambda: os.path.exists(pid_file) and read_pid(pid_file) != 999999)
    pid = read_pid(pid_file)
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(pid_file), timeout=10)
        wait_for(lambda: not alive(pid), timeout=10)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


UNIT_FILES = ["tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket",
              "tcpchatd-tls.socket", "tcpchatd-web.socket", "tcpchatd-web-tls.socket",
              "tcpchatd-irc.socket", "tcpchatd-irc-tls.socket", "tcpchatd-metrics.socket"]


def test_systemd_analyze_verify_is_clean():
    assert os.path.exists("/usr/local/bin/tcpchatd"), \
        "install as the README says (.ci/run links /usr/local/bin/tcpchatd)"
    result = subprocess.run(["systemd-analyze", "verify",
                             *[os.path.join(UNITS, u) for u in UNIT_FILES]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys and bad values only warn


def test_systemd_analyze_verify_catches_a_typo(short_tmp):
    for name in UNIT_FILES:
        with open(os.path.join(UNITS, name)) as src, \
                open(os.path.join(short_tmp, name), "w") as dst:
            dst.write(src.read().replace("WatchdogSec=", "WatchdogSecs="))
    result = subprocess.run(["systemd-analyze", "verify",
                             *[os.path.join(short_tmp, u) for u in UNIT_FILES]],
                            capture_output=True, text=True, timeout=60)
    assert "WatchdogSecs" in result.stderr  # what the clean-stderr check above relies on


def unit_settings(name):
    settings = {}
    with open(os.path.join(UNITS, name)) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def test_units_say_what_the_design_asks():
    service = unit_settings("tcpchatd.service")
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    # the admin socket required; the plaintext one wanted (a TLS-only set-up masks it)
    assert service["Requires"] == ["tcpchatd-admin.socket"]
    assert service["Wants"] == ["tcpchatd.socket"]
    assert set(service["After"][0].split()) >= {"tcpchatd.socket", "tcpchatd-admin.socket",
                                                 "tcpchatd-tls.socket", "tcpchatd-web.socket",
                                                 "tcpchatd-web-tls.socket",
                                                 "tcpchatd-irc.socket",
                                                 "tcpchatd-irc-tls.socket",
                                                 "tcpchatd-metrics.socket"}
    assert service["Documentation"] == ["man:tcpchatd(8) man:tcpchatctl(1)"]
    assert "RuntimeDirectory" not in service
    assert service["CapabilityBoundingSet"] == [""]
    assert service["LogRateLimitIntervalSec"] == ["0"]
    # clients cost no threads: a handful of tasks, not one per client
    assert 32 <= int(service["TasksMax"][0]) < Config().max_clients
    assert int(service["LimitNOFILE"][0]) >= Config().max_clients
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    chat = unit_settings("tcpchatd.socket")
    assert chat["ListenStream"] == [str(Config().listen_addresses()[0][1])]
    assert chat["FileDescriptorName"] == ["chat"]
    admin = unit_settings("tcpchatd-admin.socket")
    assert admin["ListenStream"] == ["/run/tcpchatd/admin.sock"]
    assert admin["SocketMode"] == ["0660"] and admin["SocketGroup"] == ["tcpchatd-admin"]
    assert admin["FileDescriptorName"] == ["admin"]
    tls = unit_settings("tcpchatd-tls.socket")
    assert tls["ListenStream"] == ["55556"] and tls["FileDescriptorName"] == ["chat-tls"]
    assert tls["Service"] == ["tcpchatd.service"]
    from tcpchatd.net.listeners import DOOR_KINDS
    for kind, port in zip(DOOR_KINDS, ("55580", "55581", "6667", "6697"), strict=True):
        name = f"tcpchatd-{kind}.socket"  # optional: the operator enables it
        assert name not in " ".join(service.get("Requires", []) + service.get("Wants", []))
        door = unit_settings(name)
        assert door["ListenStream"] == [port] and door["FileDescriptorName"] == [kind]
        assert door["Service"] == ["tcpchatd.service"]


def test_the_service_is_hardened_to_an_exposure_of_at_most_2():
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             os.path.join(UNITS, "tcpchatd.service")],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for tcpchatd\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= 2.0
    with open(os.path.join(UNITS, "tcpchatd.service")) as fh:
        unit = fh.read()
    for setting in ("SystemCallFilter=@system-service", "ProtectProc=invisible",
                    "ProcSubset=pid", "PrivateMounts=yes", "RemoveIPC=yes",
                    "MemoryDenyWriteExecute=yes", "ProtectKernelTunables=yes",
                    "ProtectControlGroups=yes"):
        assert re.search(rf"^{re.escape(setting)}$", unit, re.M), setting


def test_the_pid_file_is_never_written_through_a_planted_link(tmp_path):
    """Its temporary file's name cannot be guessed (store/files.py); the names an older
    version used, links planted there included, are left alone (issue 23, item 7)."""
    from tcpchatd.service import pidfile
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious\n")
    path = tmp_path / "tcpchatd.pid"
    for guess in (f"tcpchatd.pid.{os.getpid()}.tmp", f".tcpchatd.pid.{os.getpid()}.tmp"):
        (tmp_path / guess).symlink_to(elsewhere)
    pidfile.write(str(path))
    assert path.read_text() == f"{os.getpid()}\n" and not path.is_symlink()
    assert elsewhere.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == [
        "elsewhere", "tcpchatd.pid"]  # no temporary file left
