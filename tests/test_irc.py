"""IRC clients in tcpchatd's rooms: protocol-level tests with a raw socket (ircclient.py),
and a real IRC client from Debian (weechat-headless) talking with a native client."""

import base64
import json
import os
import re
import socket
import time

import pytest

from conftest import ctl, status_port
from rawclient import RawClient, wait_for


def command(line: str) -> str:
    """The command (or numeric) of a line, past its tags and source."""
    words = line.split(" ")
    if words[0].startswith("@"):
        words = words[1:]
    return words[1] if words[0].startswith(":") else words[0]


def test_registration_welcomes_with_isupport_and_joins_the_default_room(chat):
    h = chat(irc=True)
    irc = h.irc()
    irc.send("PRIVMSG #general :too early")
    assert command(irc.line()) == "451"  # not registered yet
    lines = irc.register("ircy")
    assert [command(line) for line in lines] == [
        "001", "002", "003", "004", "005", "422", "JOIN", "353", "366"]
    assert lines[0].startswith(":tcpchatd 001 ircy :Welcome")
    isupport = lines[4]
    assert "CHANTYPES=#" in isupport and "NICKLEN=32" in isupport and "PREFIX= " in isupport
    assert lines[6] == ":ircy!ircy@127.0.0.1 JOIN #general"
    assert lines[7] == ":tcpchatd 353 ircy = #general :ircy"
    irc.send("PING :token-1")
    assert irc.line() == ":tcpchatd PONG tcpchatd :token-1"
    irc.send("FROBNICATE now")
    assert irc.line() == ":tcpchatd 421 ircy FROBNICATE :Unknown command"
    irc.send("MOTD", "MODE #general", "MODE ircy", "MODE #general +o ircy", "AWAY :lunch",
             "AWAY", "USER again 0 * :x")
    answers = [command(irc.line()) for _ in range(7)]  # AWAY's come through the session
    assert answers[:4] == ["422", "324", "221", "482"] and \
        sorted(answers[4:]) == ["305", "306", "462"]
    join = wait_for(lambda: h.log.named("join"))[0]
    assert join["nick"] == "ircy" and join["via"] == "irc"
    assert [m.via for m in h.hall.members()] == ["irc"]


def test_cap_negotiation_server_time_and_echo_message(chat):
    h = chat(irc=True)
    irc = h.irc()
    irc.send("CAP LS 302")
    assert irc.line() == ("CAP * LS :server-time message-tags echo-message multi-prefix "
                          "away-notify sasl").join([":tcpchatd ", ""])
    irc.send("NICK ircy", "USER ircy 0 * :Ircy", "CAP REQ :server-time bogus-cap")
    assert irc.line() == ":tcpchatd CAP ircy NAK :server-time bogus-cap"
    irc.send("CAP REQ :server-time echo-message message-tags")
    assert irc.line() == ":tcpchatd CAP ircy ACK :server-time echo-message message-tags"
    time.sleep(0.2)
    assert h.hall.members() == []  # registration waits for CAP END
    irc.send("CAP END")
    irc.numeric("366")
    native = h.client("native")
    irc.until(lambda line: command(line) == "JOIN" and "native" in line)
    native.say("stamped")
    got = irc.until(lambda line: "PRIVMSG" in line)
    assert re.match(r"@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z :native!native@tcpchatd "
                    r"PRIVMSG #general :stamped$", got), got
    irc.send("@+draft/reply=x PRIVMSG #general :echoed")
    assert irc.line() == ":ircy!ircy@127.0.0.1 PRIVMSG #general :echoed"
    assert native.read_until(lambda f: f.get("type") == "message")["message"] == "ircy: echoed"


def test_irc_and_native_members_share_the_room(chat, admin_chat):
    h, admin, _ = admin_chat(irc=True)
    irc = h.irc("ircy")
    native = h.client("native")
    assert irc.until(lambda line: command(line) == "JOIN") == \
        ":native!native@tcpchatd JOIN #general"
    native.say("hello irc")
    assert irc.until(lambda line: "PRIVMSG" in line) == \
        ":native!native@tcpchatd PRIVMSG #general :hello irc"
    irc.send("PRIVMSG #general :hello native", "PRIVMSG #general :\x01ACTION waves\x01",
             "PRIVMSG native :just you", "NOTICE #general :a notice")
    texts = [native.read_until(lambda f: f.get("type") == "message") for _ in range(4)]
    assert [(f["message"], f.get("action", False), f.get("private", False)) for f in texts] == [
        ("ircy: hello native", False, False), ("ircy: waves", True, False),
        ("ircy (private): just you", False, True), ("ircy: a notice", False, False)]
    native.request("nick", nickname="natalie")
    assert irc.until(lambda line: command(line) == "NICK") == \
        ":native!native@tcpchatd NICK :natalie"
    irc.send("NICK ircette")
    assert irc.until(lambda line: command(line) == "NICK") == \
        ":ircy!ircy@127.0.0.1 NICK :ircette"
    assert native.read_until(lambda f: f.get("event") == "nick"
                             and f["old"] == "ircy")["nickname"] == "ircette"
    irc.send("JOIN #dev,#ops", "PART #ops")
    assert irc.until(lambda line: command(line) == "PART") == ":ircette!ircette@127.0.0.1 PART #ops"
    native.enter("dev")
    assert irc.until(lambda line: command(line) == "JOIN" and "#dev" in line).startswith(
        ":natalie!")
    irc.send("TOPIC #dev :design talk", "TOPIC #dev", "NAMES #dev", "WHO #dev", "LIST")
    assert irc.until(lambda line: command(line) == "TOPIC") == \
        ":ircette!ircette@127.0.0.1 TOPIC #dev :design talk"
    assert irc.numeric("332").endswith("#dev :design talk")
    assert irc.numeric("353") == ":tcpchatd 353 ircette = #dev :ircette natalie"
    assert command(irc.line()) == "366"
    who = [irc.numeric("352"), irc.line()]
    assert " ircette " in who[0] and command(who[-1]) == "352"
    irc.numeric("315")
    listed = irc.numeric("322")
    assert listed.startswith(":tcpchatd 322 ircette #dev 2 :design talk")
    # a kick from one room, then from the daemon
    assert ctl(admin, "kick", "natalie", "--room", "dev", "--reason", "off topic").returncode == 0
    assert irc.until(lambda line: command(line) == "KICK").startswith(
        ":tcpchatd KICK #dev natalie :")
    assert ctl(admin, "kick", "ircette", "--reason", "enough").returncode == 0
    assert "enough" in irc.until(lambda line: line.startswith("ERROR"))
    assert irc.closed()
    leave = native.read_until(lambda f: f.get("event") == "leave")
    assert (leave["nickname"], leave["reason"]) == ("ircette", "kicked")


def test_joins_parts_and_quits_of_natives_reach_irc_once(chat):
    h = chat(irc=True)
    irc = h.irc("ircy")
    native = h.client("native")
    native.enter("dev")
    irc.send("JOIN #dev")
    irc.numeric("366")
    native.quit()
    quits = irc.until(lambda line: command(line) == "QUIT")
    assert quits == ":native!native@tcpchatd QUIT :quit"
    irc.send("PING :after")
    assert irc.until(lambda line: command(line) in ("PONG", "QUIT")).startswith(
        ":tcpchatd PONG")  # one QUIT though it shared two rooms


def test_receipts_an_irc_recipient_counts_once_its_line_is_written(chat):
    h = chat(irc=True, receipt_wait=0.2)
    irc = h.irc("ircy")
    native = h.client("native")
    said = native.say("do you read me")
    irc.until(lambda line: "PRIVMSG" in line)
    receipt = native.read_until(lambda f: f.get("type") == "confirm")
    assert receipt == {"type": "confirm", "uuid": said, "delivered": 1, "recipients": 1}
    irc.send("PRIVMSG #general :from irc")  # logged and counted like any other
    got = native.read_until(lambda f: f.get("type") == "message")
    native.confirm(got["uuid"])
    wait_for(lambda: [m for m in h.log.named("message") if m["nick"] == "ircy"])
    line = [m for m in h.log.named("message") if m["nick"] == "ircy"][0]
    assert line["recipients"] == 1 and line["text"] == "from irc"
    assert h.log.named("protocol_error") == []  # its confirms were all good


def test_nickname_rules_and_bans_are_the_same_for_irc(admin_chat, short_tmp):
    from tcpchatd.chat.bans import BanList
    h, admin, _ = admin_chat(irc=True, bans=BanList(os.path.join(short_tmp, "bans")))
    h.client("Tam")
    irc = h.irc()
    irc.send("NICK TAM", "USER x 0 * :x")  # another case of a nickname in use
    assert irc.numeric("433").startswith(":tcpchatd 433 TAM TAM :")
    irc.send("NICK Tarn")  # `rn` looks like `m`: a look-alike of one in use
    assert command(irc.until(lambda line: command(line) in ("433", "001"))) == "433"
    irc.send("NICK fresh")
    irc.numeric("366")
    bad = h.irc()
    bad.send("NICK bad,nick!", "USER x 0 * :x")  # no IRC prefix can hold it
    assert bad.line() == ":tcpchatd 432 * bad,nick! :Erroneous nickname"
    bad.send("NICK Tаm")  # Latin with a Cyrillic а: tcpchatd's own rules refuse it,
    assert command(bad.until(lambda line: command(line) in ("432", "001"))) == "432"
    assert bad.closed()   # with their numeric, then the close
    assert ctl(admin, "ban", "127.0.0.1", "--force").returncode == 0
    assert irc.closed()
    refused = h.irc()
    assert refused.closed()  # a banned address is closed at the door


def test_malformed_lines_get_a_numeric_and_nothing_breaks(chat):
    h = chat(irc=True)
    irc = h.irc("ircy")
    irc.send_raw(b"PRIVMSG #general :" + b"x" * 10_000 + b"\r\n")
    assert command(irc.line()) == "417"
    irc.send_raw(b"PRIVMSG #general :nul\x00inside\r\n")
    assert command(irc.line()) == "400"
    irc.send_raw(b"PRIVMSG #general :a bare\rCR\r\n")
    assert command(irc.line()) == "400"
    irc.send_raw(b"\xff\xfe\r\n\r\n   \r\n:prefix.only\r\n")  # garbage, empty lines
    irc.send_raw(b"PING :still")
    irc.send_raw(b" here\n")  # a line in two writes, ended by LF alone
    assert irc.until(lambda line: command(line) == "PONG") == ":tcpchatd PONG tcpchatd :still here"
    irc.send_raw(b"y" * 20_000)  # no end at all: answered once, dropped to its end
    irc.send_raw(b"\r\nPING :after\r\n")
    assert command(irc.line()) == "417"
    assert irc.line() == ":tcpchatd PONG tcpchatd :after"
    irc.send("PRIVMSG", "PRIVMSG #general", "JOIN", "KICK #general")
    assert [command(irc.line()) for _ in range(4)] == ["411", "412", "461", "461"]
    assert h.tracebacks == []


def test_long_messages_are_split_into_lines_of_512_bytes(chat):
    h = chat(irc=True, max_text=4096)
    irc = h.irc("ircy")
    native = h.client("native")
    text = "ü" * 1500 + " end"  # 3,004 bytes of UTF-8
    native.say(text)
    parts = []
    while sum(len(p) for p in parts) < len(text):
        line = irc.until(lambda line: "PRIVMSG" in line)
        assert len(line.encode("utf-8")) + 2 <= 512
        parts.append(line.split(" :", 1)[1])
    assert "".join(parts) == text and len(parts) >= 7


def test_an_irc_flood_is_closed(chat):
    h = chat(irc=True, flood_rate=5, flood_burst=5)
    irc = h.irc("ircy")
    irc.send(*["PING :x"] * 40)
    assert "Excess Flood" in irc.until(lambda line: line.startswith("ERROR"))
    assert irc.closed()


def test_sasl_plain_logs_in_to_an_account(chat, short_tmp):
    from tcpchatd.chat.accounts import AccountBook
    book = AccountBook(os.path.join(short_tmp, "state"))
    book.add("Ann", "correct horse", "moderator", 0)
    try:
        h = chat(irc=True, accounts=book)
        irc = h.irc()
        irc.send("CAP LS 302", "NICK Ann", "USER ann 0 * :Ann", "CAP REQ :sasl",
                 "AUTHENTICATE PLAIN")
        assert irc.until(lambda line: line.startswith("AUTHENTICATE")) == "AUTHENTICATE +"
        irc.send("AUTHENTICATE " + base64.b64encode(b"\0ann\0correct horse").decode())
        assert irc.numeric("900").endswith("Ann :You are now logged in as Ann")
        assert command(irc.line()) == "903"
        irc.send("CAP END")
        irc.numeric("366")
        assert [(m.account, m.via) for m in h.hall.members()] == [("Ann", "irc")]
        wrong = h.irc()
        wrong.send("CAP LS 302", "NICK Ann2", "USER a 0 * :a", "CAP REQ :sasl",
                   "AUTHENTICATE PLAIN")
        wrong.until(lambda line: line.startswith("AUTHENTICATE"))
        wrong.send("AUTHENTICATE " + base64.b64encode(b"\0ann\0wrong").decode(), "CAP END")
        assert command(wrong.until(lambda line: command(line) in ("904", "001"))) == "904"
    finally:
        book.close()


# --- the daemon


def irc_port(daemon) -> int:
    status = [line for line in daemon.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    return int(re.search(r"127\.0\.0\.1:(\d+) \(irc\)", status).group(1))


def test_the_upgrade_carries_an_irc_client(daemon_factory, short_tmp):
    from ircclient import IrcClient
    admin = os.path.join(short_tmp, "i.sock")
    d = daemon_factory("--listen-irc", "127.0.0.1:0", "--admin-socket", admin)
    irc = IrcClient(irc_port(d))
    irc.register("ircy", "server-time")
    native = RawClient(status_port(d))
    native.join("native")
    irc.send_raw(b"PRIVMSG #general :across the ")  # half a line before the upgrade
    assert ctl(admin, "upgrade").returncode == 0
    irc.send_raw(b"upgrade\r\n")
    assert native.read_until(lambda f: f.get("type") == "message")["message"] == \
        "ircy: across the upgrade"
    native.say("still there?")
    assert irc.until(lambda line: "PRIVMSG" in line).endswith("PRIVMSG #general :still there?")
    who = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    assert {c["nickname"]: c["via"] for c in who} == {"ircy": "irc", "native": "tcp"}
    irc.send("PING :x")
    assert irc.until(lambda line: command(line) == "PONG")


def test_a_real_irc_client_joins_talks_and_is_kicked(admin_chat, tmp_path):
    """Debian's weechat-headless: it registers (with its CAP requests), joins, says what
    its startup commands say, logs what it hears to files, and is kicked."""
    import shutil
    import subprocess
    assert shutil.which("weechat-headless"), "weechat-headless is needed (.ci/run installs it)"
    h, admin, _ = admin_chat(irc=True)
    native = h.client("native")
    home = tmp_path / "weechat"
    home.mkdir()
    commands = ";".join([
        "/set logger.file.flush_delay 0", "/set irc.server_default.nicks wee",
        "/set irc.server_default.username wee",
        f"/server add t 127.0.0.1/{h.irc_port} -notls",
        "/set irc.server.t.autojoin #general", "/connect t",
        "/wait 2 /msg -server t #general hello from weechat",
        "/wait 2 /me -server t waves"])
    proc = subprocess.Popen(["weechat-headless", "--dir", str(home), "-r", commands],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        joined = native.read_until(lambda f: f.get("event") == "join")
        assert joined["nickname"] == "wee"
        said = native.read_until(lambda f: f.get("type") == "message")
        assert said["message"] == "wee: hello from weechat"
        native.confirm(said["uuid"])
        native.say("hello weechat, from a native client")
        channel_log = home / "logs" / "irc.t.#general.weechatlog"
        wait_for(lambda: channel_log.exists() and "hello weechat, from a native client"
                 in channel_log.read_text(), timeout=10)
        text = channel_log.read_text()
        assert "\tnative\thello weechat, from a native client" in text
        assert "wee (wee@127.0.0.1) has joined #general" in text
        assert ctl(admin, "kick", "wee", "--reason", "test over").returncode == 0
        server_log = home / "logs" / "irc.server.t.weechatlog"
        wait_for(lambda: "test over" in server_log.read_text(), timeout=10)
        leave = native.read_until(lambda f: f.get("event") == "leave")
        assert (leave["nickname"], leave["reason"]) == ("wee", "kicked")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(5)


def test_away_is_answered_and_told_with_away_notify(chat):
    h = chat(irc=True)
    ann = h.irc("ann")
    ben = h.irc("ben", caps="away-notify")
    native = h.client("native")
    ann.send("AWAY :at lunch")
    assert ann.numeric("306") == ":tcpchatd 306 ann :You have been marked as being away"
    assert ben.until(lambda line: command(line) == "AWAY") == ":ann!ann@tcpchatd AWAY :at lunch"
    away = native.read_until(lambda f: f.get("event") == "away")
    assert (away["nickname"], away["away"], away["message"]) == (
        "ann", "at lunch", "ann is away: at lunch")
    ann.send("AWAY")
    assert command(ann.numeric("305")) == "305"
    assert ben.until(lambda line: command(line) == "AWAY") == ":ann!ann@tcpchatd AWAY"
    assert native.read_until(lambda f: f.get("event") == "away")["away"] is None
    ann.send("PING :x")  # ann, without the capability, is told nothing of ben's
    ben.send("AWAY :gone")
    assert ann.until(lambda line: command(line) in ("PONG", "AWAY")).startswith(":tcpchatd PONG")
    assert [e["text"] for e in h.log.named("away")] == ["at lunch", None, "gone"] or \
        wait_for(lambda: [e["text"] for e in h.log.named("away")] == ["at lunch", None, "gone"])


def test_irc_over_tls_registers_and_is_told_to_come_back_at_an_upgrade(tls_daemon, certs,
                                                                       short_tmp):
    from conftest import client_context
    admin = os.path.join(short_tmp, "t.sock")
    d, _, _ = tls_daemon("--admin-socket", admin, "--listen-irc-tls", "127.0.0.1:0")
    status = [line for line in d.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    port = int(re.search(r"127\.0\.0\.1:(\d+) \(irc, tls\)", status).group(1))

    def connect():
        from ircclient import IrcClient
        client = IrcClient.__new__(IrcClient)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sock = client_context(certs).wrap_socket(raw, server_hostname="localhost")
        client.buffer, client.seen = b"", []
        return client
    irc = connect()
    irc.register("secure")
    who = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    assert [(c["nickname"], c["via"], c["tls"]) for c in who] == [("secure", "ircs", True)]
    assert ctl(admin, "upgrade").returncode == 0
    assert "restarting" in irc.until(lambda line: line.startswith("ERROR"))
    assert irc.closed()
    again = connect()
    again.register("secure")  # its nickname is free again at once
