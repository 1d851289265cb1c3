"""Several tcpchatd nodes serve one room through a real redis-server (Debian's package,
started here on a free port and stopped by pid). Every node is a real daemon
subprocess; clients speak the wire protocol from the outside."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import status_port
from rawclient import RawClient, wait_for
from syslogparse import parse_message

REDIS = shutil.which("redis-server")
NODE_TTL = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of our own: no persistence, loopback, a port of its own."""

    def __init__(self, workdir: str) -> None:
        assert REDIS, "redis-server is not installed (.ci/run installs Debian's package)"
        self.workdir, self.port, self.proc = workdir, free_port(), None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.answers, timeout=10)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command, its raw reply (enough for the tests' few looks into Redis)."""
        body = b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"*%d\r\n" % len(words) + body)
            time.sleep(0.05)
            return sock.recv(1 << 20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(short_tmp):
    server = RedisServer(short_tmp)
    yield server
    server.stop()


@pytest.fixture
def cluster(daemon_factory, redis_server):
    """node(name, *args) -> (daemon, port): a node of room `r` on the test's Redis."""

    def node(name: str, *args: str, broker: str | None = None, wait_ready: bool = True):
        daemon = daemon_factory(
            "--broker", broker or redis_server.url, "--room", "r", "--node-name", name,
            "--node-ttl", str(NODE_TTL), "--flood-rate", "0", *args, wait_ready=wait_ready)
        return daemon, (status_port(daemon) if wait_ready else None)
    return node


def log_lines(daemon, event: str) -> list[dict]:
    """The node's own log lines (on stderr: `EVENT k=v ...`) of one event, as fields."""
    found = []
    for line in daemon.stderr().splitlines():
        if line.split(" ", 1)[0] == event:
            found.append(parse_message(line)[1])
    return found


def linked(daemon) -> bool:
    return bool(log_lines(daemon, "broker") or log_lines(daemon, "broker_back"))


def read_event(client: RawClient, event: str, **fields) -> dict:
    return client.read_until(lambda f: f.get("event") == event and all(
        f.get(k) == v for k, v in fields.items()))


def chat(client: RawClient, nick: str | None = None) -> dict:
    return client.read_until(lambda f: f.get("type") == "message" and "uuid" in f
                             and (nick is None or f.get("nickname") == nick))


def test_a_message_reaches_every_node_and_the_receipt_sums_them(cluster):
    (a, port_a), (b, port_b), (c, port_c) = cluster("a"), cluster("b"), cluster("c")
    wait_for(lambda: all(map(linked, (a, b, c))), timeout=10)
    alice = RawClient(port_a)
    alice.join("alice")
    bob, carol, dave = RawClient(port_b), RawClient(port_c), RawClient(port_c)
    bob.join("bob")
    carol.join("carol")
    dave.join("dave")
    # the room is one: a joiner sees everyone, on every node
    assert set(dave.names["nicknames"]) == {"alice", "bob", "carol", "dave"}, dave.names
    time.sleep(NODE_TTL / 2)  # every node has heartbeated: each knows the others
    msg = alice.say("hello, cluster")
    for client in (bob, carol, dave):
        got = chat(client, "alice")
        assert got["uuid"] == msg and got["message"] == "alice: hello, cluster"
        client.confirm(msg)
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
    assert receipt == {"type": "confirm", "uuid": msg, "delivered": 3, "recipients": 3}
    # logged once, by the origin node, with the cluster-wide count
    assert [f["recipients"] for f in log_lines(a, "delivery")] == ["3"]
    assert not log_lines(b, "message") and not log_lines(c, "message")
    for client in (alice, bob, carol, dave):
        client.close()
