"""The servers a benchmark measures: tcpchatd, ngircd and a cluster's redis-server, started on
loopback, measured from /proc."""

from __future__ import annotations

import compileall
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (inherited by the servers we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@functools.cache
def compile_package() -> None:
    """The package's bytecode written, as pip and Debian's py3compile write it at install:
    where PYTHONDONTWRITEBYTECODE is set (it is on these machines) a daemon would compile
    every module at each start, which no installed daemon does (~35 ms of an upgrade's
    pause)."""
    import tcpchatd
    compileall.compile_dir(os.path.dirname(tcpchatd.__file__), quiet=1)


# `--pin`: the CPUs the servers run on, apart from the generator's (run.py's pin()). On a
# machine of two cores the generator and the daemon otherwise share both, and whatever
# makes the generator busier slows the daemon too (BENCHMARKS.md, "Rooms").
SERVER_CPUS: set[int] = set()


def _pinned() -> None:
    """In a server's child process before exec: every thread it starts inherits this."""
    if SERVER_CPUS:
        os.sched_setaffinity(0, SERVER_CPUS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


class ProcStats:
    """CPU seconds, peak RSS and thread count of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_start = self.cpu_seconds()
        self.sys_start = self.sys_seconds()
        self.peak_threads = 0

    def _times(self) -> tuple[int, int]:
        """(user, system) clock ticks."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])

    def cpu_seconds(self) -> float:
        return sum(self._times()) / CLOCK_TICKS

    def sys_seconds(self) -> float:
        """The kernel's share (system calls: sends, reads, epoll)."""
        return self._times()[1] / CLOCK_TICKS

    def status(self) -> dict:
        values = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                values[key] = value.strip()
        return values

    def sample(self) -> None:
        try:
            self.peak_threads = max(self.peak_threads, int(self.status()["Threads"]))
        except (OSError, KeyError):
            pass

    def reset_cpu(self) -> None:
        self.cpu_start = self.cpu_seconds()
        self.sys_start = self.sys_seconds()

    def report(self) -> dict:
        status = self.status()
        return {"server_cpu_s": round(self.cpu_seconds() - self.cpu_start, 3),
                "server_sys_s": round(self.sys_seconds() - self.sys_start, 3),
                "server_peak_rss_mib": round(int(status["VmHWM"].split()[0]) / 1024, 1),
                "server_rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                "server_threads": max(self.peak_threads, int(status["Threads"]))}


class GroupStats:
    """ProcStats of several processes as one: CPU, memory and threads summed."""

    def __init__(self, members: list[ProcStats]) -> None:
        self.members = members

    def sample(self) -> None:
        for member in self.members:
            member.sample()

    def reset_cpu(self) -> None:
        for member in self.members:
            member.reset_cpu()

    def report(self) -> dict:
        reports = [member.report() for member in self.members]
        return {key: round(sum(r[key] for r in reports), 3) for key in reports[0]}


class Server:
    kind = ""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tcdbench")
        self.proc: subprocess.Popen | None = None

    def stats(self) -> ProcStats:
        return ProcStats(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Tcpchatd(Server):
    kind = "tcpchatd"

    def __init__(self, *extra: str, tls: bool = False, web: bool = False,
                 irc: bool = False) -> None:
        super().__init__()
        self.extra = extra
        self.tls_port = free_port() if tls else None
        self.web_port = free_port() if web else None
        self.irc_port = free_port() if irc else None
        if web:
            self.extra += ("--listen-web", f"127.0.0.1:{self.web_port}")
        if irc:
            self.extra += ("--listen-irc", f"127.0.0.1:{self.irc_port}")
        self.cafile = None
        if tls:
            self.extra += self._certificates()

    def _certificates(self) -> tuple[str, ...]:
        """A CA and a P-256 server certificate for localhost, made with openssl."""
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *args], cwd=self.dir, check=True,  # noqa
                                           capture_output=True)
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=bench CA")
        run("req", "-new", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj",
            "/CN=localhost")
        with open(os.path.join(self.dir, "san.ext"), "w") as fh:
            fh.write("subjectAltName=DNS:localhost\n")
        run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "srv.crt")
        self.cafile = os.path.join(self.dir, "ca.crt")
        return ("--listen-tls", f"127.0.0.1:{self.tls_port}", "--tls-cert",
                os.path.join(self.dir, "srv.crt"), "--tls-key", os.path.join(self.dir, "srv.key"))

    def start(self) -> "Tcpchatd":
        compile_package()
        # flood limit off (a benchmark floods on purpose); traffic log formatted and written
        # to stderr -> /dev/null, so its cost is measured but no syslog daemon competes
        # (TCPCHATD_BENCH_LOGS=DIR keeps each daemon's log there instead, to look into a run)
        logs = os.environ.get("TCPCHATD_BENCH_LOGS")
        stderr: Any = subprocess.DEVNULL
        if logs:
            os.makedirs(logs, exist_ok=True)
            stderr = open(os.path.join(logs, f"tcpchatd-{self.port}.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcpchatd", "--listen", f"127.0.0.1:{self.port}",
             "--admin-socket", os.path.join(self.dir, "admin.sock"), "--flood-rate", "0",
             "--log-target", "stderr",
             # its own state (bans, accounts, history), never the machine's
             *(() if "--state-dir" in self.extra else
               ("--state-dir", os.path.join(self.dir, "state"))), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=_pinned)
        wait_listening(self.port, self.proc)
        return self


NGIRCD_CONF = """[Global]
    Name = bench.invalid
    Info = tcpchatd benchmark peer
    Listen = 127.0.0.1
    Ports = {port}
    PidFile = {dir}/ngircd.pid
    MotdPhrase = "bench"
    ServerUID = {uid}
    ServerGID = {gid}
[Limits]
    MaxConnections = 0
    MaxConnectionsIP = 0
    MaxJoins = 0
    MaxNickLength = 32
    MaxPenaltyTime = 0
    PingTimeout = 600
    PongTimeout = 600
    MaxListSize = 100000
[Options]
    DNS = no
    Ident = no
    PAM = no
    OperCanUseMode = yes
[Operator]
    Name = bench
    Password = bench
"""


class Ngircd(Server):
    kind = "ngircd"

    def start(self) -> "Ngircd":
        conf = os.path.join(self.dir, "ngircd.conf")
        with open(conf, "w") as fh:
            fh.write(NGIRCD_CONF.format(port=self.port, dir=self.dir, uid=os.getuid(),
                                        gid=os.getgid()))
        os.chmod(self.dir, 0o755)
        self.proc = subprocess.Popen(["ngircd", "--nodaemon", "--config", conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_pinned)
        wait_listening(self.port, self.proc)
        return self


class RedisServer(Server):
    """Debian's redis-server on a free loopback port, no persistence (a cluster's broker)."""

    kind = "redis"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"
