"""Several tcpchatd nodes serve one room through a real redis-server (Debian's package,
started here on a free port and stopped by pid). Every node is a real daemon
subprocess; clients speak the wire protocol from the outside."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest

from conftest import free_port, status_port
from conftest import ctl
from rawclient import PROMPT, RawClient, frame as json_frame, wait_for
from syslogparse import parse_message

from tcpchatd.chat.accounts import AccountBook

REDIS = shutil.which("redis-server")
NODE_TTL = 1.0


class RedisServer:
    """A redis-server of our own: no persistence, loopback, a port of its own."""

    def __init__(self, workdir: str, *extra: str, tls_ca: str | None = None,
                 password: str | None = None) -> None:
        assert REDIS, "redis-server is not installed (.ci/run installs Debian's package)"
        self.workdir, self.port, self.proc = workdir, free_port(), None
        self.extra, self.password = extra, password
        self.tls = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        self.start()

    def start(self) -> None:
        port = ["--port", "0", "--tls-port", str(self.port)] if self.tls \
            else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [REDIS, *port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--daemonize", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.command("PING").startswith(b"+PONG"), timeout=10)

    def command(self, *words: str) -> bytes:
        """One command, its raw reply (enough for the tests' few looks into Redis)."""
        if self.password:
            words = ("AUTH", self.password, *words)  # sent as two commands below
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_hostname="localhost")
        except OSError:
            return b""
        with sock:
            if self.password:
                sock.sendall(resp(words[:2]))
                words = words[2:]
                sock.recv(64)
            sock.sendall(resp(words))
            time.sleep(0.05)
            return sock.recv(1 << 20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def resp(words) -> bytes:
    body = b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
    return b"*%d\r\n" % len(words) + body


@pytest.fixture
def redis_server(short_tmp):
    server = RedisServer(short_tmp)
    yield server
    server.stop()


@pytest.fixture
def cluster(daemon_factory, redis_server):
    """node(name, *args) -> (daemon, port): a node of cluster `r` on the test's Redis."""

    def node(name: str, *args: str, broker: str | None = None, wait_ready: bool = True):
        daemon = daemon_factory(
            "--broker", broker or redis_server.url, "--cluster", "r", "--node-name", name,
            "--node-ttl", str(NODE_TTL), "--flood-rate", "0", *args, wait_ready=wait_ready)
        return daemon, (status_port(daemon) if wait_ready else None)
    return node


def linked_room(cluster, members: dict[str, str], *args: str, nodes: str = "ab"):
    """Nodes (named by the letters of `nodes`) linked, each member joined on its node
    ({"alice": "a"}), the last join heard on the first node, and one heartbeat since: every
    node knows the others. ({node: daemon}, {member: client})."""
    started = {name: cluster(name, *args) for name in nodes}
    wait_for(lambda: all(linked(daemon) for daemon, _ in started.values()), timeout=10)
    clients = {}
    for nickname, node in members.items():
        clients[nickname] = RawClient(started[node][1])
        clients[nickname].join(nickname)
    first = next(iter(clients.values()))
    if list(clients)[-1] != first.nickname:
        read_event(first, "join", nickname=list(clients)[-1])
    time.sleep(NODE_TTL / 2)
    return {name: daemon for name, (daemon, _) in started.items()}, clients


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
    # the room is one: a joiner sees everyone, on every node (once the stream has
    # brought each node the others' joins)
    wait_for(lambda: set(read_names(dave)) == {"alice", "bob", "carol", "dave"})
    time.sleep(NODE_TTL / 2)  # every node has heartbeated: each knows the others
    msg = alice.say("hello, cluster")
    for client in (bob, carol, dave):
        got = chat(client, "alice")
        assert got["uuid"] == msg and got["message"] == "alice: hello, cluster"
        client.confirm(msg)
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
    assert receipt == {"type": "confirm", "uuid": msg, "delivered": 3, "recipients": 3}
    # logged once, by the origin node, with the cluster-wide count
    wait_for(lambda: [f["recipients"] for f in log_lines(a, "delivery")] == ["3"])
    assert not log_lines(b, "message") and not log_lines(c, "message")
    for client in (alice, bob, carol, dave):
        client.close()


def test_a_silent_recipient_and_the_final_count(cluster):
    """One recipient never confirms: the sender has its receipt at receipt_wait with the
    confirms so far; the origin's log has the final count at confirm_timeout."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b", "mute": "b"},
                                 "--receipt-wait", "0.3", "--confirm-timeout", "2")
    a, (alice, bob, mute) = nodes["a"], clients.values()
    msg = alice.say("anyone?")
    bob.confirm(chat(bob, "alice")["uuid"])
    chat(mute, "alice")  # read, never confirmed
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 2)
    wait_for(lambda: log_lines(a, "delivery"), timeout=5)
    assert log_lines(a, "delivery") == [{"uuid": msg, "room": "general", "delivered": "1",
                                         "recipients": "2"}]


def test_nicknames_are_unique_across_nodes_and_follow_renames(cluster, redis_server):
    (a, port_a), (b, port_b) = cluster("a"), cluster("b")
    wait_for(lambda: linked(a) and linked(b), timeout=10)
    alice, bob = RawClient(port_a), RawClient(port_b)
    alice.join("alice")
    bob.join("bob")
    read_event(alice, "join", nickname="bob")
    other = RawClient(port_b)
    assert other.recv_exact(10) == b"_nickname_"
    other.send_raw("ALICE".encode())
    assert other.read()["code"] == "nickname_taken"
    assert other.recv_exact(10) == b"_nickname_"  # asked again, as for a local clash
    other.send_raw(b"carol")
    read_event(other, "join", nickname="carol")
    read_event(alice, "join", nickname="carol")
    # a private message to a member of another node, and its receipt
    private = str(uuid.uuid4())
    alice.send_raw(json_frame({"type": "message", "uuid": private, "message": "psst",
                               "to": "carol"}))
    got = chat(other, "alice")
    assert got["uuid"] == private and got["to"] == "carol"
    other.confirm(private)
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == private)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 1)
    # a rename crosses, and frees the old nickname everywhere
    bob.send_raw(json_frame({"type": "request", "cmd": "nick", "nickname": "robert"}))
    assert read_event(alice, "nick")["message"].startswith("bob")
    wait_for(lambda: b"bob" not in redis_server.command("HKEYS", "tcpchat:r:nicks"))
    again = RawClient(port_a)
    again.join("bob")
    read_event(bob, "join", nickname="bob")
    # a leave crosses too, and its nickname is free on the other node
    bob.quit()
    read_event(alice, "leave", nickname="robert")
    wait_for(lambda: b"robert" not in redis_server.command("HKEYS", "tcpchat:r:nicks"))
    for client in (alice, other, again):
        client.close()


def admin_socket(daemon) -> str:
    args = daemon.proc.args
    return args[args.index("--admin-socket") + 1]


def ctl_json(daemon, *args) -> dict:
    result = ctl(admin_socket(daemon), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_admin_commands_act_on_the_whole_room_from_any_node(cluster, short_tmp):
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b", "carol": "b"})
    (a, b), (alice, bob, carol) = nodes.values(), clients.values()
    port_b = status_port(b)
    # who: the whole room, with its node
    clients = ctl_json(a, "who")["clients"]
    assert [(c["nickname"], c["node"]) for c in clients] == [
        ("alice", "a"), ("bob", "b"), ("carol", "b")]
    table = ctl(admin_socket(a), "who").stdout
    assert "NODE" in table.splitlines()[0] and " b" in table.splitlines()[2]
    # kick: asked on a, done by b
    result = ctl(admin_socket(a), "kick", "carol", "--reason", "spam")
    assert result.returncode == 0 and result.stdout.strip() == "kicked carol (on node b)"
    assert carol.read_until(lambda f: f.get("event") == "kick")["reason"] == "spam"
    assert carol.closed()
    assert read_event(alice, "leave", nickname="carol")["reason"] == "kicked"
    assert ctl(admin_socket(a), "kick", "nobody").returncode == 1
    # say: from b, heard on a
    assert ctl_json(b, "say", "maintenance at noon")["clients"] == 2
    assert alice.read_until(lambda f: f.get("event") == "announce")["message"].endswith(
        "maintenance at noon")
    # ban: from a, kept in b's bans.json too, and b's member leaves
    banned = ctl_json(a, "ban", "bob", "--reason", "rude")
    assert banned["kicked"] == ["bob"]
    assert bob.read_until(lambda f: f.get("event") == "kick")["reason"] == "rude"
    state_b = os.path.join(short_tmp, "state1", "bans.json")
    wait_for(lambda: os.path.exists(state_b))
    with open(state_b) as fh:
        assert [ban["target"] for ban in json.load(fh)["bans"]] == ["bob"]
    again = RawClient(port_b)
    assert again.recv_exact(10) == b"_nickname_"
    again.send_raw(b"bob")
    assert again.read()["code"] == "banned"
    # unban: from b, gone from a's list
    assert ctl_json(b, "unban", "bob") == {"unbanned": "bob"}
    wait_for(lambda: ctl_json(a, "bans")["bans"] == [])
    # stats: this node's counters and the cluster's totals
    stats = ctl_json(b, "stats")
    assert stats["node"] == "b" and stats["cluster"]["nodes"] == ["a", "b"]
    assert stats["cluster"]["silent"] == [] and stats["cluster"]["clients"] == 1
    for client in (alice, again):
        client.close()


def test_an_address_ban_kicks_on_every_node_and_names_them_all(cluster):
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b", "carol": "b"})
    (a, b), (alice, bob, carol) = nodes.values(), clients.values()
    assert ctl_json(a, "ban", "192.0.2.0/24")["kicked"] == []  # nobody there
    banned = ctl_json(a, "ban", "127.0.0.1", "--reason", "loopback", "--force")
    assert banned["kicked"] == ["alice", "bob", "carol"]  # a's own and b's, by address
    for client in (alice, bob, carol):
        assert client.read_until(lambda f: f.get("event") == "kick")["message"] == \
            "You were banned: loopback (with no end)"
        assert client.closed()
    wait_for(lambda: len(ctl_json(b, "bans")["bans"]) == 2)


def stopped(pid: int) -> bool:
    """Every thread of the process stopped (a SIGSTOP takes effect a little later)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as fh:
            states.append(fh.read().rsplit(")", 1)[1].split()[0])
    return all(state in "Tt" for state in states)


def test_events_trimmed_from_the_stream_while_a_node_was_paused_are_counted(
        daemon_factory, short_tmp):
    """... in the log and in the metrics, which also show how far behind the node was."""
    from test_metrics import scrape
    # small stream nodes and the shortest stream (100): trimming (approximate) is exact
    # to within 10 entries
    redis = RedisServer(short_tmp, "--stream-node-max-entries", "10")
    metrics_port = free_port()
    try:
        def node(name, *args):
            return daemon_factory("--broker", redis.url, "--room", "r", "--node-name", name,
                                  "--node-ttl", "30", "--flood-rate", "0",
                                  "--broker-stream", "100", *args)
        a, b = node("a"), node("b", "--listen-metrics", f"127.0.0.1:{metrics_port}")
        wait_for(lambda: linked(a) and linked(b), timeout=10)
        alice, bob = RawClient(status_port(a)), RawClient(status_port(b))
        alice.join("alice")
        bob.join("bob")
        read_event(alice, "join", nickname="bob")
        alice.say("#0")
        chat(bob, "alice")
        before = scrape(metrics_port)
        assert before[("tcpchatd_broker_up", ())] == 1
        assert before[("tcpchatd_broker_events_read_total", ())] >= 3  # joins and #0
        assert before[("tcpchatd_broker_lag_seconds", ())] < 1.0
        assert before[("tcpchatd_broker_gap_events_total", ())] == 0
        b.signal(signal.SIGSTOP)  # cut off (not swept: node_ttl is long)
        try:
            wait_for(lambda: stopped(b.proc.pid))
            for number in range(1, 201):
                alice.say(f"#{number}")
            wait_for(lambda: b"alice: #200" in redis.command("XREVRANGE", "tcpchat:r:stream",
                                                            "+", "-", "COUNT", "1"))
            time.sleep(1.5)  # b, still stopped, falls that far behind
        finally:
            b.signal(signal.SIGCONT)
        got = []
        while not got or got[-1] != 200:
            got.append(int(chat(bob, "alice")["message"].rsplit("#", 1)[1]))
        missing = sorted(set(range(1, 201)) - set(got))
        assert got == sorted(got) and missing  # the rest, in order; some trimmed
        assert missing == list(range(missing[0], missing[-1] + 1))  # one run of them
        wait_for(lambda: log_lines(b, "broker_gap"), timeout=5)
        gaps = log_lines(b, "broker_gap")
        assert {g["node"] for g in gaps} == {"a"}
        # a wrote nothing but its messages meanwhile (b confirmed none): the count is exact
        assert sum(int(g["missed"]) for g in gaps) == len(missing)
        after = scrape(metrics_port)
        assert after[("tcpchatd_broker_gap_events_total", ())] == len(missing)
        assert after[("tcpchatd_broker_lag_seconds", ())] >= 1.5
        assert after[("tcpchatd_broker_events_read_total", ())] >= \
            before[("tcpchatd_broker_events_read_total", ())] + 200 - len(missing)
        assert after[("tcpchatd_broker_missed_total", ())] == 0
        assert after[("tcpchatd_broker_queue", ())] == 0
        # caught up, and quiet: once the lag's window (10 s) has passed, no lag (not the
        # last event's lag kept for ever)
        wait_for(lambda: scrape(metrics_port)[("tcpchatd_broker_lag_seconds", ())] == 0,
                 timeout=15)
        alice.close()
        bob.close()
    finally:
        redis.stop()


def test_a_killed_node_members_leave_and_its_pending_receipt_settles(cluster, redis_server):
    """c is SIGKILLed while alice's message waits on its tally: c's members leave with
    node_lost within 2 x node_ttl, and alice's receipt counts what the others confirmed."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b", "carol": "c"},
                                 "--receipt-wait", "30", "--confirm-timeout", "60",
                                 nodes="abc")
    (a, _, c), (alice, bob, carol) = nodes.values(), clients.values()
    msg = alice.say("still there?")
    bob.confirm(chat(bob, "alice")["uuid"])
    chat(carol, "alice")
    # c has acknowledged (its recipient counts), and is killed before carol confirms
    wait_for(lambda: b'"kind": "ack", "to": "a", "uuid": "%s", "recipients": 1, "node": "c"'
             % msg.encode() in redis_server.command("XRANGE", "tcpchat:r:stream", "-", "+"))
    os.killpg(c.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    left = read_event(alice, "leave", nickname="carol")
    assert left["reason"] == "node_lost"
    assert time.monotonic() - killed < 2 * NODE_TTL + 0.5
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 2)
    wait_for(lambda: {"node": "c", "members": "1"} in log_lines(a, "node_lost"))
    assert read_names(bob) == ["alice", "bob"]
    for client in (alice, bob, carol):
        client.close()


def read_names(client: RawClient) -> list[str]:
    client.send_raw(json_frame({"type": "request", "cmd": "who", "id": 7}))
    names = client.read_until(lambda f: f.get("event") == "names" and f.get("id") == 7)
    return sorted(names["nicknames"])


def test_a_paused_node_is_swept_then_comes_back(cluster):
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"})
    (a, b), (alice, bob) = nodes.values(), clients.values()
    port_a, port_b = status_port(a), status_port(b)
    b.signal(signal.SIGSTOP)
    try:
        stats = ctl_json(a, "stats")  # asked at once: b still counts as alive, and is silent
        assert stats["cluster"]["silent"] == ["b"]
        assert read_event(alice, "leave", nickname="bob")["reason"] == "node_lost"
        taker = RawClient(port_a)
        taker.join("bob")  # its claim went with the sweep: free for another member
    finally:
        b.signal(signal.SIGCONT)
    # b finds itself swept and comes back; its bob lost the nickname meanwhile
    kick = bob.read_until(lambda f: f.get("event") == "kick")
    assert "taken on another node" in kick["message"]
    assert bob.closed()
    wait_for(lambda: log_lines(b, "nickname_lost"), timeout=5)
    # and b serves the room again: a new member there and alice hear each other
    ben = RawClient(port_b)
    ben.join("ben")
    read_event(alice, "join", nickname="ben")
    time.sleep(NODE_TTL / 2)
    msg = alice.say("welcome back")
    assert chat(ben, "alice")["uuid"] == msg
    for client in (alice, taker, ben):
        client.close()


def test_redis_restarted_under_traffic(cluster, redis_server):
    """Redis goes away: each node serves its own members as a local room (nothing local
    lost), logs broker_lost; Redis returns empty: broker_back, the nodes find each other
    again, nothing is duplicated."""
    nodes, clients = linked_room(cluster, {"alice": "a", "ann": "a", "bob": "b"})
    (a, b), (alice, ann, bob) = nodes.values(), clients.values()
    redis_server.stop()
    wait_for(lambda: log_lines(a, "broker_lost") and log_lines(b, "broker_lost"), timeout=5)
    read_event(alice, "leave", nickname="bob")  # out of reach, as far as a can tell
    # local members still get every message, with a receipt
    sent = [alice.say(f"during the outage {n}") for n in range(5)]
    for msg in sent:
        assert chat(ann, "alice")["uuid"] == msg
        ann.confirm(msg)
    for msg in sent:
        receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
        assert receipt["delivered"] == 1
    redis_server.start()
    wait_for(lambda: log_lines(a, "broker_back") and log_lines(b, "broker_back"), timeout=15)
    assert int(log_lines(a, "broker_back")[0]["missed"]) >= 5
    read_event(alice, "join", nickname="bob")
    time.sleep(NODE_TTL / 2)
    after = alice.say("after the outage")
    got = chat(bob, "alice")
    assert got["uuid"] == after  # the outage's messages never crossed: none comes late
    bob.confirm(after)
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == after)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 2)
    for client in (alice, ann, bob):
        client.close()


def test_a_node_starts_without_its_broker_and_joins_when_it_comes(cluster, redis_server):
    redis_server.stop()
    a, port_a = cluster("a")  # READY anyway: a failed unit would help nobody
    wait_for(lambda: log_lines(a, "broker_lost"), timeout=5)
    alice, ann = RawClient(port_a), RawClient(port_a)
    alice.join("alice")
    ann.join("ann")
    msg = alice.say("alone")
    assert chat(ann, "alice")["uuid"] == msg
    redis_server.start()
    wait_for(lambda: log_lines(a, "broker_back"), timeout=15)
    b, port_b = cluster("b")
    wait_for(lambda: linked(b), timeout=10)
    bob = RawClient(port_b)
    bob.join("bob")
    assert set(bob.names["nicknames"]) == {"alice", "ann", "bob"}, a.stderr()[-3000:]
    for client in (alice, ann, bob):
        client.close()


def test_a_password_in_the_broker_url_is_refused(daemon_factory):
    daemon = daemon_factory("--broker", "redis://:secret@127.0.0.1:6379/0", wait_ready=False)
    assert daemon.proc.wait(10) == 2
    assert "no password in the URL" in daemon.stderr()


def test_an_upgraded_node_misses_nothing_and_repeats_nothing(cluster):
    """a re-executes itself (SIGUSR2) while bob on b sends numbered messages: alice sees
    each once, in order, and bob's receipts all come (the stream's position crossed)."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"})
    a, (alice, bob) = nodes["a"], clients.values()
    count, sent = 60, []

    def send():
        for n in range(count):
            sent.append(bob.say(f"n={n}"))
            time.sleep(0.01)
            if n == count // 3:
                a.signal(signal.SIGUSR2)
    sender = threading.Thread(target=send)
    sender.start()
    seen = []
    while len(seen) < count:
        got = chat(alice, "bob")
        seen.append(int(got["message"].rsplit("=", 1)[1]))
        alice.confirm(got["uuid"])
    sender.join()
    assert seen == list(range(count))
    receipts = set()
    while len(receipts) < count:
        receipt = bob.read_until(lambda f: f.get("type") == "confirm")
        assert (receipt["delivered"], receipt["recipients"]) == (1, 1), receipt
        receipts.add(receipt["uuid"])
    assert receipts == set(sent)
    wait_for(lambda: [u["ok"] for u in log_lines(a, "upgrade")] == ["yes"], timeout=10)
    assert not log_lines(a, "broker_lost")
    assert not log_lines(nodes["b"], "broker_gap")  # a's numbering went on where it was
    for client in (alice, bob):
        client.close()


class SlowLink:
    """A TCP proxy to Redis whose NEW connections, once `delay` is set, wait that long
    before any byte passes: a node whose link is slow to come up (a password's round
    trip, a slower machine), while the connections it already has stay fast."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream, self.delay = upstream_port, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._link, args=(near, self.delay), daemon=True).start()

    def _link(self, near: socket.socket, delay: float) -> None:
        try:
            far = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:  # Redis stopped (the test's end)
            near.close()
            return
        time.sleep(delay)
        for src, dst in ((near, far), (far, near)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_what_a_member_of_an_upgraded_node_says_as_it_resumes_reaches_the_others(
        cluster, redis_server):
    """The new image serves its carried members before its broker has linked: what they
    say meanwhile waits for the link instead of counting as missed (found by the cluster
    under systemd, where a message said in that moment never reached the other node).
    Here the new image's link is made slow by a proxy."""
    slow = SlowLink(redis_server.port)
    try:
        (a, port_a), (b, port_b) = cluster("a", broker=slow.url), cluster("b")
        wait_for(lambda: linked(a) and linked(b), timeout=10)
        carol, bob = RawClient(port_a), RawClient(port_b)
        carol.join("carol")
        bob.join("bob")
        read_event(carol, "join", nickname="bob")
        time.sleep(NODE_TTL / 2)
        _say_through_an_upgrade(a, carol, bob, slow)
    finally:
        slow.close()


def _say_through_an_upgrade(a, carol, bob, slow) -> None:
    """carol says numbered messages before, through and after a's upgrade (the pre-flight
    takes a second: she goes on until the new image has served her 20 more)."""
    sent, upgraded = [], threading.Event()

    def send():
        n, after = 0, 0
        while after < 20:
            sent.append(carol.say(f"n={n}"))
            n += 1
            time.sleep(0.01)
            if n == 20:
                slow.delay = 0.6  # the new image's connections (the old one's stay)
                a.signal(signal.SIGUSR2)
            if upgraded.is_set():
                after += 1
    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: log_lines(a, "upgrade"), timeout=20)
    finally:
        upgraded.set()
        sender.join()
    assert [u["ok"] for u in log_lines(a, "upgrade")] == ["yes"]
    seen = []
    while len(seen) < len(sent):
        got = chat(bob, "carol")
        seen.append(int(got["message"].rsplit("=", 1)[1]))
        bob.confirm(got["uuid"])
    assert seen == list(range(len(sent)))
    receipts = {}
    while len(receipts) < len(sent):
        receipt = carol.read_until(lambda f: f.get("type") == "confirm")
        receipts[receipt["uuid"]] = (receipt["delivered"], receipt["recipients"])
    assert set(receipts) == set(sent) and set(receipts.values()) == {(1, 1)}
    assert not log_lines(a, "broker_lost")
    for client in (carol, bob):
        client.close()


def test_a_tls_broker_with_a_password(daemon_factory, short_tmp, certs):
    """rediss:// verified against broker_ca, the password from a file or from systemd's
    credentials (never in argv);
    a wrong password or an untrusted certificate: the node serves alone and says why."""
    server = RedisServer(short_tmp, "--tls-cert-file", certs("one.crt"), "--tls-key-file",
                         certs("one.key"), "--tls-ca-cert-file", certs("ca.crt"),
                         "--tls-auth-clients", "no", "--requirepass", "s3cret",
                         tls_ca=certs("ca.crt"), password="s3cret")
    try:
        secret = os.path.join(short_tmp, "pw")
        with open(secret, "w") as fh:
            fh.write("s3cret\n")
        os.chmod(secret, 0o600)
        url = f"rediss://localhost:{server.port}/0"
        common = ("--room", "r", "--node-ttl", str(NODE_TTL), "--broker-ca", certs("ca.crt"))
        a = daemon_factory("--broker", url, "--node-name", "a", "--broker-password-file",
                           secret, *common)
        credentials = os.path.join(short_tmp, "creds")  # as systemd's LoadCredential= does
        os.mkdir(credentials)
        shutil.copy(secret, os.path.join(credentials, "broker.password"))
        b = daemon_factory("--broker", url, "--node-name", "b", *common,
                           env={"CREDENTIALS_DIRECTORY": credentials})
        wait_for(lambda: linked(a) and linked(b), timeout=10)
        with open(f"/proc/{a.proc.pid}/cmdline", "rb") as fh:
            assert b"s3cret" not in fh.read()
        alice, bob = RawClient(status_port(a)), RawClient(status_port(b))
        alice.join("alice")
        bob.join("bob")
        read_event(alice, "join", nickname="bob")
        time.sleep(NODE_TTL / 2)
        msg = alice.say("over TLS")
        assert chat(bob, "alice")["uuid"] == msg
        # a wrong password, and a CA that did not sign the server's certificate
        wrong = os.path.join(short_tmp, "wrong")
        with open(wrong, "w") as fh:
            fh.write("guess\n")
        refused = daemon_factory("--broker", url, "--node-name", "c", "--broker-password-file",
                                 wrong, *common)
        rogue = daemon_factory("--broker", url, "--node-name", "d", "--broker-password-file",
                               secret, "--room", "r", "--broker-ca", certs("rogue.crt"))
        wait_for(lambda: log_lines(refused, "broker_lost") and log_lines(rogue, "broker_lost"))
        assert "password" in log_lines(refused, "broker_lost")[0]["error"].lower()
        assert "certificate" in log_lines(rogue, "broker_lost")[0]["error"].lower()
        carol = RawClient(status_port(refused))  # serving its own members all the same
        carol.join("carol")
        for client in (alice, bob, carol):
            client.close()
    finally:
        server.stop()


def test_a_node_that_starts_later_takes_its_history_from_the_stream(cluster, redis_server):
    a, port_a = cluster("a")
    wait_for(lambda: linked(a), timeout=10)
    alice = RawClient(port_a)
    alice.join("alice")
    for n in range(3):
        alice.say(f"before b {n}")
    wait_for(lambda: redis_server.command("XLEN", "tcpchat:r:stream").startswith(b":") and
             int(redis_server.command("XLEN", "tcpchat:r:stream")[1:]) >= 4)  # a join, 3
    b, port_b = cluster("b")
    wait_for(lambda: linked(b), timeout=10)
    bob = RawClient(port_b)
    bob.join("bob")
    assert bob.names["history"] == 3
    assert "before b 2" in json.dumps(bob.history)
    for client in (alice, bob):
        client.close()


def test_redis_back_with_stale_heartbeats_sweeps_nobody_for_one_node_ttl(cluster,
                                                                         redis_server):
    """Redis comes back with its data (the heartbeats now older than node_ttl): the first
    node back must not sweep the others before they have had one node_ttl to return."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"})
    (a, b), (alice, bob) = nodes.values(), clients.values()
    assert redis_server.command("SAVE").startswith(b"+OK")
    redis_server.stop()
    b.signal(signal.SIGSTOP)  # b comes back later than a
    try:
        time.sleep(NODE_TTL * 1.5)
        redis_server.start()  # loads the saved heartbeats, every one stale
        wait_for(lambda: log_lines(a, "broker_back"), timeout=10)
        time.sleep(NODE_TTL / 4)  # a has heartbeated; b's heartbeat is 2 node_ttl old
    finally:
        b.signal(signal.SIGCONT)
    wait_for(lambda: log_lines(b, "broker_back"), timeout=10)
    time.sleep(NODE_TTL * 2)
    assert not log_lines(a, "node_lost") and not log_lines(b, "node_lost")
    clients = ctl_json(a, "who")["clients"]
    assert [(c["nickname"], c["node"]) for c in clients] == [("alice", "a"), ("bob", "b")]
    for client in (alice, bob):
        client.close()


def kill_connections(server: RedisServer, node: str) -> int:
    """End every Redis connection of one node (they carry its name), as a network cut
    would; the node finds out at its next command."""
    listing = server.command("CLIENT", "LIST").decode()
    ids = [fields["id"] for fields in (dict(part.split("=", 1) for part in line.split()
                                            if "=" in part)
                                       for line in listing.splitlines())
           if fields.get("name") == f"tcpchatd-{node}"]
    for client_id in ids:
        server.command("CLIENT", "KILL", "ID", client_id)
    return len(ids)


def test_a_node_cut_off_from_redis_replays_what_it_missed(cluster, redis_server):
    """a loses its connections while bob (on b) speaks: back, a reads the stream from its
    last id, so alice gets every one of bob's messages, once, in order. (Whether a sees
    the cut depends on where its reader was: an XREAD whose BLOCK ran out before the kill
    has its empty answer in the socket already, and the client's pool then replaces the
    dead connection unseen; either way nothing is missed.)"""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"})
    (a, b), (alice, bob) = nodes.values(), clients.values()
    a.signal(signal.SIGSTOP)  # not long enough to be swept: NODE_TTL / 2
    try:
        assert kill_connections(redis_server, "a") >= 2
        sent = [bob.say(f"while a was cut off {n}") for n in range(3)]
        time.sleep(NODE_TTL / 4)
    finally:
        a.signal(signal.SIGCONT)
    got = [chat(alice, "bob")["uuid"] for _ in sent]
    assert got == sent
    after = bob.say("and after")
    assert chat(alice, "bob")["uuid"] == after  # nothing repeated in between
    assert not log_lines(b, "node_lost")
    for client in (alice, bob):
        client.close()


def test_an_upgrade_that_could_not_reach_the_broker_is_refused(daemon_factory, short_tmp):
    """The pre-flight checks what the new image needs for its broker: the password file
    gone, the upgrade is refused and the node serves on, linked."""
    server = RedisServer(short_tmp, "--requirepass", "s3cret", password="s3cret")
    try:
        secret = os.path.join(short_tmp, "pw")
        with open(secret, "w") as fh:
            fh.write("s3cret\n")
        a = daemon_factory("--broker", server.url, "--node-name", "a", "--room", "r",
                           "--broker-password-file", secret)
        wait_for(lambda: linked(a), timeout=10)
        os.unlink(secret)
        result = ctl(admin_socket(a), "upgrade")
        assert result.returncode == 1
        assert "cannot read the broker password" in result.stderr
        assert ctl_json(a, "stats")["upgrades"] == 0
        alice = RawClient(status_port(a))
        alice.join("alice")  # its claim still goes to Redis
        wait_for(lambda: b"alice" in server.command("HKEYS", "tcpchat:r:nicks"))
        alice.close()
    finally:
        server.stop()


def test_a_second_node_under_a_name_in_use_stays_apart_until_the_name_is_free(cluster):
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"})
    a, (alice, bob) = nodes["a"], clients.values()
    twin, twin_port = cluster("a")  # the same node_name, by mistake
    wait_for(lambda: log_lines(twin, "broker_lost"), timeout=10)
    (lost,) = log_lines(twin, "broker_lost")  # said once, not at every retry
    assert "node name a is in use by another node of cluster r" in lost["error"]
    carol = RawClient(twin_port)
    carol.join("carol")  # the twin serves its own members, apart
    # the first a kept its claims and its events: alice and bob chat; nobody sees carol
    msg = alice.say("still here")
    assert chat(bob, "alice")["uuid"] == msg
    assert read_names(bob) == ["alice", "bob"]
    time.sleep(NODE_TTL)  # retries meanwhile: one line still
    assert len(log_lines(twin, "broker_lost")) == 1
    a.stop()  # its name is free: the twin joins the room under it
    wait_for(lambda: log_lines(twin, "broker_back"), timeout=10)
    read_event(bob, "join", nickname="carol")
    msg = bob.say("hello carol")
    assert chat(carol, "bob")["uuid"] == msg
    for client in (alice, bob, carol):
        client.close()


def test_a_node_seen_in_the_stream_counts_before_its_first_heartbeat_is_read(cluster):
    """A long node_ttl (heartbeats 5 s apart): b is known to a from its first event, not
    from a's next heartbeat, so a message right after b's member joined waits for b."""
    (a, port_a) = cluster("a", "--node-ttl", "20")
    wait_for(lambda: linked(a), timeout=10)
    (b, port_b) = cluster("b", "--node-ttl", "20")
    wait_for(lambda: linked(b), timeout=10)
    alice, bob = RawClient(port_a), RawClient(port_b)
    alice.join("alice")
    bob.join("bob")
    read_event(alice, "join", nickname="bob")
    msg = alice.say("right away")
    bob.confirm(chat(bob, "alice")["uuid"])
    receipt = alice.read_until(lambda f: f.get("uuid") == msg and (
        f.get("type") == "confirm" or f.get("event") == "undelivered"))
    assert receipt == {"type": "confirm", "uuid": msg, "delivered": 1, "recipients": 1}
    # and a node that stops says so: a message after it waits for nobody on b
    bob.close()
    read_event(alice, "leave", nickname="bob")
    b.stop()
    carol = RawClient(port_a)
    carol.join("carol")
    msg = alice.say("after b")
    carol.confirm(chat(carol, "alice")["uuid"])
    receipt = alice.read_until(lambda f: f.get("uuid") == msg and f.get("type") == "confirm")
    assert (receipt["delivered"], receipt["recipients"]) == (1, 1)
    for client in (alice, carol):
        client.close()


def test_redis_frozen_neither_blocks_a_join_nor_leaves_a_ghost(cluster, redis_server):
    nodes, clients = linked_room(cluster, {"alice": "a", "ann": "a", "bob": "b"},
                                 "--io-threads", "1")
    (a, b), (alice, ann, bob) = nodes.values(), clients.values()
    port_a = status_port(a)
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        # a join on a while Redis does not answer: its claim waits off the loop, and the
        # loop goes on serving alice and ann
        carl = RawClient(port_a)
        assert carl.recv_exact(10) == b"_nickname_"
        carl.send_raw(b"carl")
        started = time.monotonic()
        msg = alice.say("still here?")
        assert chat(ann, "alice")["uuid"] == msg
        assert time.monotonic() - started < 0.5  # a claim blocked the loop for 1 s
        read_event(carl, "join", nickname="carl")
        ann.quit()  # leaves during the freeze: its leave cannot reach b now
        wait_for(lambda: [f["nick"] for f in log_lines(a, "leave")] == ["ann"], timeout=5)
        wait_for(lambda: log_lines(a, "broker_lost") and log_lines(b, "broker_lost"),
                 timeout=10)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    wait_for(lambda: log_lines(a, "broker_back") and log_lines(b, "broker_back"), timeout=10)
    # b learns that ann left (a published a leave for the claim it gave up), and her
    # nickname is free on b
    wait_for(lambda: "ann" not in [c["nickname"] for c in ctl_json(b, "who")["clients"]],
             timeout=10)
    # carl joined unclaimed; his claim, which Redis made after all once it woke, is
    # taken as his when a is back, and announced
    wait_for(lambda: "carl" in [c["nickname"] for c in ctl_json(b, "who")["clients"]],
             timeout=10)
    assert not log_lines(a, "nickname_lost")
    again = RawClient(status_port(b))
    again.join("ann")
    for client in (alice, bob, carl, again):
        client.close()


CROWD = 200


def test_an_upgrade_under_load_loses_no_event_of_another_node(cluster):
    """The loops stop first, then the broker (its reader at a batch's end), then the
    record: what the reader applied is in the connections recorded. 200 members that do
    not read make the record long (their backlogs are carried), so that bob's events
    come in meanwhile (issue 23, item 2)."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b"},
                                 "--announce-joins-max", "10", "--send-buffer", "4096",
                                 "--stall-timeout", "0")
    a, (alice, bob) = nodes["a"], clients.values()
    port_a = status_port(a)
    crowd = []
    for i in range(CROWD):
        member = RawClient(port_a, timeout=30, rcvbuf=4096)
        assert member.recv_exact(10) == b"_nickname_"
        member.send_raw(f"idle{i}".encode())
        crowd.append(member)  # and they never read again
    wait_for(lambda: len(ctl_json(a, "who")["clients"]) == CROWD + 2, timeout=30)
    count, sent = 1500, []

    def send():  # ~3 s: the pre-flight's second and the hand-over fall inside
        for n in range(count):
            sent.append(bob.say(f"{'x' * 200} n={n}"))
            time.sleep(0.002)
            if n == 100:
                a.signal(signal.SIGUSR2)
    sender = threading.Thread(target=send)
    sender.start()
    seen = []
    while len(seen) < count:
        got = chat(alice, "bob")
        seen.append(int(got["message"].rsplit("=", 1)[1]))
    sender.join()
    assert seen == list(range(count))
    wait_for(lambda: [u["ok"] for u in log_lines(a, "upgrade")] == ["yes"], timeout=10)
    for client in (alice, bob, *crowd):
        client.close()


def test_rooms_span_the_nodes_with_receipts_topics_and_the_admin_per_room(cluster):
    """Issue 25: a room's members on several nodes hear each other and only each other;
    topic, part, who, say and kick per room work from any node; a node started later
    learns where everyone is."""
    nodes, clients = linked_room(cluster, {"alice": "a", "bob": "b", "carol": "b"})
    (a, b), (alice, bob, carol) = nodes.values(), clients.values()
    alice.enter("dev")
    bob.enter("dev")

    def dev_names(client):  # (no_such_room on a node that knows no member of it yet)
        return client.answer(client.request("who", room="dev")).get("nicknames")
    wait_for(lambda: dev_names(bob) == ["alice", "bob"] and dev_names(alice) == ["alice",
                                                                                  "bob"])
    msg = alice.say("for dev only", room="dev")
    got = chat(bob, "alice")
    assert (got["uuid"], got["room"]) == (msg, "dev")
    bob.confirm(msg)
    receipt = alice.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == msg)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 1)  # carol is not in dev
    public = alice.say("for everyone")
    assert chat(carol, "alice")["uuid"] == public  # the dev message never reached carol
    # a topic set on b is heard on a
    bob.request("topic", room="dev", topic="ship friday")
    assert read_event(alice, "topic", room="dev")["topic"] == "ship friday"
    # a node that starts now learns every room's members
    c, port_c = cluster("c")
    dave = RawClient(port_c)
    dave.join("dave")
    wait_for(lambda: dev_names(dave) == ["alice", "bob"], timeout=10)
    # the admin per room, from any node
    who = ctl_json(c, "who", "dev")
    assert [(m["nickname"], m["node"]) for m in who["clients"]] == [("alice", "a"),
                                                                    ("bob", "b")]
    rooms = {r["room"]: r["members"] for r in ctl_json(c, "rooms")["rooms"]}
    assert rooms == {"dev": 2, "general": 4}
    assert ctl_json(a, "say", "--room", "dev", "deploying")["clients"] == 2
    assert read_event(bob, "announce", room="dev")["message"] == "deploying"
    kicked = ctl(admin_socket(c), "kick", "bob", "--room", "dev", "off", "topic")
    assert kicked.returncode == 0 and kicked.stdout.strip() == "kicked bob from #dev (on node b)"
    assert read_event(bob, "kick", room="dev")["reason"] == "off topic"
    left = read_event(alice, "leave", nickname="bob", room="dev")
    assert left["reason"] == "kicked"
    wait_for(lambda: dev_names(dave) == ["alice"])
    alice.request("part", room="dev")  # the last member parts: the room goes everywhere
    wait_for(lambda: [r["room"] for r in ctl_json(c, "rooms")["rooms"]] == ["general"])
    for client in (alice, bob, carol, dave):
        client.close()


def test_every_node_knows_every_account(cluster, short_tmp):
    """Issue 26: an account made on one node logs in on another; a node started later
    finds it in Redis; a role change and a removal are every node's; a node's own book
    from before the cluster is written up when it links."""
    from test_accounts import run_ctl
    a, port_a = cluster("a")
    b, port_b = cluster("b")
    wait_for(lambda: linked(a) and linked(b), timeout=10)
    assert run_ctl(admin_socket(a), "account", "add", "ann", password="ann pass\n") \
        .returncode == 0
    wait_for(lambda: log_lines(b, "account_sync"), timeout=10)
    client = RawClient(port_b)
    assert client.hello(account="ann", password="ann pass")["event"] == "login"
    client.joined()
    guest = RawClient(port_b)  # the reservation holds on b too
    assert guest.recv_exact(10) == PROMPT
    guest.send_raw(b"Ann")
    assert guest.read()["code"] == "nickname_reserved"
    assert run_ctl(admin_socket(b), "account", "role", "ann", "moderator").returncode == 0
    wait_for(lambda: len(log_lines(a, "account_sync")) == 1, timeout=10)
    listed = json.loads(run_ctl(admin_socket(a), "--json", "account", "list").stdout)
    assert [(x["name"], x["role"]) for x in listed["accounts"]] == [("ann", "moderator")]
    # a node with an account of its own, started later: it learns ann and tells its own
    state = os.path.join(short_tmp, "c-state")
    book = AccountBook(state)
    book.add("cy", "cy pass", "bot", 0)
    book.close()
    c, port_c = cluster("c", "--state-dir", state)
    wait_for(lambda: linked(c), timeout=10)
    late = RawClient(port_c)
    assert late.hello(account="ann", password="ann pass", nickname="ann2")["role"] == \
        "moderator"
    wait_for(lambda: [e for e in log_lines(a, "account_sync") if e.get("account") == "cy"],
             timeout=10)
    bot = RawClient(port_a)
    assert bot.hello(account="cy", password="cy pass")["role"] == "bot"
    assert run_ctl(admin_socket(c), "account", "del", "ann").returncode == 0
    wait_for(lambda: len(log_lines(b, "account_sync")) == 3, timeout=10)
    gone = RawClient(port_b)
    assert gone.hello(account="ann", password="ann pass")["code"] == "login_failed"


def test_every_node_keeps_the_history_of_its_rooms_from_the_stream(cluster, short_tmp):
    """Issue 27: a message is written by each node that serves its room (once: its uuid),
    and a node started later fills its history from the stream."""
    from test_history import answer, rows
    states = {name: os.path.join(short_tmp, f"h-{name}") for name in "abc"}
    a, port_a = cluster("a", "--state-dir", states["a"])
    b, port_b = cluster("b", "--state-dir", states["b"])
    wait_for(lambda: linked(a) and linked(b), timeout=10)
    alice, bob = RawClient(port_a), RawClient(port_b)
    alice.join("alice")
    bob.join("bob")
    read_event(alice, "join", nickname="bob")
    sent = [bob.say(f"note {n}") for n in range(5)]
    for frame_uuid in sent:
        alice.read_until(lambda f, u=frame_uuid: f.get("uuid") == u)
    for name in "ab":
        assert wait_for(lambda n=name: [r[0] for r in rows(states[n])] == sent, timeout=10)
    c, port_c = cluster("c", "--state-dir", states["c"])
    wait_for(lambda: linked(c), timeout=10)
    assert wait_for(lambda: [r[0] for r in rows(states["c"])] == sent, timeout=10)
    cy = RawClient(port_c)
    cy.join("cy")
    page = answer(cy, "history", limit=10)
    assert [m["uuid"] for m in page["messages"]] == sent
    assert page["messages"][0]["message"] == "bob: note 0"
