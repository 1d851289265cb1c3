"""A client that never reads: its queue really fills and only it pays."""

import socket
import threading

from conftest import status_port
from rawclient import RawClient, frame

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
    assert leaves == [{"type": "system", "event": "leave", "nickname": "stalled",
                       "reason": "send_queue_exceeded", "message": "stalled left!"}]
    rss_after = d.rss_kib()
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    assert stalled.closed(timeout=10)  # the server really closed it
    assert "Traceback" not in d.stderr()
