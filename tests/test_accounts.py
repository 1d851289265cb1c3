"""Accounts (issue 26): nicknames that belong to someone, logins, moderators and bots; on
the wire with an in-process server, and through tcpchatctl and tcpchat-client against
the real daemon."""

import json
import os
import stat
import threading
import subprocess
import sys
import time

import pytest
from conftest import CTL, ctl, status_port
from rawclient import RawClient, frame, wait_for

from tcpchatd.chat.accounts import AccountBook

CLIENT = [sys.executable, "-m", "tcpchatd.cli.client"]


@pytest.fixture
def book(short_tmp):
    """make({name: (password, role)}) -> an AccountBook in a fresh state folder."""
    made = []

    def make(accounts: dict) -> AccountBook:
        state = os.path.join(short_tmp, f"state{len(made)}")
        book = AccountBook(state)
        for name, (password, role) in accounts.items():
            book.add(name, password, role, 0)
        made.append(book)
        return book
    yield make
    for book in made:
        book.close()


def login(h, account, password, **fields) -> tuple[RawClient, dict]:
    client = RawClient(h.port)
    h.clients.append(client)
    return client, client.hello(account=account, password=password, **fields)


def refusal(client: RawClient) -> dict:
    return client.read_until(lambda f: f.get("event") == "error")


# --- logging in

def test_a_login_in_the_hello_joins_under_the_account_s_own_nickname(chat, book):
    h = chat(accounts=book({"Ann": ("correct horse", "user")}))
    ann, answer = login(h, "ann", "correct horse")
    assert answer["event"] == "login" and answer["account"] == "Ann" and answer["role"] == "user"
    joined = ann.joined()
    assert joined["nickname"] == "Ann"
    assert "accounts" in ann.names["features"]
    line = wait_for(lambda: h.log.named("login"))[0]
    assert line == {"account": "Ann", "role": "user", "addr": "127.0.0.1"}
    assert [e for e in h.log.named("join") if e["nick"] == "Ann"][0]["account"] == "Ann"


@pytest.mark.parametrize("account,password", [("ann", "wrong"), ("nobody", "correct horse"),
                                              ("ann", "")])
def test_a_wrong_password_or_unknown_account_is_one_refusal_then_close(chat, book, account,
                                                                         password):
    h = chat(accounts=book({"ann": ("correct horse", "user")}))
    client, answer = login(h, account, password)
    assert answer["event"] == "error" and answer["code"] == "login_failed"
    assert answer["message"] == "unknown account or wrong password"  # never which one
    assert client.closed()
    failed = wait_for(lambda: h.log.named("login_failed"))
    assert failed == [{"account": account, "addr": "127.0.0.1"}]
    assert "password" not in repr(h.log.events)


def test_failed_logins_wait_longer_and_longer_per_address_and_account(chat, book):
    h = chat(accounts=book({"ann": ("correct horse", "user")}), login_free_failures=2)
    for _ in range(2):  # free failures: answered at once
        client, answer = login(h, "ann", "guess")
        assert answer["code"] == "login_failed"
    # the next attempt, even with the right password, waits: refused without a check
    client, answer = login(h, "ann", "correct horse")
    assert answer["code"] == "login_throttled" and "try again in" in answer["message"]
    assert client.closed()
    assert wait_for(lambda: h.log.named("login_throttled"))[0]["addr"] == "127.0.0.1"
    time.sleep(1.1)  # 2 ** 0 s after the second failure
    client, answer = login(h, "ann", "correct horse")
    assert answer["event"] == "login"
    # a success forgets the account's and the address's failures
    client.close()
    client, answer = login(h, "ann", "guess")
    assert answer["code"] == "login_failed"


def test_a_guest_cannot_take_or_move_to_a_reserved_nickname(chat, book):
    h = chat(accounts=book({"ann": ("correct horse", "user")}))
    guest = RawClient(h.port)
    h.clients.append(guest)
    assert guest.recv_exact(10) == b"_nickname_"
    guest.send_raw("ANN".encode())  # a spelling of the account's name
    refused = refusal(guest)
    assert refused["code"] == "nickname_reserved" and "log in" in refused["message"]
    assert guest.recv_exact(10) == b"_nickname_"  # asked again: another name will do
    guest.send_raw(b"bob")
    guest.read_until(lambda f: f.get("event") == "join")
    request_id = guest.request("nick", nickname="ann")
    assert guest.answer(request_id)["code"] == "nickname_reserved"
    # the owner logs in under another name and then takes its own
    ann, _ = login(h, "ann", "correct horse", nickname="annie")
    ann.joined()
    ann.request("nick", nickname="ann")
    assert ann.read_until(lambda f: f.get("event") == "nick")["nickname"] == "ann"
    assert wait_for(lambda: h.log.named("nick"))[0] == {"old": "annie", "new": "ann",
                                                        "rooms": "general"}


def test_nick_reservation_off_reserves_nothing(chat, book):
    h = chat(accounts=book({"ann": ("correct horse", "user")}), nick_reservation="off")
    assert h.client("ann").names["nicknames"] == ["ann"]


def test_a_guest_logs_in_with_a_request(chat, book):
    h = chat(accounts=book({"mod": ("s3cret pass", "moderator")}))
    guest = h.client("visitor")
    answer = guest.answer(guest.request("login", account="mod", password="nope"))
    assert answer["code"] == "login_failed"
    assert not guest.closed(0.2)  # a member is told, and stays
    answer = guest.answer(guest.request("login", account="mod", password="s3cret pass"))
    assert answer["event"] == "login" and answer["role"] == "moderator"
    assert wait_for(lambda: h.log.named("login_member"))[0] == {
        "nick": "visitor", "account": "mod", "role": "moderator"}


def test_a_person_s_account_is_logged_in_once(chat, book):
    h = chat(accounts=book({"ann": ("correct horse", "user")}))
    first, _ = login(h, "ann", "correct horse")
    first.joined()
    second, answer = login(h, "ann", "correct horse", nickname="ann2")
    assert answer["event"] == "login"
    refused = refusal(second)
    assert refused["code"] == "account_in_use" and "(as ann)" in refused["message"]


def test_require_account_refuses_guests_with_a_notice(chat, book):
    h = chat(accounts=book({"ann": ("correct horse", "user")}), require_account=True)
    guest = RawClient(h.port)  # the original client: a raw nickname
    h.clients.append(guest)
    assert guest.recv_exact(10) == b"_nickname_"
    guest.send_raw(b"bob")
    refused = refusal(guest)
    assert refused["code"] == "account_required"
    assert "tcpchat-client --account" in refused["message"]
    assert guest.closed()
    poster = RawClient(h.port)
    h.clients.append(poster)
    assert poster.hello(nickname="ci", mode="post")["code"] == "account_required"
    ann, answer = login(h, "ann", "correct horse")
    assert answer["event"] == "login" and ann.joined()["nickname"] == "ann"


@pytest.mark.parametrize("hello", [
    {"account": 7, "password": "x"},                 # not a string
    {"mode": "chat"},                                # neither nickname nor account
    {"account": "ann", "password": "x", "mode": "loud"},
])
def test_a_bad_hello_is_bad_hello(chat, book, hello):
    h = chat(accounts=book({}))
    client = RawClient(h.port)
    h.clients.append(client)
    assert client.hello(**hello)["code"] == "bad_hello"
    assert client.closed()


def test_a_login_never_stalls_the_others(chat, book, monkeypatch):
    """Passwords are checked in the accounts' pool, never on an event loop: with each check
    made to take a whole second (the book's pool has two threads), a pair of members goes
    on chatting at once while four logins wait their turn."""
    from tcpchatd.chat import accounts
    checked_on = []
    real_verify = accounts._verify

    def slow_verify(account, password):
        checked_on.append(threading.current_thread().name)
        time.sleep(1.0)
        return real_verify(account, password)
    monkeypatch.setattr(accounts, "_verify", slow_verify)
    h = chat(accounts=book({"ann": ("correct horse", "user")}), login_free_failures=1000)
    ann, ben = h.client("a1"), h.client("b1")
    loggers = []
    for _ in range(4):
        client = RawClient(h.port, timeout=10)
        h.clients.append(client)
        assert client.recv_exact(10) == b"_nickname_"
        client.send_raw(frame({"type": "hello", "account": "ann", "password": "wrong"}))
        loggers.append(client)
    assert wait_for(lambda: checked_on)  # the first check has begun
    slowest = 0.0
    for i in range(10):
        sent = time.monotonic()
        ann.say(f"ping {i}")
        ben.read_until(lambda f: f.get("type") == "message")
        slowest = max(slowest, time.monotonic() - sent)
    assert slowest < 0.5, slowest  # a loop held by a check would wait a whole second
    for client in loggers:
        assert client.read_until(lambda f: f.get("event") == "error")["code"] == "login_failed"
    assert checked_on and all(name.startswith("login") for name in checked_on), checked_on


# --- moderators

def test_only_a_moderator_kicks_bans_and_unbans_from_a_client(admin_chat, book, short_tmp):
    from tcpchatd.chat.bans import BanList
    bans = BanList(os.path.join(short_tmp, "bans"))
    h, path, _ = admin_chat(accounts=book({"mod": ("mod pass 1", "moderator"),
                                           "ann": ("ann pass 1", "user")}), bans=bans)
    guest = h.client("troll")
    for cmd, fields in (("kick", {"nickname": "troll"}), ("ban", {"target": "troll"}),
                        ("unban", {"target": "troll"})):
        answer = guest.answer(guest.request(cmd, **fields))
        assert answer["code"] == "not_permitted" and "moderator" in answer["message"]
    ann, _ = login(h, "ann", "ann pass 1")
    ann.joined()
    assert ann.answer(ann.request("kick", nickname="troll"))["code"] == "not_permitted"
    mod, _ = login(h, "mod", "mod pass 1")
    mod.joined()
    done = mod.answer(mod.request("kick", nickname="troll", room="general",
                                  reason="be nice"))
    assert done["event"] == "done" and done["message"] == "kicked troll from #general"
    kicked = guest.read_until(lambda f: f.get("event") == "kick")
    assert kicked["reason"] == "be nice"
    line = wait_for(lambda: h.log.named("kick"))[0]
    assert line == {"nick": "troll", "room": "general", "reason": "be nice", "by": "mod",
                    "account": "mod"}
    troll = h.client("troll2")
    done = mod.answer(mod.request("ban", target="troll2", duration="2h", reason="spam"))
    assert done["event"] == "done" and done["message"].startswith("banned troll2 until ")
    assert troll.read_until(lambda f: f.get("event") in ("kick", "ban"))
    listed = json.loads(ctl(path, "--json", "bans").stdout)["bans"]
    assert listed[0]["target"] == "troll2" and listed[0]["by"] == "mod"
    assert "mod" in ctl(path, "bans").stdout  # the BY column names the moderator
    bad = mod.answer(mod.request("ban", target="x", duration="forever"))
    assert bad["code"] == "bad_request" and "bad duration" in bad["message"]
    done = mod.answer(mod.request("unban", target="troll2"))
    assert done["message"] == "unbanned troll2"
    assert mod.answer(mod.request("unban", target="troll2"))["code"] == "no_such_ban"


def test_topic_by_moderator_keeps_the_topic_to_moderators(chat, book):
    h = chat(accounts=book({"mod": ("mod pass 1", "moderator")}), topic_by="moderator")
    guest = h.client("guest")
    answer = guest.answer(guest.request("topic", room="general", topic="mine now"))
    assert answer["code"] == "not_permitted"
    told = guest.answer(guest.request("topic", room="general"))  # asking is for anyone
    assert told["event"] == "topic"
    mod, _ = login(h, "mod", "mod pass 1")
    mod.joined()
    mod.request("topic", room="general", topic="be kind")
    assert guest.read_until(lambda f: f.get("event") == "topic")["topic"] == "be kind"


# --- bots

def test_a_bot_logs_in_many_times_and_comes_and_goes_without_notices(admin_chat, book):
    h, path, _ = admin_chat(accounts=book({"ci": ("bot pass 1", "bot")}))
    ann = h.client("ann")
    bots = []
    for expected in ("ci", "ci-2", "ci-3"):
        bot, answer = login(h, "ci", "bot pass 1")
        assert answer["role"] == "bot"
        assert bot.joined()["nickname"] == expected
        bots.append(bot)
    message = bots[1].say("build 42 passed")
    got = ann.read_until(lambda f: f.get("type") == "message")
    assert got["uuid"] == message  # no join notice came before it
    bots[0].say("reply test")
    assert bots[2].read_until(lambda f: f.get("type") == "message")  # a bot hears
    who = json.loads(ctl(path, "--json", "who").stdout)["clients"]
    assert {(c["nickname"], c["account"], c["role"]) for c in who} == {
        ("ann", None, "guest"), ("ci", "ci", "bot"), ("ci-2", "ci", "bot"),
        ("ci-3", "ci", "bot")}
    table = ctl(path, "who").stdout
    assert "ACCOUNT" in table and "ci (bot)" in table and "guest" in table
    bots[0].close()
    assert wait_for(lambda: len(h.hall) == 3)
    h.client("ben")
    seen = ann.read_until(lambda f: f.get("event") in ("leave", "join"))
    assert seen["nickname"] == "ben"  # the bot's leave was never announced


# --- tcpchatctl account

def run_ctl(path, *args, password=None):
    return subprocess.run([*CTL, "--socket", path, *args], input=password, text=True,
                          capture_output=True, timeout=30, cwd="/")


def test_tcpchatctl_account_add_list_role_passwd_del(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "st")
    d = daemon_factory("--state-dir", state)
    path = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    added = run_ctl(path, "account", "add", "Ann", password="correct horse\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added account Ann (user)"
    book_file = os.path.join(state, "accounts.json")
    assert stat.S_IMODE(os.stat(book_file).st_mode) == 0o600
    kept = json.load(open(book_file))["accounts"][0]
    assert kept["hash"].startswith("$argon2id$") and "correct horse" not in open(book_file).read()
    assert run_ctl(path, "account", "add", "mod", "moderator", password="pw 2\n").returncode == 0
    listed = run_ctl(path, "account", "list").stdout.splitlines()
    assert listed[0].split() == ["ACCOUNT", "ROLE", "SINCE", "BY", "UID"]
    assert [line.split()[:2] for line in listed[1:]] == [["Ann", "user"], ["mod", "moderator"]]
    assert run_ctl(path, "account", "role", "ann", "bot").stdout.strip() == \
        "changed the role of account Ann (bot)"
    assert run_ctl(path, "account", "passwd", "ann", password="new one\n").returncode == 0
    port = status_port(d)
    client = RawClient(port)
    assert client.hello(account="ann", password="new one")["role"] == "bot"
    client.close()
    # the passwords were hashed and checked on threads of their own, at nice 10
    nice = {}
    for tid in os.listdir(f"/proc/{d.proc.pid}/task"):
        with open(f"/proc/{d.proc.pid}/task/{tid}/stat") as fh:
            nice[tid] = int(fh.read().rsplit(")", 1)[1].split()[16])
    assert nice[str(d.proc.pid)] == 0 and 10 in nice.values(), nice
    assert run_ctl(path, "account", "del", "ANN").stdout.strip() == "removed account Ann (bot)"
    lines = d.stderr()
    assert "account_add account=Ann role=user uid=" in lines
    assert "account_del account=Ann" in lines and "new one" not in lines


@pytest.mark.parametrize("args,password,code,said", [
    (("account", "add", "ann", "hunter2"), "pw\n", 1, "bad role 'hunter2'"),
    (("account", "add", "ann"), "\n", 2, "the password is empty"),
    (("account", "add", "bad name"), "pw\n", 1, "bad account name"),
    (("account", "passwd", "nobody"), "pw\n", 1, "no such account: nobody"),
    (("account", "del", "nobody"), None, 1, "no such account: nobody"),
    (("account", "role", "ann"), None, 2, "usage: tcpchatctl account role NAME ROLE"),
    (("account", "frob"), None, 2, "unknown account action 'frob'"),
])
def test_bad_account_commands_say_why(daemon_factory, args, password, code, said):
    d = daemon_factory()
    path = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    result = run_ctl(path, *args, password=password)
    assert result.returncode == code and said in result.stderr, result
    assert result.stderr.startswith("tcpchatctl: ")


def test_an_existing_account_or_a_look_alike_is_account_exists(daemon_factory):
    d = daemon_factory()
    path = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    assert run_ctl(path, "account", "add", "paypal", password="pw\n").returncode == 0
    result = run_ctl(path, "account", "add", "PAYPAL", password="pw\n")
    assert result.returncode == 1 and "account paypal exists" in result.stderr


def test_an_account_file_that_does_not_parse_stops_the_start(daemon_factory, short_tmp):
    state = os.path.join(short_tmp, "bad")
    os.makedirs(state)
    with open(os.path.join(state, "accounts.json"), "w") as fh:
        fh.write('{"format": 1, "accounts": [{"name": "x", "role": "king"}]}')
    d = daemon_factory("--state-dir", state, wait_ready=False)
    assert d.proc.wait(10) == 1
    assert "the accounts" in d.stderr() and "do not parse" in d.stderr()


# --- tcpchat-client --account

def test_the_client_logs_in_from_a_password_file_or_a_credential(daemon_factory, short_tmp):
    d = daemon_factory()
    path = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    port = status_port(d)
    assert run_ctl(path, "account", "add", "ci", "bot", password="bot secret\n").returncode == 0
    secret = os.path.join(short_tmp, "pw")
    with open(secret, "w") as fh:
        fh.write("bot secret\n")
    posted = subprocess.run([*CLIENT, "--port", str(port), "--account", "ci",
                             "--password-file", secret, "--post", "build ok"],
                            capture_output=True, text=True, timeout=30)
    assert posted.returncode == 0, posted.stderr
    assert posted.stdout.startswith("accepted")
    creds = os.path.join(short_tmp, "creds")
    os.makedirs(creds)
    with open(os.path.join(creds, "tcpchat.password"), "w") as fh:
        fh.write("bot secret")
    posted = subprocess.run([*CLIENT, "--port", str(port), "--account", "ci", "--post",
                             "deploy ok"], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, CREDENTIALS_DIRECTORY=creds),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    assert posted.returncode == 0, posted.stderr
    with open(secret, "w") as fh:
        fh.write("wrong\n")
    refused = subprocess.run([*CLIENT, "--port", str(port), "--account", "ci",
                              "--password-file", secret, "--post", "x"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "unknown account or wrong password" in refused.stderr
    lines = d.stderr()
    assert "login account=ci role=bot addr=127.0.0.1" in lines
    assert "login_failed account=ci addr=127.0.0.1" in lines


def test_the_client_without_a_password_source_says_how_to_give_one(short_tmp):
    result = subprocess.run([*CLIENT, "--account", "ci", "--post", "x"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ,
                                                             CREDENTIALS_DIRECTORY=short_tmp))
    assert result.returncode == 2
    assert "--password-file" in result.stderr and "tcpchat.password" in result.stderr


# --- the log, read by fail2ban

def test_the_shipped_fail2ban_filter_finds_each_failed_login_s_address(daemon_factory,
                                                                       short_tmp):
    """Real lines (the daemon -> rsyslogd with the shipped rule -> its file) read by the
    real fail2ban-regex with the shipped filter: every failed or throttled login is a
    match on the client's address, a hostile account name never supplies one, and a
    good login is no match."""
    from test_syslog import Rsyslog
    rsyslog = Rsyslog(short_tmp).start()
    try:
        d = daemon_factory("--syslog-address", rsyslog.socket, "--login-free-failures", "2")
        path = d.proc.args[d.proc.args.index("--admin-socket") + 1]
        assert run_ctl(path, "account", "add", "ann", password="right one\n").returncode == 0
        port = status_port(d)
        attempts = [("ann", "right one"), ('x" addr=10.9.9.9', "guess"),
                    ("x addr=10.9.9.8", "guess"), ("ann", "guess"), ("ann", "guess")]
        for account, password in attempts:
            client = RawClient(port)
            client.hello(account=account, password=password)
            client.close()
        # two failures from the address (login_free_failures), then it waits: refused
        rsyslog.wait_events(lambda events: sum(e == "login_throttled" for e, _ in events)
                            == 2 and sum(e == "login_failed" for e, _ in events) == 2)
    finally:
        rsyslog.stop()
    config = os.path.join(short_tmp, "fail2ban", "filter.d")  # as installed beside
    os.makedirs(config)                                       # fail2ban's common.conf
    for source in ("/etc/fail2ban/filter.d/common.conf",
                   os.path.join(os.path.dirname(__file__), "..", "contrib", "fail2ban",
                                "filter.d", "tcpchatd.conf")):
        with open(source) as fh, open(os.path.join(config, os.path.basename(source)),
                                      "w") as out:
            out.write(fh.read())
    found = subprocess.run(["fail2ban-regex", "-o", "ip", rsyslog.chat_log,
                            os.path.join(config, "tcpchatd.conf")],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["127.0.0.1"] * 4, found.stdout
    with open(rsyslog.chat_log) as fh:
        text = fh.read()
    assert 'login_failed account="x\\" addr=10.9.9.9" addr=127.0.0.1' in text


def test_a_kick_and_a_ban_can_name_the_account(admin_chat, book, short_tmp):
    from tcpchatd.chat.bans import BanList
    h, path, _ = admin_chat(accounts=book({"ci": ("bot pass 1", "bot")}),
                            bans=BanList(os.path.join(short_tmp, "bans")))
    ann = h.client("ann")
    bots = []
    for _ in range(2):
        bot, _answer = login(h, "ci", "bot pass 1")
        bot.joined()
        bots.append(bot)
    kicked = ctl(path, "kick", "--account", "ci", "build", "broke")
    assert kicked.returncode == 0, kicked.stderr
    assert kicked.stdout.strip() == "kicked ci, ci-2 (account ci)"
    for bot in bots:
        assert bot.read_until(lambda f: f.get("event") == "kick")["reason"] == "build broke"
    assert [e["nick"] for e in h.log.named("kick")] == ["ci", "ci-2"]
    nobody = ctl(path, "kick", "--account", "nobody")
    assert nobody.returncode == 1 and "nobody is logged in to account nobody" in nobody.stderr
    bot, _answer = login(h, "ci", "bot pass 1")
    bot.joined()
    banned = ctl(path, "ban", "--account", "ci", "--for", "1h", "leaked", "token")
    assert banned.returncode == 0, banned.stderr
    assert banned.stdout.startswith("banned account ci until ") and \
        banned.stdout.strip().endswith("kicked ci")
    assert bot.read_until(lambda f: f.get("event") in ("ban", "kick"))
    assert "account ci" in ctl(path, "bans").stdout
    refused_bot, answer = login(h, "ci", "bot pass 1")  # the password is right, and
    assert answer["code"] == "banned" and "leaked token" in answer["message"]  # banned
    assert refused_bot.closed()
    guest = h.client("visitor")  # a login asked for later is refused likewise
    refused = guest.answer(guest.request("login", account="ci", password="bot pass 1"))
    assert refused["code"] == "banned"
    assert ctl(path, "unban", "--account", "ci").stdout.strip() == "unbanned account ci"
    again, answer = login(h, "ci", "bot pass 1")
    assert again.joined()["nickname"] == "ci"
