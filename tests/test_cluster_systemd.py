"""The cluster under a real systemd (issue 30, part 2): on a machine booted with systemd
(systemd_lab.Machine), Debian's redis-server runs as a service with a password, and two
nodes run as services: the package's tcpchatd.service with the shipped drop-in
(contrib/systemd/cluster-node.conf, the password through LoadCredential=), and a second
node beside it on the same machine, made from the installed unit as an operator would
make one (its own sockets, state folder and node name, the same drop-in). Members on both
nodes chat while one node is stopped, restarted and upgraded without a restart."""

import itertools
import json
import os
import re
import shutil
import threading

import pytest

from rawclient import RawClient, wait_for
from test_package import MACHINE_PORT, connect, deb, machine, traffic  # noqa: F401
from test_upgrade import chat_through

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROP_IN = os.path.join(ROOT, "contrib", "systemd", "cluster-node.conf")
PASSWORD = "lab-broker-password-7c1e"
B_PORT = 55556
B_ADMIN = "/run/tcpchatd-b/admin.sock"
A, B = "tcpchatd.service", "tcpchatd-b.service"


def write(machine, inside: str, text: str, mode: int = 0o644) -> None:
    path = machine.path(inside)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def read(machine, inside: str) -> str:
    with open(machine.path(inside)) as fh:
        return fh.read()


def second_node_units(machine) -> None:
    """Node b: the installed service and sockets under other names, on port 55556 and
    its own admin socket and state folder; the same drop-in, named b."""
    service = read(machine, "/lib/systemd/system/tcpchatd.service")
    service = service.replace("Requires=tcpchatd-admin.socket",
                              "Requires=tcpchatd-b-admin.socket")
    service = service.replace("Wants=tcpchatd.socket", "Wants=tcpchatd-b.socket")
    service = re.sub(r"^After=.*$", "After=tcpchatd-b.socket tcpchatd-b-admin.socket "
                     "network.target", service, flags=re.M)
    service = re.sub(r"^StateDirectory=tcpchatd$", "StateDirectory=tcpchatd-b", service,
                     flags=re.M)
    service = re.sub(r"^Also=.*\n", "", service, flags=re.M)
    write(machine, f"/etc/systemd/system/{B}", service)
    chat = read(machine, "/lib/systemd/system/tcpchatd.socket")
    chat = chat.replace("ListenStream=55555", f"ListenStream={B_PORT}")
    write(machine, "/etc/systemd/system/tcpchatd-b.socket",
          chat.replace("Service=tcpchatd.service", f"Service={B}"))
    admin = read(machine, "/lib/systemd/system/tcpchatd-admin.socket")
    admin = admin.replace("ListenStream=/run/tcpchatd/admin.sock", f"ListenStream={B_ADMIN}")
    write(machine, "/etc/systemd/system/tcpchatd-b-admin.socket",
          admin.replace("Service=tcpchatd.service", f"Service={B}"))
    with open(DROP_IN) as fh:
        drop_in = fh.read()
    write(machine, f"/etc/systemd/system/{B}.d/cluster.conf",
          drop_in.replace("--node-name %H", "--node-name b"))


@pytest.fixture(scope="module")
def nodes(machine):  # noqa: F811 (the package's machine fixture, for this module)
    """Redis as a service with a password; nodes a (the package's unit and the shipped
    drop-in as it is) and b, started and linked."""
    redis_conf = read(machine, "/etc/redis/redis.conf")
    write(machine, "/etc/redis/redis.conf", redis_conf + f"\nrequirepass {PASSWORD}\n",
          0o640)
    shutil.chown(machine.path("/etc/redis/redis.conf"), "redis", "redis")
    machine.systemctl("start", "redis-server.service")
    write(machine, "/etc/tcpchatd/broker.password", PASSWORD + "\n", 0o600)
    with open(DROP_IN) as fh:
        write(machine, f"/etc/systemd/system/{A}.d/cluster.conf", fh.read())
    second_node_units(machine)
    machine.systemctl("daemon-reload")
    started = machine.systemctl("start", A, B, check=False)
    assert started.returncode == 0, machine.run("journalctl", "--no-pager", "-n", "60", "-u", A,
                                                "-u", B, check=False).stdout
    machine.node_a = machine.run("hostname").stdout.strip()
    wait_for(lambda: len(stats(machine, "a").get("cluster", {}).get("nodes", [])) == 2,
             timeout=30)
    yield machine
    machine.systemctl("stop", A, B, check=False)


def ctl(machine, node: str, *args: str):
    socket_args = ("--admin-socket", B_ADMIN) if node == "b" else ()
    return machine.run("tcpchatctl", *socket_args, *args, check=False)


def stats(machine, node: str) -> dict:
    result = ctl(machine, node, "stats", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def who(machine, node: str) -> list[tuple[str, str]]:
    result = ctl(machine, node, "who", "--json")
    assert result.returncode == 0, result.stderr
    return sorted((c["nickname"], c["node"]) for c in json.loads(result.stdout)["clients"])


def client(machine, port: int, nickname: str) -> RawClient:
    joined = connect(machine)(port, timeout=15)
    assert joined.join(nickname)["nickname"] == nickname
    return joined


def chat(reader: RawClient, nickname: str) -> dict:
    return reader.read_until(lambda f: f.get("type") == "message" and "uuid" in f
                             and f.get("nickname") == nickname)


def event(reader: RawClient, name: str, nickname: str) -> dict:
    return reader.read_until(lambda f: f.get("event") == name
                             and f.get("nickname") == nickname)


def test_the_shipped_drop_in_links_both_nodes_through_redis_with_the_credential(nodes):
    machine = nodes
    for unit in (A, B, "redis-server.service"):
        assert machine.show(unit, "ActiveState") == "active", unit
    # the password is a credential: not in the unit's command line, not in the traffic log
    assert machine.show(A, "DropInPaths") == f"/etc/systemd/system/{A}.d/cluster.conf"
    for unit in (A, B):  # systemd's copy, for the service's user alone
        owner = machine.run("stat", "-c", "%U %a",
                            f"/run/credentials/{unit}/broker.password").stdout.split()
        assert owner == ["tcpchatd", "400"], (unit, owner)
    assert PASSWORD not in machine.show(A, "ExecStart")
    assert f"--node-name {machine.node_a}" in machine.show(A, "ExecStart")  # %H
    assert stats(machine, "a")["cluster"]["nodes"] == sorted([machine.node_a, "b"])
    # Redis refuses anyone without the password: the nodes linked with the credential's
    refused = machine.run("redis-cli", "ping", check=False)
    assert "NOAUTH" in refused.stdout + refused.stderr
    ann, bob = client(machine, MACHINE_PORT, "ann"), client(machine, B_PORT, "bob")
    event(ann, "join", "bob")
    said = ann.say("hello from a")
    assert chat(bob, "ann")["message"] == "ann: hello from a"
    bob.confirm(said)
    receipt = ann.read_until(lambda f: f.get("type") == "confirm" and f["uuid"] == said)
    assert (receipt["delivered"], receipt["recipients"]) == (1, 1)
    assert who(machine, "b") == [("ann", machine.node_a), ("bob", "b")]
    ann.close()
    bob.close()
    log = wait_for(lambda: (text := traffic(machine)) and "nick=bob" in text and text,
                   timeout=10)
    assert PASSWORD not in log


def test_a_node_stopped_and_started_again_while_the_other_chats(nodes):
    machine = nodes
    ann, bob = client(machine, MACHINE_PORT, "ann2"), client(machine, B_PORT, "bob2")
    event(ann, "join", "bob2")
    machine.systemctl("stop", B)
    assert bob.closed(timeout=15)  # its node stopped: told, then closed
    left = event(ann, "leave", "bob2")  # b said bye: no wait for node_ttl
    assert left["reason"] == "shutdown", left
    assert who(machine, "a") == [("ann2", machine.node_a)]
    machine.systemctl("start", B)
    wait_for(lambda: "b" in stats(machine, "a").get("cluster", {}).get("nodes", []),
             timeout=30)
    back = client(machine, B_PORT, "bob2")  # the name is free again
    event(ann, "join", "bob2")
    said = back.say("back on b")
    assert chat(ann, "bob2")["message"] == "bob2: back on b"
    ann.confirm(said)
    assert back.read_until(lambda f: f.get("type") == "confirm"
                           and f["uuid"] == said)["delivered"] == 1
    ann.close()
    back.close()


def test_a_node_restarted_by_systemd_its_members_come_back(nodes):
    machine = nodes
    ann, bob = client(machine, MACHINE_PORT, "ann3"), client(machine, B_PORT, "bob3")
    event(ann, "join", "bob3")  # a knows of b's member: so b knows of a's
    pid = machine.show(A, "MainPID")
    machine.systemctl("restart", A)
    assert machine.show(A, "MainPID") != pid
    assert ann.closed(timeout=15)
    event(bob, "leave", "ann3")
    wait_for(lambda: machine.node_a in stats(machine, "b").get("cluster", {}).get(
        "nodes", []), timeout=30)
    again = client(machine, MACHINE_PORT, "ann3")
    event(bob, "join", "ann3")
    said = bob.say("welcome back")
    assert chat(again, "bob3")["message"] == "bob3: welcome back"
    assert who(machine, "a") == [("ann3", machine.node_a), ("bob3", "b")]
    again.close()
    bob.close()


def test_a_hitless_upgrade_of_one_node_while_members_of_both_chat(nodes):
    """Six members, alternately on a and b, send numbered messages through `tcpchatctl
    upgrade` on a: every message reaches the five others in order, once, and every
    receipt counts five."""
    machine = nodes
    pid = machine.show(A, "MainPID")
    ports = itertools.cycle([MACHINE_PORT, B_PORT])
    lock = threading.Lock()

    def on_either_node(_port, timeout=10):
        with lock:
            port = next(ports)
        return machine.in_network(lambda: RawClient(port, timeout=timeout))
    outcome = {}

    def upgrade():
        outcome["upgrade"] = ctl(machine, "a", "upgrade")
    def known_on_both_nodes(names):
        for node in ("a", "b"):
            wait_for(lambda: {nick for nick, _ in who(machine, node)} >= set(names),
                     timeout=15)
    chatters = chat_through(MACHINE_PORT, upgrade, connect=on_either_node, count=60,
                            interval=0.06, ready=known_on_both_nodes)
    result = outcome["upgrade"]
    assert result.returncode == 0, result.stderr
    assert re.search(r"upgraded to tcpchatd \S+ \(pid \d+\); 3 clients carried",
                     result.stdout), result.stdout
    assert machine.show(A, "MainPID") == pid
    assert machine.show(A, "NRestarts") == "0"
    assert stats(machine, "a")["upgrades"] == 1
    assert sorted(stats(machine, "b")["cluster"]["nodes"]) == sorted([machine.node_a, "b"])
    for chatter in chatters.values():
        chatter.client.close()
