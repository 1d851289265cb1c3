"""A load generator in one process (selectors): N clients, S senders, window W, D seconds.

Speaks tcpchatd's protocol (10-byte headers, JSON) or IRC (for ngircd), so both servers
are measured by the same loop. Bounded and self-stopping: sending ends after D seconds,
the drain after `drain` more seconds, whatever the server does.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import ssl
import time
import uuid as uuidlib
from array import array
from dataclasses import dataclass, field

_TS = re.compile(rb'"message":"[^"]*? (\d+) (\d+) (\d+)"')
_MSG_PREFIX = b'{"type":"message","uuid":"'
_UUID_AT = slice(len(_MSG_PREFIX), len(_MSG_PREFIX) + 36)
_CONFIRM = b'{"type":"confirm","uuid":"%s"}'
# A whole chat message frame as tcpchatd sends it, with the numbers the generator put in
# its text (sender, sequence, send time): most of what a recipient reads under load.
_MSG_FRAME = re.compile(rb'(\d+) *\{"type":"message","uuid":"([-0-9a-f]{36})","message":'
                        rb'"[^"\\]*? (\d+) (\d+) (\d+)","nickname":"[^"\\]*","time":"[^"]*"'
                        rb'(?:,"room":"[^"\\]*")?\}')
_CONFIRM_HEADER = b"%-10d" % len(_CONFIRM % (b"x" * 36))
_IRC_MSG = re.compile(rb"^:([^! ]+)\S* PRIVMSG \S+ :(\d+) (\d+) (\d+)$")
# IRC without a channel: an operator's PRIVMSG to a server mask reaches every user of
# the server (RFC 2812, 3.3.1), so 10,000 users get one message without 10,000 JOINs,
# each broadcast to the whole channel (about 50 million JOIN lines)
IRC_SERVER_MASK = "$bench.invalid"
CONNECTS_IN_FLIGHT = 8
RECV_SIZE = 262144


@dataclass
class Settings:
    port: int
    clients: int = 200
    senders: int = 20
    window: int = 20
    duration: float = 5.0
    rate: float = 0.0          # messages/s per sender; 0 = as fast as the window allows
    confirms: bool = True      # tcpchatd only: recipients confirm, receipts open the window
    irc: bool = False
    drain: float = 5.0
    text_size: int = 32
    fanout: bool = False       # after joining: one message to everyone, timed
    irc_mask: bool = False     # IRC: no channel; registered = joined; send to the server mask
    tls: bool = False          # tcpchatd's TLS port; every client verifies against cafile
    cafile: str | None = None
    ports: tuple[int, ...] = ()  # a cluster's nodes: client i connects to ports[i % len]
    rooms: int = 0             # tcpchatd: rooms r0..r{rooms-1}; 0 = the default room alone
    rooms_per_client: int = 1  # client i joins r(i), r(i+1)... of them; a sender sends to
    #                            its rooms in turn
    leave_default: bool = False  # ... and parts the default room once in its own
    hello_room: bool = False   # ... or goes straight into its first room (a hello frame
    #                            naming it), never in the default room
    web: bool = False          # tcpchatd's web port: every client a WebSocket (a browser's
    #                            connection, without the browser)
    irc_door: bool = False     # IRC to tcpchatd's IRC port: registered = in #general (no
    #                            JOIN, no OPER); tcpchatd confirms for IRC clients itself
    name_prefix: str = "b"     # nicknames PREFIX0, PREFIX1...: several generators, one room
    index_base: int = 0        # its clients' numbers start here (several generators: a
    #                            sender's number in a text names one client of all)
    join_deadline: float = 120.0  # seconds the joins may take once every client connected
    confirm_after_reads: bool = False  # a poll's replies (its confirms) are sent after all
    #                            of its reads: each delivery is stamped before the replies to
    #                            the ones read before it (bench independent's readers)

    def members(self) -> int:
        """Members of the room a message goes to (every client in every room of the run,
        or the clients spread over the rooms)."""
        if not self.rooms or self.rooms_per_client >= self.rooms:
            return self.clients
        return self.clients * self.rooms_per_client // self.rooms


class Client:
    __slots__ = ("index", "sock", "fd", "name", "rbuf", "wbuf", "joined", "sender",
                 "window", "seq", "next_send", "want_write", "rooms", "awaiting", "wsin",
                 "wsout", "upgraded")

    def __init__(self, index: int, sock: socket.socket, name: str) -> None:
        self.index, self.sock, self.fd, self.name = index, sock, sock.fileno(), name
        self.rbuf, self.wbuf = bytearray(), bytearray()
        self.joined = False
        self.sender = False
        self.window = 0
        self.seq = 0
        self.next_send = 0.0
        self.want_write = False
        self.rooms: list[str] = []  # the rooms it talks in (none: the default room)
        self.awaiting = 0           # answers to its room requests still due
        self.wsin, self.wsout = bytearray(), bytearray()  # WebSocket bytes (web)
        self.upgraded = False       # web: the 101 came


# The generator's side of a WebSocket, written here for speed (it shares the cores with
# the server it measures; the daemon's side is wsproto's). A client masks its frames: with
# the key 0, which leaves the payload as it is. The server never fragments: one text
# message per chat frame.
UPGRADE = ("GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: YmVuY2ggYmVuY2ggYmVuY2g=\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")
_ZERO_MASK = b"\0\0\0\0"


def ws_client_frames(chat: bytes | bytearray) -> bytes:
    """Each chat frame (header and body) as one masked WebSocket text frame."""
    out, pos, size = bytearray(), 0, len(chat)
    while pos < size:
        length = int(chat[pos:pos + 10])
        body = chat[pos + 10:pos + 10 + length]
        pos += 10 + length
        if length < 126:
            out += bytes((0x81, 0x80 | length))
        elif length < 65536:
            out += bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            out += bytes((0x81, 0x80 | 127)) + length.to_bytes(8, "big")
        out += _ZERO_MASK
        out += body
    return bytes(out)


def ws_server_messages(buf: bytearray) -> tuple[bytes, int]:
    """The chat stream the whole WebSocket frames at the head of buf carry, and where
    they end."""
    out, pos, size = bytearray(), 0, len(buf)
    while size - pos >= 2:
        length, head = buf[pos + 1] & 0x7F, 2
        if length == 126:
            if size - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if size - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if size - pos < head + length:
            break
        if buf[pos] & 0x0F == 1:  # text; a close or a pong carries nothing for the chat
            payload = buf[pos + head:pos + head + length]
            out += payload if payload == b"_nickname_" else b"%-10d" % length + payload
        pos += head + length
    return bytes(out), pos


@dataclass
class Result:
    sent: int = 0
    deliveries: int = 0
    receipts: int = 0
    undelivered: int = 0
    errors: int = 0
    disconnects: int = 0
    latencies: array = field(default_factory=lambda: array("d"))
    connect_s: float = 0.0
    fanout_s: float | None = None


class LoadGenerator:
    def __init__(self, settings: Settings, on_tick=None) -> None:
        self.s = settings
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.joined_count = 0
        # one buffer for every read: recv(256 KiB) would allocate (and map) 256 KiB a call
        self._recv_buffer = bytearray(RECV_SIZE)
        self._replies: dict[int, Client] | None = None  # confirm_after_reads: who has some
        self._recv_view = memoryview(self._recv_buffer)
        self.by_fd: dict[int, Client] = {}
        self.result = Result()
        self.on_tick = on_tick
        self.sending = False
        self.observer: Client | None = None
        self.padding = "x" * max(0, settings.text_size - 24)
        self.fanout_seen = 0
        self.fanout_target = 0
        self.tls = ssl.create_default_context(cafile=settings.cafile) if settings.tls else None

    # --- connection plumbing

    def _connect(self, index: int) -> Client:
        port = self.s.ports[index % len(self.s.ports)] if self.s.ports else self.s.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if self.tls is not None:  # the handshake blocks here: the join time includes it
            sock = self.tls.wrap_socket(sock, server_hostname="localhost")
        if self.s.web:  # the upgrade asked at once; its 101 is read with the rest
            sock.sendall(UPGRADE.format(port=port).encode())
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(index, sock, f"{self.s.name_prefix}{index}")
        self.clients.append(client)
        self.by_fd[client.fd] = client
        self.sel.register(sock, selectors.EVENT_READ, client)
        if self.s.irc:
            self._queue(client, f"NICK {client.name}\r\nUSER {client.name} 0 * :b\r\n".encode())
        return client

    def _queue(self, client: Client, data: bytes) -> None:
        client.wbuf += data
        if self._replies is not None:  # confirm_after_reads: at the poll's end
            self._replies[client.fd] = client
        else:
            self._flush(client)

    def _joined(self, client: Client) -> None:
        if not client.joined:
            client.joined = True
            self.joined_count += 1

    def _flush(self, client: Client) -> None:
        if self.s.web and client.wbuf and client.upgraded:
            client.wsout += ws_client_frames(client.wbuf)
            client.wbuf.clear()
        out = client.wsout if self.s.web else client.wbuf
        if out:
            try:
                sent = client.sock.send(out)
                del out[:sent]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            except OSError:
                self._lost(client)
                return
        want = bool(out)
        if want != client.want_write:
            client.want_write = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(client.sock, events, client)

    def _lost(self, client: Client) -> None:
        if client.fd in self.by_fd:
            del self.by_fd[client.fd]
            self.result.disconnects += 1
            self.sel.unregister(client.sock)
            client.sock.close()

    def _poll(self, timeout: float) -> None:
        if self.s.confirm_after_reads:
            self._replies = {}
        try:
            self._read_events(timeout)
        finally:
            replies, self._replies = self._replies, None
        for fd, client in (replies or {}).items():
            if fd in self.by_fd:
                self._flush(client)

    def _read_events(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            client = key.data
            if mask & selectors.EVENT_READ:
                try:
                    size = client.sock.recv_into(self._recv_buffer)
                    if size and self.tls is not None:  # whole TLS records already decrypted
                        while client.sock.pending() and size < RECV_SIZE - 16384:
                            size += client.sock.recv_into(self._recv_view[size:])
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    size = None
                except OSError:
                    size = 0
                if size == 0:
                    self._lost(client)
                    continue
                if size:
                    if self.s.web:
                        self._web_in(client, self._recv_view[:size])
                    else:
                        client.rbuf += self._recv_view[:size]
                    if self.s.irc:
                        self._irc_lines(client)
                    else:
                        self._chat_frames(client)
            if mask & selectors.EVENT_WRITE and client.fd in self.by_fd:
                self._flush(client)

    def _web_in(self, client: Client, data) -> None:
        """WebSocket bytes in; the chat stream they carry onto rbuf."""
        wsin = client.wsin
        wsin += data
        if not client.upgraded:
            end = wsin.find(b"\r\n\r\n")
            if end < 0:
                return
            if not wsin.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"the web port refused the upgrade: {bytes(wsin[:40])!r}")
            del wsin[:end + 4]
            client.upgraded = True
        chat, used = ws_server_messages(wsin)
        del wsin[:used]
        client.rbuf += chat

    # --- tcpchatd protocol

    def _chat_frames(self, client: Client) -> None:
        buf = client.rbuf
        pos, out = self._chat_messages(client, buf), bytearray()
        if self.s.confirms and pos:
            out += self._confirms if not self.s.web else self._bulk_confirms
        while len(buf) - pos >= 10:
            header = bytes(buf[pos:pos + 10])
            if header == b"_nickname_":
                if self.s.web and not self.s.rooms:  # a WebSocket's answer: a hello
                    hello = json.dumps({"type": "hello", "nickname": client.name}).encode()
                    out += b"%-10d" % len(hello) + hello
                elif self.s.hello_room and self.s.rooms:
                    hello = json.dumps({"type": "hello", "nickname": client.name,
                                        "room": f"r{client.index % self.s.rooms}"}).encode()
                    out += b"%-10d" % len(hello) + hello
                else:
                    out += client.name.encode()
                pos += 10
                continue
            end = pos + 10 + int(header)
            if end > len(buf):
                break
            body = bytes(buf[pos + 10:end])
            pos = end
            if body.startswith(_MSG_PREFIX):
                self._arrived(client, _TS.search(body))
                if self.s.confirms:
                    confirm = _CONFIRM % body[_UUID_AT]
                    out += b"%-10d" % len(confirm) + confirm
            elif body.startswith(b'{"type":"confirm"'):
                self.result.receipts += 1
                client.window += 1
            elif b'"event":"join"' in body:
                if not client.joined and not client.awaiting and \
                        json.loads(body).get("nickname") == client.name:
                    self._enter_rooms(client)
            elif client.awaiting and b'"id":"r' in body:  # a room request's answer
                client.awaiting -= 1
                if not client.awaiting:
                    self._joined(client)
            elif b'"event":"undelivered"' in body:
                # without confirms, receipts beyond pending_confirms expire: expected
                self.result.undelivered += 1
                if self.s.confirms:
                    client.window += 1
            elif b'"event":"error"' in body:
                self.result.errors += 1
        del buf[:pos]
        if out:
            self._queue(client, bytes(out))

    def _chat_messages(self, client: Client, buf: bytearray) -> int:
        """The fast path: the run of chat messages at the head of buf, all stamped with
        the time of this read; their confirms in self._confirms. Returns where it stopped.

        Keeping the generator cheap per delivery keeps its own queueing out of the
        latencies it measures (it shares the cores with the server).
        """
        now, pos, match = time.monotonic_ns(), 0, _MSG_FRAME.match
        latencies, confirms = self.result.latencies, []
        pace = not self.s.confirms and client is self.observer
        while True:
            found = match(buf, pos)
            if found is None:
                break
            header, frame_uuid, sender, _, sent_ns = found.group(1, 2, 3, 4, 5)
            if int(header) != found.end() - pos - 10:
                break  # not exactly one frame: the slow path decides
            pos = found.end()
            latencies.append((now - int(sent_ns)) / 1e6)
            confirms.append(frame_uuid)
            if pace:
                self.clients[int(sender)].window += 1
        if confirms:
            self.result.deliveries += len(confirms)
            if self.fanout_target:
                self.fanout_seen += len(confirms)
            self._confirms = b"".join(_CONFIRM_HEADER + _CONFIRM % u for u in confirms)
            if self.s.web:  # as the page does: what one read brought, in one frame
                bulk = b'{"type":"confirm","uuids":["%s"]}' % b'","'.join(confirms)
                self._bulk_confirms = b"%-10d" % len(bulk) + bulk
        return pos

    def _enter_rooms(self, client: Client) -> None:
        """In the hall: into its rooms (and out of the default one), if the run has rooms;
        joined once every request is answered."""
        s = self.s
        if not s.rooms:
            self._joined(client)
            return
        client.rooms = [f"r{(client.index + k) % s.rooms}" for k in range(s.rooms_per_client)]
        requests = [{"type": "request", "id": f"r{n}", "cmd": "join", "room": room}
                    for n, room in enumerate(client.rooms) if not (s.hello_room and n == 0)]
        if not requests and not s.leave_default:  # in its one room since its hello
            self._joined(client)
            return
        if s.leave_default and not s.hello_room:
            requests.append({"type": "request", "id": "rp", "cmd": "part", "room": "general"})
        client.awaiting = len(requests)
        for request in requests:
            body = json.dumps(request, separators=(",", ":")).encode()
            self._queue(client, b"%-10d" % len(body) + body)

    def _send_chat(self, client: Client, now_ns: int) -> None:
        client.seq += 1
        text = f"{client.name}: {self.padding} {client.index} {client.seq} {now_ns}"
        room = ',"room":"%s"' % client.rooms[client.seq % len(client.rooms)] \
            if client.rooms else ""
        body = ('{"type":"message","uuid":"%s","message":"%s"%s}'
                % (uuidlib.uuid4(), text, room)).encode()
        client.wbuf += b"%-10d" % len(body) + body

    # --- IRC protocol

    def _irc_lines(self, client: Client) -> None:
        buf = client.rbuf
        *lines, rest = bytes(buf).split(b"\r\n")
        buf[:] = rest
        out = bytearray()
        # as for tcpchatd (_chat_messages): one time stamp per read, arrivals inline
        now, match = time.monotonic_ns(), _IRC_MSG.match
        latencies, arrived = self.result.latencies, 0
        pace = client is self.observer
        for line in lines:
            found = match(line)
            if found is not None:
                sender = int(found.group(2))
                if sender == client.index:
                    continue  # a server-mask message reaches its sender too: not a delivery
                arrived += 1
                latencies.append((now - int(found.group(4))) / 1e6)
                if pace:
                    self.clients[sender].window += 1
                continue
            if line.startswith(b"PING"):
                out += b"PONG" + line[4:] + b"\r\n"
                continue
            parts = line.split(b" ", 3)
            if len(parts) > 1 and parts[1] == b"001":
                if self.s.irc_mask:
                    self._joined(client)
                elif not self.s.irc_door:  # (the door's own JOIN and NAMES follow)
                    out += b"JOIN #bench\r\n"
            elif len(parts) > 1 and parts[1] == b"366":  # end of NAMES: joined
                self._joined(client)
            elif len(parts) > 1 and parts[1] in (b"433", b"404", b"482") or line.startswith(
                    b"ERROR"):
                self.result.errors += 1
        if arrived:
            self.result.deliveries += arrived
            if self.fanout_target:
                self.fanout_seen += arrived
        if out:
            self._queue(client, bytes(out))

    def _send_irc(self, client: Client, now_ns: int) -> None:
        client.seq += 1
        target = IRC_SERVER_MASK if self.s.irc_mask else "#general" if self.s.irc_door \
            else "#bench"
        client.wbuf += (f"PRIVMSG {target} :{client.index} {client.seq} {now_ns}\r\n").encode()

    # --- shared

    def _arrived(self, client: Client, match) -> None:
        self.result.deliveries += 1
        if match is None:
            return
        self.result.latencies.append((time.monotonic_ns() - int(match.group(3))) / 1e6)
        if not self.s.confirms and client is self.observer:
            self.clients[int(match.group(1))].window += 1  # no receipts: pace by the observer
        self._fanout_arrival()

    def _fanout_arrival(self) -> None:
        if self.fanout_target:
            self.fanout_seen += 1

    def run(self) -> Result:
        """Connect, join, measure; every socket is closed at the end, whatever happened."""
        try:
            return self._run()
        finally:
            for client in self.clients:
                client.sock.close()
            self.sel.close()

    def _run(self) -> Result:
        self.join_all()
        self.arm()
        if self.s.fanout:
            return self._fanout()
        if self.on_tick:
            self.on_tick("start")
        self._load_phase()
        return self.result

    def join_all(self) -> None:
        """Every client connected and in the room (result.connect_s)."""
        s = self.s
        started = time.monotonic()
        for position in range(s.clients):
            self._connect(s.index_base + position)
            # At most CONNECTS_IN_FLIGHT clients connected and not yet joined: a server's
            # listen backlog is finite (ngircd listens with a backlog of 10, and every connect
            # past it waits a second for a SYN retry); `_nickname_` is answered promptly.
            self._poll(0)
            while position + 1 - self.joined_count >= CONNECTS_IN_FLIGHT:
                self._poll(0.01)
        deadline = time.monotonic() + s.join_deadline
        while not all(c.joined for c in self.clients):
            self._poll(0.05)
            if time.monotonic() > deadline or self.result.disconnects:
                raise RuntimeError(f"only {sum(c.joined for c in self.clients)} of "
                                   f"{s.clients} clients joined")
        self.result.connect_s = time.monotonic() - started

    def arm(self) -> None:
        """The senders given their windows, the observer chosen; half a second settles."""
        s = self.s
        if s.irc and not s.irc_door:
            for client in self.clients[:s.senders]:
                self._queue(client, f"OPER bench bench\r\nMODE {client.name} +F\r\n".encode())
        for client in self.clients[:s.senders]:
            client.sender = True
            client.window = s.window
        self.observer = self.clients[s.senders] if s.senders < len(self.clients) else None
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            self._poll(0.05)

    def listen_until(self, moment: float, done=None) -> None:
        """Read (and confirm) until the monotonic clock passes `moment`, or done()."""
        while time.monotonic() < moment and not (done and done()):
            self._poll(0.02)

    def _fanout(self) -> Result:
        self.fanout_target = len(self.clients) - 1
        sender = self.clients[0]
        t0 = time.monotonic()
        (self._send_irc if self.s.irc else self._send_chat)(sender, time.monotonic_ns())
        self._flush(sender)
        deadline = t0 + 60
        while self.fanout_seen < self.fanout_target and time.monotonic() < deadline:
            self._poll(0.01)
        self.result.fanout_s = time.monotonic() - t0
        self.result.sent = 1
        return self.result

    def _load_phase(self) -> None:
        s = self.s
        senders = self.clients[:s.senders]
        start = time.monotonic()
        stop_sending = start + s.duration
        interval = 1.0 / s.rate if s.rate else 0.0
        for i, client in enumerate(senders):  # spread fixed-rate senders over one interval
            client.next_send = start + interval * i / max(1, len(senders))
        send = self._send_irc if s.irc else self._send_chat
        uses_window = s.rate == 0
        last_tick = start
        while True:
            now = time.monotonic()
            if now >= stop_sending:
                break
            now_ns = time.monotonic_ns()
            for client in senders:
                if client.fd not in self.by_fd:
                    continue
                if uses_window:
                    while client.window > 0:
                        client.window -= 1
                        send(client, now_ns)
                        self.result.sent += 1
                else:
                    while client.next_send <= now:
                        client.next_send += interval
                        send(client, now_ns)
                        self.result.sent += 1
                if client.wbuf:
                    self._flush(client)
            if now - last_tick >= 0.5 and self.on_tick:
                self.on_tick("tick")
                last_tick = now
            timeout = 0.002 if not uses_window else 0.05
            self._poll(timeout)
        self.sending_ended = time.monotonic()
        expected = self.result.sent * (self.s.members() - 1)
        drain_until = time.monotonic() + s.drain
        while time.monotonic() < drain_until:
            if self.result.deliveries >= expected and (
                    not s.confirms or s.irc or self.result.receipts >= self.result.sent):
                break
            self._poll(0.05)
        self.elapsed = time.monotonic() - start
