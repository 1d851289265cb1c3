"""The web listener: the page's files over HTTP, and the chat over WebSocket.

A browser's side is played by wsclient.py (HTTP and a WebSocket on a raw socket, the
framing wsproto's client side); the browser itself is in test_browser.py."""

import json
import os
import re
import socket
import time

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Message

from conftest import ctl, status_port
from rawclient import RawClient, frame, wait_for
from wsclient import PROMPT, Refused, WsClient, http_get


def test_the_page_and_its_files_are_served_under_a_strict_policy(chat):
    h = chat(web=True)
    status, headers, body = http_get(h.web_port, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert b'<script src="/app.js"' in body and b"<script>" not in body  # no inline script
    status, headers, script = http_get(h.web_port, "/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"textContent" in script and b"innerHTML" not in script  # text, never HTML
    status, headers, _ = http_get(h.web_port, "/style.css")
    assert status == 200 and headers["content-type"].startswith("text/css")
    status, headers, body = http_get(h.web_port, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    assert http_get(h.web_port, "/etc/passwd")[0] == 404
    assert http_get(h.web_port, "/../tcpchatd/__init__.py")[0] == 404
    status, headers, _ = http_get(h.web_port, "/", method="POST",
                                  headers="Content-Length: 0\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    wait_for(lambda: len(h.log.named("http")) == 7)
    lines = h.log.named("http")
    assert [(line["method"], line["path"], line["status"]) for line in lines[:2]] == [
        ("GET", "/", 200), ("GET", "/app.js", 200)]
    assert [line["status"] for line in lines[-3:]] == [404, 404, 405]
    wait_for(lambda: h.server.connection_count() == 0)  # each closed once answered


def test_a_malformed_or_oversized_request_is_refused_and_closed(chat):
    h = chat(web=True)
    status, _, body = http_get(h.web_port, "/", headers="X-Big: " + "a" * 20000 + "\r\n")
    assert status == 431, body
    with socket.create_connection(("127.0.0.1", h.web_port), timeout=5) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400 ") and sock.recv(4096) == b""
    with socket.create_connection(("127.0.0.1", h.web_port), timeout=5) as sock:
        sock.sendall(b"\x00\xff" * 100 + b"\r\n\r\n")  # binary garbage
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    wait_for(lambda: len(h.log.named("http")) == 3)
    assert [line["status"] for line in h.log.named("http")] == [431, 400, 400]
    assert h.log.named("protocol_error") == []


def test_a_door_nobody_speaks_at_times_out_quietly_and_a_preconnect_is_not_logged(chat):
    h = chat(web=True, handshake_timeout=0.3)
    socket.create_connection(("127.0.0.1", h.web_port)).close()  # a browser's preconnect
    with socket.create_connection(("127.0.0.1", h.web_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
        assert sock.recv(4096) == b""
    wait_for(lambda: h.log.named("http"))
    assert h.log.named("http") == [{"addr": h.log.named("http")[0]["addr"], "status": 408,
                                    "error": "timeout"}]


def test_a_browser_and_a_tcp_client_chat_with_receipts(chat):
    h = chat(web=True)
    browser = h.browser("webby")
    tcp = h.client("terminal")
    assert browser.read()["event"] == "join"  # terminal's join, as a text message
    text_uuid = browser.say("hello from the browser")
    got = tcp.read_until(lambda f: f.get("type") == "message")
    assert got["nickname"] == "webby" and got["message"] == "webby: hello from the browser"
    tcp.confirm(text_uuid)
    assert browser.read_until(lambda f: f.get("type") == "confirm") == {
        "type": "confirm", "uuid": text_uuid, "delivered": 1, "recipients": 1}
    back = tcp.say("héllo, ☃ from the terminal")
    got = browser.read_until(lambda f: f.get("type") == "message")
    assert got["message"] == "terminal: héllo, ☃ from the terminal"
    browser.confirm(got["uuid"])
    assert tcp.read_until(lambda f: f.get("type") == "confirm")["uuid"] == back
    joins = {line["nick"]: line for line in h.log.named("join")}
    assert joins["webby"]["via"] == "web" and joins["terminal"].get("via") is None
    assert {m.nickname: m.via for m in h.hall.members()} == {"webby": "web", "terminal": "tcp"}


def test_who_says_web_for_a_browser_member(admin_chat):
    h, path, _ = admin_chat(web=True)
    browser = h.browser("webby")
    h.client("terminal")
    browser.read()  # terminal's join: both are in
    out = ctl(path, "who")
    assert out.returncode == 0
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert "VIA" in out.stdout.splitlines()[0]
    assert "web" in rows["webby"] and "tcp" in rows["terminal"]
    data = json.loads(ctl(path, "who", "--json").stdout)
    assert {c["nickname"]: c["via"] for c in data["clients"]} == {"webby": "web",
                                                                 "terminal": "tcp"}


def test_a_cross_site_page_cannot_open_a_websocket(chat):
    h = chat(web=True, web_origins=("https://chat.example.com",))
    with pytest.raises(Refused) as refused:
        WsClient(h.web_port, origin="https://evil.example")
    assert refused.value.status == 403
    with pytest.raises(Refused):  # the same host on another scheme is another origin
        WsClient(h.web_port, origin=f"https://127.0.0.1:{h.web_port}")
    with pytest.raises(Refused):
        WsClient(h.web_port, origin="null")  # a sandboxed or file: page
    wait_for(lambda: len(h.log.named("http")) == 3)
    refusal = h.log.named("http")[0]
    assert refusal["status"] == 403 and refusal["origin"] == "https://evil.example"
    # the page's own origin, one listed in web_origins, and a client that is no browser
    for origin in ("same", "https://chat.example.com", "HTTPS://Chat.Example.com/", None):
        client = WsClient(h.web_port, origin=origin)
        assert client.read_item() == PROMPT
        client.close()
    assert h.hall.members() == []


def test_bad_websocket_input_gets_an_error_and_loses_nothing(chat):
    h = chat(web=True, max_frame=1024)
    browser = h.browser("webby")
    other = h.client("other")
    browser.read()  # other's join
    browser.send_text("this is not json")
    assert browser.read()["code"] == "bad_json"
    browser.sock.sendall(browser.ws.send(Message(data=b"\xff\xfe not utf-8")))  # binary
    assert browser.read()["code"] == "bad_utf8"
    browser.send_text("[1, 2]")
    assert browser.read()["code"] == "not_an_object"
    # a message in fragments, and a WebSocket frame cut across TCP writes: one message
    msg_uuid = "12345678-1234-4234-8234-123456789abc"
    body = json.dumps({"type": "message", "uuid": msg_uuid, "message": "in pieces"})
    wire = b"".join(browser.ws.send(Message(data=part, message_finished=last))
                    for part, last in ((body[:20], False), (body[20:], True)))
    for i in range(0, len(wire), 7):
        browser.sock.sendall(wire[i:i + 7])
        time.sleep(0.002)
    assert other.read_until(lambda f: f.get("type") == "message")["uuid"] == msg_uuid
    # over max_frame: refused as a frame over it is on TCP, then closed
    browser.send_text(json.dumps({"type": "message", "uuid": msg_uuid, "message": "x" * 2000}))
    error = browser.read_until(lambda f: f.get("event") == "error")
    assert error["code"] == "frame_too_large"
    assert browser.closed()
    assert other.read_until(lambda f: f.get("event") == "leave")["nickname"] == "webby"
    third = h.client("third")  # the others chat on
    later = other.say("still here")
    assert third.read_until(lambda f: f.get("type") == "message")["uuid"] == later
    codes = [line["code"] for line in h.log.named("protocol_error")]
    assert codes == ["bad_json", "bad_utf8", "not_an_object", "frame_too_large"]


def test_websocket_garbage_closes_that_browser_alone(chat):
    h = chat(web=True)
    browser = h.browser("webby")
    other = h.client("other")
    browser.read()
    browser.sock.sendall(b"\x81\x05hello")  # unmasked: a client's frames must be masked
    assert browser.closed()
    assert other.read_until(lambda f: f.get("event") == "leave")["nickname"] == "webby"
    again = h.browser("webby")  # its nickname is free again, and others go on
    assert sorted(again.names["nicknames"]) == ["other", "webby"]


def test_frames_sent_with_the_request_are_read_at_once(chat):
    h = chat(web=True)
    sock = socket.create_connection(("127.0.0.1", h.web_port), timeout=5)
    ws = Connection(ConnectionType.CLIENT)  # the upgrade written by hand, a hello after it
    hello = json.dumps({"type": "hello", "nickname": "eager", "mode": "chat"})
    sock.sendall(f"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{h.web_port}\r\nUpgrade: websocket"
                 "\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode() + ws.send(Message(data=hello)))
    wait_for(lambda: [m.nickname for m in h.hall.members()] == ["eager"])
    reply = b""
    while b"joined!" not in reply:
        reply += sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 101 ")
    sock.close()


def test_a_slow_browser_is_disconnected_like_a_slow_tcp_client(chat):
    h = chat(web=True, send_queue=64 * 1024, send_buffer=4096, flood_rate=0)
    browser = h.browser("sleepy")
    browser.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    talker = h.client("talker")
    for i in range(400):
        talker.say(f"{i} " + "x" * 1000)
    leave = talker.read_until(lambda f: f.get("event") == "leave")
    assert leave["nickname"] == "sleepy" and leave["reason"] == "send_queue_exceeded"


def test_listen_web_needs_wsproto_and_says_so(monkeypatch):
    import sys

    from tcpchatd.service.errors import ConfigError
    from tcpchatd.service.main import web_ready
    web_ready()  # here it is installed
    monkeypatch.setitem(sys.modules, "wsproto", None)
    with pytest.raises(ConfigError, match="python3-wsproto"):
        web_ready()


# --- the daemon


def web_port(daemon) -> int:
    status = [line for line in daemon.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    return int(re.search(r"127\.0\.0\.1:(\d+) \(web\)", status).group(1))


def test_the_daemon_serves_the_web_and_carries_a_websocket_through_an_upgrade(
        daemon_factory, short_tmp):
    admin = os.path.join(short_tmp, "w.sock")
    d = daemon_factory("--listen-web", "127.0.0.1:0", "--admin-socket", admin,
                       "--flood-rate", "0")
    port, web = status_port(d), web_port(d)
    assert http_get(web, "/")[0] == 200
    browser = WsClient(web)
    browser.join("webby")
    tcp = RawClient(port)
    tcp.join("terminal")
    browser.read()
    # half a WebSocket frame before the upgrade, the rest after it: one message
    body = json.dumps({"type": "message", "uuid": "12345678-1234-4234-8234-123456789abc",
                       "message": "across the upgrade"})
    wire = browser.ws.send(Message(data=body))
    browser.sock.sendall(wire[:9])
    result = ctl(admin, "upgrade")
    assert result.returncode == 0, result.stderr
    browser.sock.sendall(wire[9:])
    got = tcp.read_until(lambda f: f.get("type") == "message")
    assert got["message"] == "webby: across the upgrade"
    tcp.confirm(got["uuid"])
    assert browser.read_until(lambda f: f.get("type") == "confirm")["delivered"] == 1
    back = tcp.say("and back")
    assert browser.read_until(lambda f: f.get("type") == "message")["uuid"] == back
    who = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    assert {c["nickname"]: c["via"] for c in who} == {"webby": "web", "terminal": "tcp"}
    assert http_get(web, "/style.css")[0] == 200  # the listener came along
    assert re.search(r"upgrade ok=yes .* clients=2 tls_closed=0", d.stderr())


def test_a_wss_browser_is_told_to_come_back_at_an_upgrade(tls_daemon, certs, short_tmp):
    from conftest import client_context
    admin = os.path.join(short_tmp, "s.sock")
    d, _, _ = tls_daemon("--admin-socket", admin, "--listen-web-tls", "127.0.0.1:0")
    status = [line for line in d.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    wss = int(re.search(r"127\.0\.0\.1:(\d+) \(web, tls\)", status).group(1))
    browser = WsClient(wss, context=client_context(certs))
    browser.join("secure")
    assert ctl(admin, "upgrade").returncode == 0
    assert browser.read_until(lambda f: f.get("event") == "restart")["message"]
    assert browser.closed()
    again = WsClient(wss, context=client_context(certs))
    again.join("secure")
    who = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    assert [(c["nickname"], c["via"], c["tls"]) for c in who] == [("secure", "wss", True)]
    assert "tls_closed=1" in d.stderr()
    browser.close()
    again.close()


def test_what_is_kept_for_an_upgrade_s_replay_stays_small(chat):
    """Bytes read are kept only until a message is whole (wsproto holds nothing more):
    a browser's connection does not grow with what it sent."""
    from tcpchatd.net.websocket import held_by_wsproto
    h = chat(web=True, flood_rate=0)
    browser = h.browser("webby")
    other = h.client("other")
    browser.read()
    for i in range(200):
        browser.say(f"message {i}")
    for _ in range(200):
        other.read_until(lambda f: f.get("type") == "message")
    transport = [m for m in h.hall.members() if m.nickname == "webby"][0].transport
    assert held_by_wsproto(transport.connection) == 0  # wsproto 1.2 and 1.3 alike
    assert len(transport._raw) == 0
    wire = browser.ws.send(Message(data='{"type":"confirm","uuid":"x"}'))
    browser.sock.sendall(wire[:4])  # a frame's start: held, and kept for a replay
    wait_for(lambda: held_by_wsproto(transport.connection) == 4)
    assert bytes(transport._raw) == wire[:4]


def test_several_confirms_in_one_frame(chat):
    """The `confirms` feature (the page's way): one frame for what arrived together."""
    h = chat(receipt_wait=5)
    ann, ben = h.client("ann"), h.client("ben")
    assert "confirms" in ben.names["features"]
    said = [ann.say(f"number {i}") for i in range(3)]
    got = [ben.read_until(lambda f: f.get("type") == "message")["uuid"] for _ in said]
    ben.send_raw(frame({"type": "confirm", "uuids": [u.upper() for u in got]}))
    receipts = [ann.read_until(lambda f: f.get("type") == "confirm") for _ in said]
    assert sorted(r["uuid"] for r in receipts) == sorted(said)
    assert all((r["delivered"], r["recipients"]) == (1, 1) for r in receipts)
    for bad in ([], ["not-a-uuid"], [said[0], 7], "x", ["%s" % said[0]] * 1001):
        ben.send_raw(frame({"type": "confirm", "uuids": bad}))
        assert ben.read_until(lambda f: f.get("event") == "error")["code"] == "bad_uuid"
    ben.send_raw(frame({"type": "confirm", "uuids": [said[0]]}))  # settled before
    assert ben.read_until(lambda f: f.get("event") == "error")["code"] == "unknown_uuid"
