"""The real daemon as a subprocess: start, stop, flags, errors, and the real clients."""

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import status_port
from rawclient import RawClient, wait_for, untimed, confirming

CLIENT = [sys.executable, "-m", "tcpchatd.cli.client"]


def test_starts_says_where_it_listens_and_stops_cleanly_on_sigterm(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    banner = [l for l in d.stderr().splitlines() if "listening on" in l]
    assert banner == [banner[0]] and f"127.0.0.1:{port}" in banner[0]
    a, b = RawClient(port), RawClient(port)
    a.join("a"), b.join("b")
    a.read()
    assert d.stop() == 0
    for client in (a, b):
        assert untimed(client.read_until(lambda f: f.get("event") == "shutdown")) == {
            "type": "system", "event": "shutdown", "message": "Server is shutting down"}
        assert client.closed()
    assert "Traceback" not in d.stderr()


def test_sigint_also_stops_with_exit_0(daemon_factory):
    d = daemon_factory()
    d.signal(signal.SIGINT)
    assert d.proc.wait(10) == 0


def test_port_in_use_is_one_line_and_exit_1(daemon_factory):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    d = daemon_factory("--listen", f"127.0.0.1:{port}", wait_ready=False)
    assert d.proc.wait(10) == 1
    err = d.stderr().strip()
    assert err == f"tcpchatd: cannot listen on 127.0.0.1:{port}: Address already in use"
    taken.close()


def test_two_listeners_ipv4_and_ipv6(daemon_factory):
    d = daemon_factory("--listen", "127.0.0.1:0", "--listen", "[::1]:0")
    status = [l for l in d.wait_notify("READY=1").splitlines() if l.startswith("STATUS=")][0]
    v6_port = int(re.search(r"\[::1\]:(\d+)", status).group(1))
    c = RawClient(v6_port, host="::1")
    assert c.join("six")["nickname"] == "six"


@pytest.mark.parametrize("args,message", [
    (["--max-clients", "zero"], "bad value for max_clients"),
    (["--listen", "nohost"], "bad value for listen"),
    (["--log-confirms", "sometimes"], "bad value for log_confirms"),
])
def test_bad_flag_values_exit_2_with_a_clear_line(daemon_factory, args, message):
    d = daemon_factory(*args, wait_ready=False)
    assert d.proc.wait(10) == 2
    assert message in d.stderr() and "Traceback" not in d.stderr()


def test_config_file_unknown_key_and_precedence(daemon_factory, short_tmp):
    bad = os.path.join(short_tmp, "bad.toml")
    with open(bad, "w") as fh:
        fh.write("max_clients = 5\nmax_clietns = 6\n")
    d = daemon_factory("--config", bad, wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "unknown setting 'max_clietns'" in d.stderr()
    good = os.path.join(short_tmp, "good.toml")
    with open(good, "w") as fh:
        fh.write('max_clients = 1\nlisten = ["127.0.0.1:1"]\n')
    d = daemon_factory("--config", good)  # the flag --listen 127.0.0.1:0 wins over the file
    port = status_port(d)
    one = RawClient(port)
    one.join("one")
    full = RawClient(port)
    assert full.read()["code"] == "server_full"  # max_clients came from the file


def run_client(port, stdin_text, *args, timeout=30):
    return subprocess.run([*CLIENT, "--port", str(port), *args], input=stdin_text,
                          capture_output=True, text=True, timeout=timeout)


def test_pipe_client_sends_lines_and_reports_receipts(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    listener = RawClient(port)
    listener.join("listener")
    seen = []
    thread = confirming(listener, 2, seen)
    result = run_client(port, "hello there\nsecond line\n", "--nick", "bot")
    thread.join(10)
    got = [f["message"] for f in seen if f.get("type") == "message"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["delivered to 1 of 1: hello there",
                                          "delivered to 1 of 1: second line"]
    assert got == ["bot: hello there", "bot: second line"]


def test_pipe_client_alone_exits_1(daemon_factory):
    port = status_port(daemon_factory())
    result = run_client(port, "anyone?\n", "--nick", "lonely")
    assert result.returncode == 1
    assert result.stdout == "not delivered: nobody else is here: anyone?\n"


def test_pipe_client_usage_and_connection_errors(daemon_factory):
    port = status_port(daemon_factory())
    result = run_client(port, "x\n")  # no --nick from a pipe
    assert result.returncode == 2 and "--nick" in result.stderr
    result = run_client(port, "x\n", "--nick", "a b")
    assert result.returncode == 1 and "nickname 'a b' rejected" in result.stderr
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    result = run_client(closed_port, "x\n", "--nick", "nobody")
    assert result.returncode == 1
    assert result.stderr.startswith("tcpchat-client: cannot connect to 127.0.0.1:")
    assert "Traceback" not in result.stderr


class Pty:
    """The interactive client in a pseudo-terminal, read like a person reads a screen."""

    def __init__(self, argv, env=None):
        self.master, slave = pty.openpty()
        env = dict(os.environ, TERM="xterm", COLUMNS="100", LINES="30", **(env or {}))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, pattern, timeout=10):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.plain()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen in:\n{self.plain()}")
            self._read(remaining)
        return re.search(pattern, self.plain())

    def _read(self, timeout):
        """What the program wrote, read as a terminal reads it: at once, answering
        cursor position requests (a program blocks when nobody reads its terminal)."""
        if select.select([self.master], [], [], timeout)[0]:
            try:
                data = os.read(self.master, 65536).decode("utf-8", "replace")
            except OSError:
                data = ""
            self.screen += data
            for _ in range(data.count("\x1b[6n")):
                os.write(self.master, b"\x1b[1;1R")

    def wait(self, timeout=10):
        """The exit status, reading the screen meanwhile; TimeoutExpired if it runs on."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.proc.args, timeout,
                                                output=self.screen[-1500:])
            self._read(min(remaining, 0.1))
        self._read(0)
        return self.proc.returncode

    def plain(self):
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", self.screen)

    def type(self, text):
        os.write(self.master, text.encode())

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        os.close(self.master)


def test_interactive_client_in_a_terminal(daemon_factory):
    port = status_port(daemon_factory())
    other = RawClient(port)
    other.join("taken")
    term = Pty([*CLIENT, "--port", str(port)])
    try:
        term.expect("Choose your nickname:")
        term.type("Taken\r")
        term.expect(r"Nickname rejected: nickname 'Taken' is taken")
        term.type("zed\r")
        term.expect("Joined as zed")
        other.read_until(lambda f: f.get("event") == "join")
        u = other.say("hi zed")
        term.expect(r"\d\d:\d\d taken: hi zed")
        assert other.read_until(lambda f: f.get("type") == "confirm")["uuid"] == u
        term.type("hello taken\r")
        msg = other.read_until(lambda f: f.get("type") == "message")
        assert msg["message"] == "zed: hello taken"
        other.confirm(msg["uuid"])
        term.expect("\u2713 1/1 hello taken")  # the receipt, against the message
        term.type("/quit\r")
        assert term.wait(10) == 0
        assert other.read_until(lambda f: f.get("event") == "leave")["reason"] == "quit"
    finally:
        term.close()


def test_interactive_client_reconnects_after_a_restart(daemon_factory):
    d = daemon_factory()
    port = status_port(d)
    term = Pty([*CLIENT, "--port", str(port), "--nick", "ann"])
    try:
        term.expect("Joined as ann")
        d.stop()
        term.expect("Server is shutting down")
        term.expect("reconnecting in 0.5 s")
        assert term.plain().count("Server is shutting down") == 1
        again = daemon_factory("--listen", f"127.0.0.1:{port}")  # the restarted daemon
        term.expect("reconnected as ann", timeout=15)
        watcher = RawClient(port)
        watcher.join("watcher")
        assert "ann" in watcher.names["nicknames"]
        term.expect(r"reconnected as ann[\s\S]*ann>")  # the prompt is back: the key goes to it
        # prompt_toolkit prints above the prompt with the terminal in cooked mode for a
        # moment, and a Ctrl-D typed just then is eaten by the terminal itself: a person
        # presses it again, and so does this test (at most three times).
        for _ in range(3):
            term.type("\x04")
            try:
                assert term.wait(3) == 0
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError(repr(term.screen[-1500:]))
        assert again.stop() == 0
    finally:
        term.close()


def test_interactive_client_leaves_cleanly_on_ctrl_d_and_ctrl_c(daemon_factory):
    port = status_port(daemon_factory())
    watcher = RawClient(port)
    watcher.join("watcher")
    for key, name in (("\x04", "ctrl-d"), ("\x03", "ctrl-c")):
        term = Pty([*CLIENT, "--port", str(port), "--nick", name])
        try:
            term.expect(f"Joined as {name}")
            term.expect(f"{name}>")  # the prompt is up: the key goes to it
            watcher.read_until(lambda f: f.get("event") == "join" and f["nickname"] == name)
            term.type(key)
            assert term.wait(10) == 0
            leave = watcher.read_until(lambda f: f.get("event") == "leave")
            assert leave["nickname"] == name and leave["reason"] == "quit"
            assert "Traceback" not in term.plain()
        finally:
            term.close()


def test_pipe_client_against_an_original_style_server():
    from origserver import OriginalStyleServer
    server = OriginalStyleServer()
    try:
        listener = RawClient(server.port)
        assert listener.recv_exact(10) == b"_nickname_"
        listener.send_raw(b"old")
        assert listener.read() == {"type": "system", "message": "old joined!"}

        def confirm_one():
            f = listener.read_until(lambda f: f.get("type") == "message")
            listener.confirm(f["uuid"])
        t = threading.Thread(target=confirm_one)
        t.start()
        result = run_client(server.port, "hello old server\n", "--nick", "new")
        t.join(10)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "delivered: hello old server\n"
        listener.close()
        wait_for(lambda: len(server.clients) == 0)
        alone = run_client(server.port, "anyone?\n", "--nick", "solo", "--timeout", "1")
        assert alone.returncode == 1
        assert alone.stdout == "no receipt: anyone?\n"
    finally:
        server.close()


def test_pipe_client_paces_itself_under_the_default_flood_limit(daemon_factory):
    port = status_port(daemon_factory())  # default flood limit: 20/s, burst 40
    listener = RawClient(port)
    listener.join("listener")
    lines = 70  # more than the burst: sent as fast as possible, some would be dropped

    t = confirming(listener, lines)
    result = run_client(port, "".join(f"line {i}\n" for i in range(lines)), "--nick", "bulk",
                        timeout=60)
    t.join(30)
    assert result.returncode == 0, result.stdout[-500:]
    assert result.stdout.splitlines() == [f"delivered to 1 of 1: line {i}" for i in range(lines)]
