"""Fixtures: in-process chat servers on port 0, real daemon subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rawclient import RawClient  # noqa: E402

from tcpchatd.service.config import Config  # noqa: E402
from tcpchatd.chat.hall import Hall  # noqa: E402
from tcpchatd.chat.logins import Logins  # noqa: E402
from tcpchatd.store.history import HistoryStore  # noqa: E402
from tcpchatd.cluster.local import LocalBroker  # noqa: E402
from tcpchatd.net.listeners import ChatServer, bind_listener  # noqa: E402
from tcpchatd.net.engine import Engine  # noqa: E402


@contextlib.contextmanager
def lock_held_by_another_thread(lock):
    """A stuck thread holds `lock` for the duration of the block (a wedged room)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)
    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(5)


class RecordingLog:
    """Collects traffic-log events in memory for in-process tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.dropped = 0

    def event(self, name: str, **fields) -> None:
        self.events.append((name, fields))

    def named(self, name: str) -> list[dict]:
        return [fields for event, fields in list(self.events) if event == name]


@dataclass
class ChatHandle:
    server: ChatServer
    hall: Hall
    log: RecordingLog
    port: int
    tracebacks: list = field(default_factory=list)
    clients: list = field(default_factory=list)
    web_port: int = 0  # the web listener's, when made with web=True
    irc_port: int = 0  # the IRC listener's, when made with irc=True

    def irc(self, nickname: str | None = None, caps: str = ""):
        """An IRC client on the IRC listener (ircclient.py), registered if named."""
        from ircclient import IrcClient
        client = IrcClient(self.irc_port)
        self.clients.append(client)
        if nickname is not None:
            client.register(nickname, caps)
        return client

    def browser(self, nickname: str | None = None, **kwargs):
        """A WebSocket client on the web listener (wsclient.py), joined if named."""
        from wsclient import WsClient
        client = WsClient(self.web_port, **kwargs)
        self.clients.append(client)
        if nickname is not None:
            client.join(nickname)
        return client

    def client(self, nickname: str | None = None, **kwargs) -> RawClient:
        client = RawClient(self.port, **kwargs)
        self.clients.append(client)
        if nickname is not None:
            client.join(nickname)
        return client


@pytest.fixture
def chat():
    """make(**settings) -> a running in-process server (hall, accept loops, ticker)."""
    handles: list[ChatHandle] = []
    stores: list = []
    stop = threading.Event()

    def make(accounts=None, bans=None, history_dir=None, web=False, irc=False,
             **settings) -> ChatHandle:
        """`accounts`: an AccountBook (the hall then checks logins and reservations);
        `history_dir`: a folder for the lasting history (store/history.py); `web`: a
        web listener too (handle.web_port)."""
        config = Config(listen=("127.0.0.1:0",), **settings)
        log = RecordingLog()
        listener = bind_listener("127.0.0.1", 0)
        handle = ChatHandle(None, None, log, listener.getsockname()[1])
        doors = {kind: [bind_listener("127.0.0.1", 0)] for kind, wanted in
                 (("web", web), ("irc", irc)) if wanted}
        handle.web_port = doors["web"][0].getsockname()[1] if web else 0
        handle.irc_port = doors["irc"][0].getsockname()[1] if irc else 0
        engine = Engine(config.io_threads, error_log=handle.tracebacks.append)
        logins = Logins(accounts, config, log) if accounts is not None else None
        store = None
        if history_dir is not None:
            store = HistoryStore(history_dir, log, config.history_days, config.history_max)
            store.open()
            stores.append(store)
        hall = handle.hall = Hall(config, log, engine.channel, bans, broker=LocalBroker(),
                                  logins=logins, history=store)
        server = ChatServer([listener], hall, log, config, engine,
                            error_log=handle.tracebacks.append, doors=doors)
        handle.server = server
        engine.start()
        server.start()

        def tick() -> None:  # what the daemon's main loop does
            while not stop.wait(0.05):
                hall.expire()
        threading.Thread(target=tick, daemon=True).start()
        handles.append(handle)
        return handle

    yield make
    stop.set()
    for handle in handles:
        for client in handle.clients:
            client.close()
        handle.server.shutdown(0.5)
        handle.server.engine.stop()
        handle.server.close_listeners()
        assert handle.tracebacks == [], "a handler thread died with a traceback"
    for store in stores:
        store.close()


@pytest.fixture
def admin_chat(chat, short_tmp):
    """make(**settings) -> (chat handle, admin socket path, admin server): an in-process
    server with its admin socket."""
    from tcpchatd.control import admin, commands
    servers = []

    def make(**settings):
        h = chat(**settings)
        path = os.path.join(short_tmp, f"admin{len(servers)}.sock")
        sock = admin.bind_socket(path, 0o660, None)
        table = commands.AdminCommands(h.hall, h.log, h.hall.bans)
        h.hall.moderation = table  # a moderator's acts from a client, as in the daemon
        server = admin.AdminServer(sock, table.table(),
                                   h.server.config, h.log, owned_path=path,
                                   error_log=h.tracebacks.append)
        server.start()
        servers.append((server, path))
        return h, path, server
    yield make
    for server, path in servers:
        server.close()
        assert not os.path.exists(path)  # its own socket is removed at exit


@pytest.fixture
def short_tmp():
    """A short temp dir (AF_UNIX paths are limited to 108 bytes), world-traversable."""
    path = tempfile.mkdtemp(prefix="tcd", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


class DaemonProcess:
    """A real `python -m tcpchatd` subprocess whose readiness comes from our NOTIFY_SOCKET."""

    def __init__(self, workdir: str, args: list[str], env: dict | None = None,
                 pass_fds: tuple = (), preexec=None, cwd: str | None = None) -> None:
        self.notify_path = os.path.join(workdir, f"notify-{time.monotonic_ns()}")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(10)
        self.messages: list[str] = []
        full_env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONUNBUFFERED="1")
        full_env.pop("INVOCATION_ID", None)
        full_env.update(env or {})
        self.stderr_path = os.path.join(workdir, f"stderr-{time.monotonic_ns()}")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcpchatd", *args], env=full_env, stderr=self._stderr,
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, pass_fds=pass_fds,
            start_new_session=True, preexec_fn=preexec, cwd=cwd)

    def wait_notify(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if any(line.startswith(prefix) for line in message.splitlines()):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and not self._pending():
                raise AssertionError(f"no {prefix} from the daemon; stderr: {self.stderr()}")
            self.notify.settimeout(min(remaining, 0.2))
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                pass

    def _pending(self) -> bool:
        self.notify.setblocking(False)
        try:
            self.messages.append(self.notify.recv(4096).decode())
            return True
        except BlockingIOError:
            return False
        finally:
            self.notify.setblocking(True)

    def drain_notify(self) -> list[str]:
        while self.notify.fileno() != -1 and self._pending():
            pass
        return self.messages

    def ready(self) -> "DaemonProcess":
        self.wait_notify("READY=1")
        return self

    def stderr(self) -> str:
        with open(self.stderr_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        if self.notify.fileno() != -1:
            self.drain_notify()  # what it said before it ended stays readable
        self._stderr.close()
        self.notify.close()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def free_port() -> int:
    """A port free now on loopback, for what binds it itself (redis-server, systemd's
    socket units): bind it and hand over the socket where the code can take one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CTL = [sys.executable, "-m", "tcpchatd.cli.ctl"]


def ctl(sock_path, *args, user=None, extra_groups=(), env=None):
    """tcpchatctl on that admin socket (as another user with `user=(uid, gid)`)."""
    prefix = []
    if user is not None:
        assert os.geteuid() == 0, "the permission tests run as root (as CI does) to switch uids"
        uid, gid = user
        prefix = ["setpriv", "--reuid", str(uid), "--regid", str(gid)]
        prefix += ["--groups", ",".join(map(str, extra_groups))] if extra_groups \
            else ["--clear-groups"]
    return subprocess.run([*prefix, *CTL, "--socket", sock_path, *args], capture_output=True,
                          text=True, timeout=30, cwd="/", env=env)


def server_connections(port: int) -> int:
    """How many connections the daemon has accepted on `port` (`ss`, as an operator
    would look): what a test waits for instead of sleeping."""
    out = subprocess.run(["ss", "-tnH", "state", "established", "sport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def free_port_socket() -> socket.socket:
    """A bound, listening socket on an ephemeral loopback port (passed to a daemon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
def daemon_factory(short_tmp):
    """start(*args) -> a ready DaemonProcess listening on an ephemeral port."""
    started: list[DaemonProcess] = []

    def start(*args: str, env: dict | None = None, wait_ready: bool = True,
              listen: bool = True) -> DaemonProcess:
        extra = list(args)
        if "--admin-socket" not in extra:
            extra += ["--admin-socket", os.path.join(short_tmp, f"a{len(started)}.sock")]
        if "--log-target" not in extra and "--syslog-address" not in extra:
            extra += ["--log-target", "stderr"]
            if "--log-gather" not in extra:
                # each line written as it is logged: a test reads a line on stderr as soon
                # as the action that logs it is done (the gathering itself: test_syslog)
                extra += ["--log-gather", "0"]
        if "--state-dir" not in extra:  # never the host's /var/lib/tcpchatd
            extra += ["--state-dir", os.path.join(short_tmp, f"state{len(started)}")]
        if listen and not any(a == "--listen" or a.startswith("--listen=") for a in extra):
            extra += ["--listen", "127.0.0.1:0"]
        daemon = DaemonProcess(short_tmp, extra, env)
        started.append(daemon)
        if wait_ready:
            daemon.ready()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def status_port(daemon: DaemonProcess) -> int:
    """The chat port from the daemon's READY status line."""
    message = daemon.wait_notify("READY=1")
    status = [line for line in message.splitlines() if line.startswith("STATUS=")][0]
    return int(re.search(r"listening on (?:\[[^\]]*\]|[^\s:,;]+):(\d+)", status).group(1))


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A CA; two server certificates it signed, for localhost and 127.0.0.1 (10 days) and
    for localhost alone (20 days); one from a CA nobody trusts."""
    folder = str(tmp_path_factory.mktemp("certs"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "30", "-subj", f"/CN=tcpchatd test {ca}", cwd=folder)
    for ext, names in (("ip", "DNS:localhost,IP:127.0.0.1"), ("dns", "DNS:localhost")):
        with open(os.path.join(folder, f"{ext}.ext"), "w") as fh:
            fh.write(f"subjectAltName={names}\n")
    for name, ca, days, ext in (("one", "ca", 10, "ip"), ("two", "ca", 20, "dns"),
                                ("bad", "rogue", 10, "ip")):
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=localhost {name}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                f"{ca}.key", "-CAcreateserial", "-days", str(days), "-extfile", f"{ext}.ext",
                "-out", f"{name}.crt", cwd=folder)
    os.chmod(folder, 0o755)
    return lambda name: os.path.join(folder, name)


def ports(daemon: DaemonProcess) -> tuple[int, int]:
    """(plaintext port, TLS port) from the READY status line."""
    status = [line for line in daemon.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    plain = re.search(r"127\.0\.0\.1:(\d+)(?!\d| \(tls\))", status)
    tls = re.search(r"127\.0\.0\.1:(\d+) \(tls\)", status)
    return int(plain.group(1)), int(tls.group(1))


def client_context(certs) -> ssl.SSLContext:
    """What a client that trusts the test CA verifies with."""
    return ssl.create_default_context(cafile=certs("ca.crt"))


@pytest.fixture
def tls_daemon(daemon_factory, certs):
    def start(*args, cert="one"):
        d = daemon_factory("--listen-tls", "127.0.0.1:0", "--tls-cert", certs(f"{cert}.crt"),
                           "--tls-key", certs(f"{cert}.key"), *args)
        return d, *ports(d)
    return start
