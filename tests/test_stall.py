"""A client that never reads: its queue really fills and only it pays."""

import json
import re
import socket
import subprocess
import threading

from conftest import status_port
from rawclient import RawClient, frame, wait_for, untimed

MESSAGES = 10_000
TEXT = "x" * 2048  # 10,000 x 2 KiB = 20 MB each way past the stalled client's buffers
# The sender keeps at most this many messages ahead of what the receiver has read, as a
# polite client would, so the receiver's own queue stays far below the 1 MiB bound. The
# stalled client gets every message too and never reads: only its queue overflows.
WINDOW = 200


def test_stalled_client_is_disconnected_and_the_others_lose_nothing(daemon_factory):
    # Flood limit off; the receipt bound raised: the sender runs up to 200 messages ahead
    # of what the receiver has READ, but the daemon may process the receiver's confirms
    # later than that under this load, and expiring them is not what this test is about
    # (test_room.py covers that bound).
    d = daemon_factory("--flood-rate", "0", "--pending-confirms", "100000")
    port = status_port(d)
    sender, receiver = RawClient(port, timeout=60), RawClient(port, timeout=60)
    sender.join("sender")
    receiver.join("receiver")
    stalled = RawClient(port, rcvbuf=4096)
    stalled.join("stalled")  # and never reads again
    sender.read_until(lambda f: f.get("nickname") == "stalled")
    receiver.read_until(lambda f: f.get("nickname") == "stalled")
    rss_before = d.rss_kib()

    uuids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(MESSAGES)]
    received, receipts, leaves = [], {}, []
    window = threading.Semaphore(WINDOW)

    def send_all():
        for u in uuids:
            assert window.acquire(timeout=60)
            sender.send_raw(frame({"type": "message", "uuid": u,
                                   "message": f"sender: {TEXT}"}))

    def read_receipts():
        while len(receipts) < MESSAGES:
            f = sender.read()
            if f["type"] == "confirm":
                receipts[f["uuid"]] = f
            elif f.get("event") == "leave":
                leaves.append(f)
            else:
                raise AssertionError(f"unexpected frame for the sender: {f}")

    def read_and_confirm():
        while len(received) < MESSAGES:
            f = receiver.read()
            if f["type"] == "message":
                received.append(f["uuid"])
                window.release()
                receiver.confirm(f["uuid"])

    threads = [threading.Thread(target=t) for t in (send_all, read_receipts, read_and_confirm)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)

    assert received == uuids  # every message, in order
    assert set(receipts) == set(uuids)  # one receipt each
    assert all(r["delivered"] == 1 for r in receipts.values())
    assert [untimed(leave) for leave in leaves] == [{
        "type": "system", "event": "leave", "nickname": "stalled",
        "reason": "send_queue_exceeded", "message": "stalled left!", "room": "general"}]
    rss_after = d.rss_kib()
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    assert stalled.closed(timeout=10)  # the server really closed it
    assert "Traceback" not in d.stderr()


def server_send_buffers(port: int) -> list[int]:
    """The send buffer size (`tb` of `ss -tm`) of each accepted socket of the daemon."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", "sport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    return [int(size) for size in re.findall(r"\btb(\d+)", out)]


def test_the_kernel_send_buffer_of_a_client_is_bounded(daemon_factory):
    """send_buffer: a client that never reads pins what SO_SNDBUF allows, not the 4 MiB
    that autotuning grows to (issue 23, item 11). The kernel doubles the value set."""
    d = daemon_factory("--send-buffer", "32768")
    port = status_port(d)
    one = RawClient(port)
    one.join("one")
    assert server_send_buffers(port) == [65536]
    one.close()


def test_a_client_that_takes_nothing_is_dropped_after_stall_timeout(daemon_factory):
    """A room too quiet to fill send_queue: the client that reads nothing leaves (reason
    stalled) once the kernel has taken nothing for stall_timeout."""
    d = daemon_factory("--send-buffer", "8192", "--stall-timeout", "1", "--flood-rate", "0")
    port = status_port(d)
    talker = RawClient(port)
    talker.join("talker")
    mute = RawClient(port, rcvbuf=4096)
    mute.join("mute")  # and never reads again
    talker.read_until(lambda f: f.get("nickname") == "mute")
    for _ in range(40):  # 160 KB: far below send_queue (1 MiB), far above the buffers
        talker.say("y" * 4000)
    leave = talker.read_until(lambda f: f.get("event") == "leave")
    assert (leave["nickname"], leave["reason"]) == ("mute", "stalled")
    wait_for(lambda: re.search(r"leave nick=mute room=general reason=stalled", d.stderr()))


def test_a_client_dropped_for_its_queue_gets_whole_frames_then_the_notice(daemon_factory):
    """The frame the kernel took a part of is finished before the send_queue_exceeded
    notice: the stream it reads afterwards parses to the end (issue 23, item 12)."""
    d = daemon_factory("--send-buffer", "8192", "--send-queue", "65536", "--flood-rate", "0",
                       "--shutdown-grace", "10", "--stall-timeout", "0")
    port = status_port(d)
    talker = RawClient(port, timeout=30)
    talker.join("talker")
    slow = RawClient(port, rcvbuf=4096, timeout=30)
    slow.join("slow")  # reads nothing while the room talks
    talker.read_until(lambda f: f.get("nickname") == "slow")
    for i in range(200):  # ~600 KB of messages of a size that cuts frames anywhere
        talker.say(f"{i:04d} " + "z" * (2900 + 37 * (i % 11)))
    talker.read_until(lambda f: f.get("event") == "leave" and f["nickname"] == "slow")
    data = b""
    while chunk := slow.sock.recv(65536):  # now it reads, to the end
        data += chunk
    frames, position = [], 0
    while position < len(data):
        header = data[position:position + 10]
        assert header.strip().isdigit() and header.rstrip(b" ").lstrip(b" ").isdigit(), (
            position, header)
        length = int(header)
        body = data[position + 10:position + 10 + length]
        assert len(body) == length, "the stream ends inside a frame"
        frames.append(json.loads(body))
        position += 10 + length
    assert frames[-1]["code"] == "send_queue_exceeded"
    assert all(f.get("type") in ("system", "message") for f in frames)
