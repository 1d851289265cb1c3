"""A peer that stops answering: TCP keepalive finds it, and both ends learn of it.

Each test runs the daemon and its clients in a network namespace of their own, whose
loopback it takes down for a few seconds: every packet between them is lost, as when a
client's machine or its network vanishes (or, on a loaded machine, when loopback's
backlog drops a burst of keepalive probes: what a 100,000-member benchmark ran into).
The daemon's probes go unanswered and it drops the member; the reset it sends is lost
too, so the client's socket stays open, hearing nothing, until it speaks or probes.
"""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import ctl, status_port
from netns import PrivateNetwork
from rawclient import RawClient, wait_for

# probed after 1 s of silence, then every second; two unanswered probes and it is gone
FAST_KEEPALIVE = ("--keepalive-idle", "1", "--keepalive-interval", "1",
                  "--keepalive-probes", "2")
CLIENT = [sys.executable, "-m", "tcpchatd.cli.client"]


def lines(daemon, prefix: str) -> list[str]:
    return [line for line in daemon.stderr().splitlines() if line.startswith(prefix)]


def idle(net: PrivateNetwork, port: int) -> bool:
    """Every connection of the daemon's has all it was sent acknowledged: its keepalive
    timer runs (`ss`), not a retransmission's (what is in flight when the loopback goes
    down is retransmitted for many minutes: keepalive is for a connection at rest)."""
    out = net.run(subprocess.run, ["ss", "-tnoH", "state", "established",
                                   "sport", "=", f":{port}"],
                  capture_output=True, text=True, check=True).stdout.splitlines()
    return bool(out) and all("timer:(keepalive" in line for line in out)


def cut_off_until(net: PrivateNetwork, daemon, nickname: str) -> None:
    """Once at rest, loopback down until the daemon has dropped `nickname`; then up."""
    wait_for(lambda: idle(net, status_port(daemon)), timeout=10)
    net.loopback(False)
    try:
        wait_for(lambda: lines(daemon, f"leave nick={nickname} "), timeout=20)
    finally:
        net.loopback(True)


def test_a_member_whose_peer_stops_answering_leaves_with_reason_timeout(
        daemon_factory, short_tmp):
    admin = f"{short_tmp}/ka.sock"
    with PrivateNetwork() as net:
        daemon = net.run(daemon_factory, *FAST_KEEPALIVE, "--admin-socket", admin)
        port = status_port(daemon)
        silent = net.run(RawClient, port)
        silent.join("silent")
        assert "silent" in ctl(admin, "who").stdout

        cut_off_until(net, daemon, "silent")

        # the log says why (not `error`: the peer did nothing wrong, it went quiet)
        assert lines(daemon, "leave nick=silent ") == \
            ["leave nick=silent room=general reason=timeout"]
        who = ctl(admin, "who")
        assert who.returncode == 0 and "silent" not in who.stdout
        later = net.run(RawClient, port)
        later.join("later")
        assert later.names["nicknames"] == ["later"]
        # the reset the daemon sent was lost with the rest: the client's socket is still
        # open and hears nothing (what the client's own keepalive is for: next test)
        assert not silent.closed(timeout=0.5)
        later.say("anyone?")
        assert not silent.closed(timeout=0.5)
        # once it speaks, the daemon's kernel answers with a reset
        silent.say("hello?")
        assert silent.closed(timeout=5)
        later.close()


def test_without_keepalive_a_silent_peer_stays_a_member(daemon_factory, short_tmp):
    admin = f"{short_tmp}/nk.sock"
    with PrivateNetwork() as net:
        daemon = net.run(daemon_factory, *FAST_KEEPALIVE, "--no-keepalive",
                         "--admin-socket", admin)
        port = status_port(daemon)
        silent = net.run(RawClient, port)
        silent.join("silent")
        net.loopback(False)
        time.sleep(4)  # twice what the keepalive above needs to drop it
        net.loopback(True)
        assert not lines(daemon, "leave ")
        assert "silent" in ctl(admin, "who").stdout
        silent.say("still here")  # and it is: the connection was never broken
        wait_for(lambda: lines(daemon, "message "))
        silent.close()


def test_the_client_notices_the_server_dropped_it_and_comes_back(daemon_factory):
    with PrivateNetwork() as net:
        daemon = net.run(daemon_factory, *FAST_KEEPALIVE)
        port = status_port(daemon)
        client = net.run(subprocess.Popen,
                         [*CLIENT, "--port", str(port), "--nick", "piper", "--keepalive", "1"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            wait_for(lambda: lines(daemon, "join nick=piper "), timeout=10)
            cut_off_until(net, daemon, "piper")
            assert lines(daemon, "leave nick=piper ") == \
                ["leave nick=piper room=general reason=timeout"]
            # its keepalive probe meets the daemon's reset: it reconnects and joins again
            wait_for(lambda: len(lines(daemon, "join nick=piper ")) == 2, timeout=15)
            reader = net.run(RawClient, port)
            reader.join("reader")
            client.stdin.write("back again\n")
            client.stdin.close()
            heard = reader.read_until(lambda f: f.get("type") == "message")
            assert heard["message"] == "piper: back again"
            reader.confirm(heard["uuid"])
            assert client.wait(20) == 0
            out, err = client.stdout.read(), client.stderr.read()
            assert "reconnected as piper" in err, err
            assert "delivered to 1 of 1" in out, out
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
