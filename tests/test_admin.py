"""The admin channel in-process: codec over a socketpair, commands and error codes."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from tcpchatd.control import admin, commands
from tcpchatd.control.errors import AdminError, AdminSocketError



def test_codec_round_trip_over_a_socketpair():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(admin.request(7, "kick", {"nickname": "bob", "reason": "spam"}))
        line = admin.LineReader(right, 65536).read_line()
        assert json.loads(line) == {"v": 1, "id": 7, "cmd": "kick",
                                    "args": {"nickname": "bob", "reason": "spam"}}
        assert admin.parse_request(line) == (7, "kick", {"nickname": "bob", "reason": "spam"})
        right.sendall(admin.reply_error(7, "no_such_nickname", "no such nickname: bob"))
        with pytest.raises(AdminError) as info:
            admin.parse_reply(admin.LineReader(left, 65536).read_line())
        assert info.value.code == "no_such_nickname"
        right.sendall(admin.reply_ok(8, {"kicked": "bob"}))
        assert admin.parse_reply(admin.LineReader(left, 65536).read_line()) == {"kicked": "bob"}


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'{"v":2,"cmd":"who"}',
                                  b'{"v":1,"cmd":5}', b'{"v":1,"cmd":"who","args":[]}',
                                  b"\xff"])
def test_bad_requests(line):
    with pytest.raises(AdminError) as info:
        admin.parse_request(line)
    assert info.value.code == "bad_request"


def test_line_reader_bounds_the_line():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x" * 300 + b"\n")
        with pytest.raises(AdminError) as info:
            admin.LineReader(right, 256).read_line()
        assert info.value.code == "bad_request"


@pytest.fixture
def admin_server(admin_chat):
    return admin_chat()


def exchange(path, *lines):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        reader = admin.LineReader(sock, 1 << 20)
        replies = []
        for line in lines:
            sock.sendall(line)
            replies.append(json.loads(reader.read_line()))
        return replies


def test_each_command_and_error_code(admin_server):
    h, path, _ = admin_server
    a, b = h.client("alice"), h.client("Bob")
    u = a.say("hi")
    b.read_until(lambda f: f.get("uuid") == u)
    b.confirm(u)
    a.read_until(lambda f: f.get("type") == "confirm")
    who, stats, say, kick, missing, unknown, bad_args = exchange(
        path,
        admin.request(1, "who"), admin.request(2, "stats"),
        admin.request(3, "say", {"text": "maintenance at noon"}),
        admin.request(4, "kick", {"nickname": "BOB", "reason": "spam"}),
        admin.request(5, "kick", {"nickname": "nobody"}),
        admin.request(6, "reboot"),
        admin.request(7, "say", {"text": 42}))
    clients = who["result"]["clients"]
    assert [c["nickname"] for c in clients] == ["alice", "Bob"]
    assert (clients[0]["sent"], clients[0]["received"]) == (1, 0)
    assert (clients[1]["sent"], clients[1]["received"]) == (0, 1)
    assert clients[0]["address"].startswith("127.0.0.1:") and clients[0]["connected"].endswith("Z")
    assert stats["result"]["messages"] == 1 and stats["result"]["confirms"] == 1
    assert stats["result"]["clients"] == 2 and stats["result"]["version"]
    assert say == {"v": 1, "id": 3, "ok": True, "result": {"clients": 2}}
    assert kick == {"v": 1, "id": 4, "ok": True, "result": {"kicked": "Bob"}}
    assert missing["error"] == {"code": "no_such_nickname", "message": "no such nickname: nobody"}
    assert unknown["error"]["code"] == "unknown_command"
    assert bad_args["error"]["code"] == "bad_request"
    assert a.read_until(lambda f: f.get("event") == "announce")["message"] == "maintenance at noon"
    assert b.read_until(lambda f: f.get("event") == "kick")["message"] == "You were kicked: spam"
    assert a.read_until(lambda f: f.get("event") == "leave")["message"] == "Bob was kicked (spam)"
    assert b.closed()
    kicks = h.log.named("kick")
    assert kicks == [{"nick": "Bob", "reason": "spam", "uid": os.getuid(), "pid": os.getpid()}]
    assert [e["cmd"] for e in h.log.named("admin")] == ["who", "stats", "say", "kick", "kick",
                                                        "say"]


def test_garbage_and_overlong_lines_leave_the_server_serving(admin_server):
    h, path, _ = admin_server
    (garbage,) = exchange(path, b"hello?\n")
    assert garbage["ok"] is False and garbage["error"]["code"] == "bad_request"
    (too_long,) = exchange(path, b"x" * 70000 + b"\n")
    assert too_long["error"]["code"] == "bad_request"
    (who,) = exchange(path, admin.request(1, "who"))
    assert who["ok"] is True


def test_socket_created_with_mode_under_umask(short_tmp):
    path = os.path.join(short_tmp, "m.sock")
    sock = admin.bind_socket(path, 0o600, None)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()


def test_stale_socket_replaced_live_refused_file_refused(short_tmp):
    path = os.path.join(short_tmp, "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    live = admin.bind_socket(path, 0o660, None)
    with pytest.raises(AdminSocketError) as info:
        admin.bind_socket(path, 0o660, None)
    assert "another tcpchatd answers" in str(info.value)
    live.close()
    plain = os.path.join(short_tmp, "plain")
    open(plain, "w").close()
    with pytest.raises(AdminSocketError) as info:
        admin.bind_socket(plain, 0o660, None)
    assert "is not a socket" in str(info.value)


def test_idle_admin_connection_is_closed(chat, short_tmp):
    h = chat(admin_timeout=0.3)
    path = os.path.join(short_tmp, "idle.sock")
    server = admin.AdminServer(admin.bind_socket(path, 0o660, None),
                               commands.AdminCommands(h.hall, h.log).table(), h.server.config, h.log,
                               owned_path=path)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"v":1,"id":1,"cmd":')  # half a request, then silence
            assert sock.recv(100) == b""  # closed by the daemon, not by our timeout
        assert exchange(path, admin.request(2, "stats"))[0]["ok"]  # still serving
    finally:
        server.close()


def start_as(uid: int, env: dict) -> subprocess.CompletedProcess:
    """tcpchatd as another user, without XDG_RUNTIME_DIR: its admin socket goes in
    /tmp/tcpchatd-UID. It is stopped by the timeout when it starts (returncode None)."""
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid),
                           "--clear-groups", sys.executable, "-m", "tcpchatd", "--listen",
                           "127.0.0.1:0", "--log-target", "stderr", "--state-dir",
                           f"/tmp/tcpchatd-{uid}/state"],
                          env=env, capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def per_user_folder():
    """The folder /tmp/tcpchatd-UID of an unused uid, removed afterwards."""
    uid = 64999
    folder = f"/tmp/tcpchatd-{uid}"

    def remove():
        if os.path.islink(folder):
            os.unlink(folder)
        shutil.rmtree(folder, ignore_errors=True)
    remove()
    yield uid, folder
    remove()


@pytest.mark.parametrize("owner,mode,words", [
    (12345, 0o777, "belongs to uid 12345"), (12345, 0o755, "belongs to uid 12345"),
    ("self", 0o777, "writable by others (mode 0777)")])
def test_a_per_user_socket_folder_made_by_someone_else_is_refused(per_user_folder, owner,
                                                                  mode, words):
    uid, folder = per_user_folder
    os.mkdir(folder)
    os.chown(folder, uid if owner == "self" else owner, uid if owner == "self" else owner)
    os.chmod(folder, mode)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR",
                                                            "TCPCHATD_ADMIN_SOCKET")}
    env.pop("NOTIFY_SOCKET", None)
    result = start_as(uid, env)
    assert result.returncode == 1, result.stderr
    assert words in result.stderr and folder in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(folder) == []  # nothing bound there


def test_a_link_in_place_of_the_per_user_folder_is_refused(per_user_folder, short_tmp):
    uid, folder = per_user_folder
    os.symlink(short_tmp, folder)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR",
                                                            "TCPCHATD_ADMIN_SOCKET")}
    result = start_as(uid, env)
    assert result.returncode == 1 and "not a folder" in result.stderr, result.stderr
