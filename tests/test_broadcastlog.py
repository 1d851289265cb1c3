"""The broadcast log (net/broadcastlog.py) on its own: positions, the sender's own frames
left out, byte and chat counts, trimming, and appends from many threads."""

import threading

import pytest

from tcpchatd.net.broadcastlog import BroadcastLog

ALICE, BOB = object(), object()


def test_frames_come_back_joined_in_order_and_never_to_their_sender():
    log = BroadcastLog()
    assert log.append(b"join ", None) == 0
    assert log.append(b"hi-from-alice ", ALICE, chat=True) == 1
    assert log.append(b"hi-from-bob ", BOB, chat=True) == 2
    assert log.end == 3 and len(log) == 3
    assert log.chunk(0, 3) == b"join hi-from-alice hi-from-bob "
    assert log.chunk(0, 3, ALICE) == b"join hi-from-bob "
    assert log.chunk(0, 3, BOB) == b"join hi-from-alice "
    assert log.chunk(1, 2, ALICE) == b""
    # the shared chunk is cached: asking again (as every caught-up connection does)
    # returns the same bytes, and the sender's copy is still without its frame
    assert log.chunk(0, 3) is log.chunk(0, 3)
    assert log.chunk(0, 3, ALICE) == b"join hi-from-bob "


def test_bytes_and_chats_are_counted_by_position():
    log = BroadcastLog()
    log.append(b"aaaa")
    log.append(b"bb", ALICE, chat=True)
    log.append(b"c", BOB, chat=True)
    assert log.bytes_between(0, 3) == 7
    assert log.bytes_between(1, 3) == 3
    assert log.bytes_between(2, 99) == 1  # past the end: up to the end
    assert log.bytes_between(3, 3) == 0
    assert log.chats_before(0) == 0
    assert log.chats_before(2) == 1
    assert log.chats_before(None) == log.chat_total == 2


def test_trim_forgets_what_everyone_was_sent_and_positions_stay():
    log = BroadcastLog()
    for number in range(10):
        log.append(b"%d" % number)
    log.trim(6)
    assert (log.base, log.end, len(log)) == (6, 10, 4)
    assert log.chunk(6, 10) == b"6789"
    assert log.bytes_between(7, 10) == 3
    assert log.chats_before(8) == 0
    assert log.chats_before(2) == 0  # trimmed: those before the oldest held frame
    with pytest.raises(IndexError):
        log.chunk(5, 10)  # trimmed: asking for it is a bug, never silently wrong bytes
    log.trim(3)  # behind the base: nothing happens
    assert log.base == 6
    log.trim(99)  # never past the end
    assert (log.base, log.end, len(log)) == (10, 10, 0)
    assert log.append(b"next") == 10 and log.chunk(10, 11) == b"next"


def test_appends_from_many_threads_keep_every_frame_once():
    log = BroadcastLog()

    def publish(tag: bytes) -> None:
        for number in range(2000):
            log.append(tag + b"%05d;" % number)
    threads = [threading.Thread(target=publish, args=(tag,)) for tag in (b"a", b"b", b"c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    frames = log.chunk(0, log.end).split(b";")[:-1]
    assert len(frames) == 6000 and len(set(frames)) == 6000
    for tag in (b"a", b"b", b"c"):  # each publisher's frames in its own order
        mine = [f for f in frames if f.startswith(tag)]
        assert mine == sorted(mine)
    assert log.bytes_between(0, log.end) == 6000 * 7


def test_chats_before_a_trimmed_position_are_those_before_the_base():
    log = BroadcastLog()
    for number in range(6):
        log.append(b"m", ALICE, chat=number % 2 == 0)  # chats at 0, 2, 4
    log.trim(3)
    assert log.chats_before(3) == 2 and log.chats_before(1) == 2
    assert log.chats_before(5) == 3 and log.chats_before(None) == 3
    log.trim(6)  # everything trimmed: the list is empty, the count is not
    assert log.chats_before(2) == 3 and log.chats_before(6) == 3
