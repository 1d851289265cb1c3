"""TLS beside the plaintext port: the real daemon, certificates made here with `openssl`,
`openssl s_client` and Python's `ssl` as peers written by nobody here, the plaintext
original-style client in the same room."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import DaemonProcess, client_context, ports, server_connections
from rawclient import PROMPT, RawClient, TlsRawClient, wait_for, confirming
from conftest import ctl

CLIENT = [sys.executable, "-m", "tcpchatd.cli.client"]


def test_tls_and_plaintext_clients_chat_in_one_room(tls_daemon, certs, short_tmp):
    admin_path = os.path.join(short_tmp, "tls.sock")
    d, plain_port, tls_port = tls_daemon("--admin-socket", admin_path)
    alice = TlsRawClient(tls_port, client_context(certs))
    assert alice.join("alice")["nickname"] == "alice"
    bob = RawClient(plain_port)
    bob.join("bob")
    u = alice.say("over TLS")
    got = bob.read_until(lambda f: f.get("uuid") == u)
    assert got["message"] == "alice: over TLS"
    bob.confirm(u)
    assert alice.read_until(lambda f: f.get("uuid") == u)["type"] == "confirm"
    v = bob.say("in the clear")
    assert alice.read_until(lambda f: f.get("uuid") == v)["message"] == "bob: in the clear"
    alice.confirm(v)
    bob.read_until(lambda f: f.get("uuid") == v and f["type"] == "confirm")
    who = json.loads(ctl(admin_path, "who", "--json").stdout)["clients"]
    assert {c["nickname"]: c["tls"] for c in who} == {"alice": True, "bob": False}
    table = ctl(admin_path, "who").stdout.splitlines()
    assert table[0].split()[-1] == "TLS"
    assert [line.split()[-1] for line in table[1:]] == ["yes", "no"]
    assert d.stop() == 0
    log = d.stderr()
    assert re.search(r"^join nick=alice room=general addr=127\.0\.0\.1:\d+ tls=yes$", log, re.M)
    assert re.search(r"^join nick=bob room=general addr=127\.0\.0\.1:\d+$", log, re.M)
    assert "Traceback" not in log


def test_openssl_s_client_is_a_peer(tls_daemon, certs):
    d, plain_port, tls_port = tls_daemon()
    reader = RawClient(plain_port)
    reader.join("reader")
    body = json.dumps({"type": "message", "uuid": "11111111-1111-4111-8111-111111111111",
                       "message": "ossl: from openssl"}).encode()
    peer = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port}", "-servername",
         "localhost", "-CAfile", certs("ca.crt"), "-verify_return_error", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert peer.stdout.read(10) == PROMPT
        peer.stdin.write(b"ossl")
        peer.stdin.flush()
        join = peer.stdout.read(10)
        assert json.loads(peer.stdout.read(int(join)))["nickname"] == "ossl"
        peer.stdin.write(f"{len(body):<10}".encode() + body)
        peer.stdin.flush()
        got = reader.read_until(lambda f: f.get("type") == "message")
        assert got["message"] == "ossl: from openssl"
    finally:
        peer.kill()
        peer.wait()
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def test_stalled_handshakes_delay_nobody_and_cost_no_threads(tls_daemon, certs):
    """50 clients open the TLS port and stall mid-handshake; a plaintext message still
    arrives within 50 ms, and the daemon's thread count does not move."""
    d, plain_port, tls_port = tls_daemon("--handshake-timeout", "30")
    alice, bob = RawClient(plain_port), RawClient(plain_port)
    alice.join("alice")
    bob.join("bob")
    threads = len(os.listdir(f"/proc/{d.proc.pid}/task"))
    hello = client_hello(certs)
    stalled = []
    for number in range(50):
        sock = socket.create_connection(("127.0.0.1", tls_port))
        sock.sendall(hello[:len(hello) // 2] if number % 2 else b"")  # half, or nothing
        stalled.append(sock)
    wait_for(lambda: server_connections(tls_port) == 50)  # all taken in, none done
    worst = 0.0
    for _ in range(5):
        start = time.monotonic()
        u = alice.say("still here?")
        bob.read_until(lambda f: f.get("uuid") == u)
        worst = max(worst, time.monotonic() - start)
        bob.confirm(u)
    assert worst < 0.050, f"a plaintext message took {worst * 1000:.1f} ms"
    assert len(os.listdir(f"/proc/{d.proc.pid}/task")) == threads
    for sock in stalled:
        sock.close()
    assert d.stop() == 0 and "Traceback" not in d.stderr()


def client_hello(certs) -> bytes:
    """The bytes a real TLS client opens with (captured from Python's ssl)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_bad_input_on_either_port_is_closed_and_logged(tls_daemon, certs):
    d, plain_port, tls_port = tls_daemon("--handshake-timeout", "0.5")
    member = RawClient(plain_port)
    member.join("member")
    # a plaintext client on the TLS port: no prompt, closed
    plain_on_tls = RawClient(tls_port)
    plain_on_tls.send_raw(b"mallory\n")
    assert plain_on_tls.closed()
    # a ClientHello on the plaintext port: after the prompt, closed, never a nickname
    hello_on_plain = RawClient(plain_port)
    assert hello_on_plain.read_item() == PROMPT
    hello_on_plain.send_raw(client_hello(certs))
    assert hello_on_plain.closed()
    # garbage that looks like a TLS record; a client that vanishes mid-handshake; one
    # that stalls past handshake_timeout
    garbage = socket.create_connection(("127.0.0.1", tls_port))
    garbage.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(64))
    vanished = socket.create_connection(("127.0.0.1", tls_port))
    vanished.sendall(client_hello(certs)[:40])
    vanished.close()
    stalled = socket.create_connection(("127.0.0.1", tls_port))
    wait_for(lambda: d.stderr().count("code=tls_handshake") >= 4, timeout=5)
    garbage.close()
    stalled.close()
    # the room is unharmed
    u = RawClient(plain_port)
    u.join("after")
    v = u.say("all well")
    assert member.read_until(lambda f: f.get("uuid") == v)["message"] == "after: all well"
    assert d.stop() == 0
    log = d.stderr()
    assert "code=tls_on_plain" in log and "nick_rejected" not in log
    assert "error=timeout" in log
    assert "Traceback" not in log


def test_handshakes_count_against_max_per_address(tls_daemon, certs):
    d, plain_port, tls_port = tls_daemon("--max-per-address", "2", "--exempt-addresses", "",
                                         "--handshake-timeout", "30")
    hanging = [socket.create_connection(("127.0.0.1", tls_port)) for _ in range(2)]
    wait_for(lambda: server_connections(tls_port) == 2)
    third = RawClient(plain_port)
    err = third.read()
    assert (err["event"], err["code"]) == ("error", "address_limit")
    for sock in hanging:
        sock.close()
    wait_for(lambda: _joins(plain_port))
    assert d.stop() == 0


def _joins(port: int) -> bool:
    try:
        client = RawClient(port)
        return client.read_item() == PROMPT
    except (OSError, EOFError, AssertionError):
        return False


def peer_certificate(port: int, certs) -> dict:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as tls:
            return dict(pair[0] for pair in tls.getpeercert()["subject"])


def test_reload_loads_a_new_certificate_and_keeps_the_old_on_a_bad_pair(
        tls_daemon, certs, short_tmp):
    live = os.path.join(short_tmp, "live")
    os.mkdir(live)
    for part in ("crt", "key"):
        subprocess.run(["cp", certs(f"one.{part}"), os.path.join(live, f"tls.{part}")],
                       check=True)
    admin_path = os.path.join(short_tmp, "r.sock")
    conf = os.path.join(short_tmp, "tcpchatd.toml")
    with open(conf, "w") as fh:
        fh.write(f'tls_cert = "{live}/tls.crt"\ntls_key = "{live}/tls.key"\n')
    d = DaemonProcess(short_tmp, [
        "--config", conf, "--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0",
        "--admin-socket", admin_path, "--log-target", "stderr", "--log-gather", "0",
        "--state-dir", os.path.join(short_tmp, "st")]).ready()
    try:
        plain_port, tls_port = ports(d)
        stats = json.loads(ctl(admin_path, "stats", "--json").stdout)
        assert stats["tls_cert_expires"] == expiry(certs("one.crt"))
        keeper = TlsRawClient(tls_port, client_context(certs))
        keeper.join("keeper")
        assert peer_certificate(tls_port, certs)["commonName"] == "localhost one"
        # renewed: the new pair serves new handshakes; the connected client stays
        for part in ("crt", "key"):
            subprocess.run(["cp", certs(f"two.{part}"), os.path.join(live, f"tls.{part}")],
                           check=True)
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_notify("READY=1")
        assert peer_certificate(tls_port, certs)["commonName"] == "localhost two"
        stats = json.loads(ctl(admin_path, "stats", "--json").stdout)
        assert stats["tls_cert_expires"] == expiry(certs("two.crt"))
        # a key that does not match: the old pair stays, the reload says why
        subprocess.run(["cp", certs("one.key"), os.path.join(live, "tls.key")], check=True)
        d.messages.clear()
        d.signal(signal.SIGHUP)
        status = d.wait_notify("READY=1")
        assert "reload failed" in status
        wait_for(lambda: "reload ok=no error=" in d.stderr())
        assert peer_certificate(tls_port, certs)["commonName"] == "localhost two"
        u = keeper.say("still connected")
        assert keeper.read_until(lambda f: f.get("uuid") == u)["event"] == "undelivered"
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.stderr()


def expiry(cert_path: str) -> str:
    out = subprocess.run(["openssl", "x509", "-in", cert_path, "-noout", "-enddate"],
                         capture_output=True, text=True, check=True).stdout
    stamp = time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y GMT")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)


def test_a_tls_listener_without_a_usable_pair_stops_the_start(daemon_factory, certs):
    d = daemon_factory("--listen-tls", "127.0.0.1:0", wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "TLS needs tls_cert and tls_key" in d.stderr()
    d = daemon_factory("--listen-tls", "127.0.0.1:0", "--tls-cert", certs("one.crt"),
                       "--tls-key", certs("two.key"), wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "do not load" in d.stderr() and "Traceback" not in d.stderr()


def socket_activated(short_tmp, *args, env=None, cwd=None):
    """A daemon handed a `chat` and a `chat-tls` listening socket as systemd would:
    (process, chat socket, TLS socket); the sockets listen before the daemon runs."""
    from test_systemd import with_fds
    chat, tls = socket.socket(), socket.socket()
    for sock in (chat, tls):
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    fds = [chat.fileno(), tls.fileno()]
    proc = subprocess.Popen(
        with_fds([sys.executable, "-m", "tcpchatd", "--log-target", "stderr",
                  "--state-dir", os.path.join(short_tmp, "st"), *args], fds,
                 names="chat:chat-tls"),
        pass_fds=fds, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=cwd,
        env=dict(os.environ, **(env or {})))
    return proc, chat, tls


def test_a_systemd_tls_socket_without_a_pair_is_left_unserved_and_chat_runs_on(short_tmp):
    notify = os.path.join(short_tmp, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify)
    listener.settimeout(10)
    proc, chat, tls = socket_activated(short_tmp, "--admin-socket",
                                       os.path.join(short_tmp, "a.sock"),
                                       env={"NOTIFY_SOCKET": notify})
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready and "TLS not served: TLS needs tls_cert" in ready
        client = RawClient(chat.getsockname()[1])
        assert client.join("plain")["nickname"] == "plain"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    err = proc.stderr.read()
    assert err.count("TLS not served") == 1 and "tls ok=no error=" in err
    assert "Traceback" not in err


def test_the_client_verifies_the_server_and_says_so_in_one_line(tls_daemon, certs):
    d, plain_port, tls_port = tls_daemon(cert="two")  # for localhost, not 127.0.0.1
    reader = RawClient(plain_port)
    reader.join("reader")

    confirming(reader)
    ok = subprocess.run(CLIENT + ["--port", str(tls_port), "--cafile", certs("ca.crt"),
                                  "--host", "localhost", "--nick", "piped", "--timeout", "5"],
                        input="hello over tls\n", capture_output=True, text=True, timeout=30,
                        cwd="/")
    assert ok.returncode == 0, ok.stderr
    assert "delivered to 1 of 1" in ok.stdout
    # a server whose certificate the system's CAs do not vouch for: one line, exit 1
    refused = subprocess.run(CLIENT + ["--port", str(tls_port), "--tls", "--host",
                                       "localhost", "--nick", "x"],
                             input="hi\n", capture_output=True, text=True, timeout=30, cwd="/")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "not trusted" in refused.stderr
    assert "Traceback" not in refused.stderr
    # the right CA, a host name the certificate does not name
    wrong = subprocess.run(CLIENT + ["--port", str(tls_port), "--cafile", certs("ca.crt"),
                                     "--host", "127.0.0.1", "--nick", "x"],
                           input="hi\n", capture_output=True, text=True, timeout=30, cwd="/")
    assert wrong.returncode == 1, wrong.stderr
    assert wrong.stderr.count("\n") == 1 and "not trusted" in wrong.stderr
    assert "127.0.0.1" in wrong.stderr and "Traceback" not in wrong.stderr
    assert d.stop() == 0


def test_systemd_credentials_are_the_default_pair(short_tmp, certs):
    """$CREDENTIALS_DIRECTORY/tls.crt and tls.key (LoadCredential=) serve a chat-tls socket
    when no tls_cert or tls_key is set."""
    creds = os.path.join(short_tmp, "creds")
    os.mkdir(creds)
    for name, target in (("one.crt", "tls.crt"), ("one.key", "tls.key")):
        subprocess.run(["cp", certs(name), os.path.join(creds, target)], check=True)
    proc, chat, tls = socket_activated(short_tmp, "--admin-socket",
                                       os.path.join(short_tmp, "c.sock"),
                                       env={"CREDENTIALS_DIRECTORY": creds})
    try:
        secure = None
        deadline = time.monotonic() + 10
        while secure is None:
            try:
                secure = TlsRawClient(tls.getsockname()[1], client_context(certs))
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert secure.join("secure")["nickname"] == "secure"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    err = proc.stderr.read()
    assert "TLS not served" not in err and "Traceback" not in err


def test_an_unserved_tls_socket_is_served_after_an_upgrade_once_a_pair_is_there(
        short_tmp, certs):
    """No pair at start: TLS unserved, the chat runs. The operator adds the pair and runs
    `tcpchatctl upgrade`: TLS is served, and nobody was dropped for it."""
    conf = os.path.join(short_tmp, "tcpchatd.toml")
    with open(conf, "w") as fh:
        fh.write("max_clients = 100\n")
    admin_path = os.path.join(short_tmp, "late.sock")
    proc, chat, tls = socket_activated(short_tmp, "--config", conf, "--admin-socket",
                                       admin_path, cwd="/")
    try:
        plain = RawClient(chat.getsockname()[1], timeout=10)
        plain.join("plain")
        with open(conf, "a") as fh:
            fh.write(f'tls_cert = "{certs("one.crt")}"\ntls_key = "{certs("one.key")}"\n')
        result = ctl(admin_path, "upgrade")
        assert result.returncode == 0, result.stderr
        secure = TlsRawClient(tls.getsockname()[1], client_context(certs))
        assert secure.join("secure")["nickname"] == "secure"
        u = plain.say("still here")
        assert secure.read_until(lambda f: f.get("uuid") == u)["message"] == "plain: still here"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    err = proc.stderr.read()
    assert err.count("TLS not served") == 1 and "Traceback" not in err


def test_a_certificate_with_its_description_before_it_starts_and_reloads(
        tls_daemon, certs, short_tmp):
    """`openssl x509 -text` writes the certificate's description before BEGIN: ssl loads
    such a file, and so does the expiry reader, at start and on reload (issue 23, item 4)."""
    described = os.path.join(short_tmp, "described.crt")
    subprocess.run(["openssl", "x509", "-in", certs("one.crt"), "-text", "-out", described],
                   check=True, capture_output=True)
    with open(described) as fh:
        assert not fh.read().startswith("-----BEGIN")
    admin_path = os.path.join(short_tmp, "d.sock")
    d = DaemonProcess(short_tmp, [
        "--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0", "--tls-cert", described,
        "--tls-key", certs("one.key"), "--admin-socket", admin_path, "--log-target",
        "stderr", "--log-gather", "0", "--state-dir", os.path.join(short_tmp, "st")]).ready()
    try:
        plain_port, tls_port = ports(d)
        stats = json.loads(ctl(admin_path, "stats", "--json").stdout)
        assert stats["tls_cert_expires"] == expiry(certs("one.crt"))
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_notify("READY=1")
        wait_for(lambda: "reload ok=yes" in d.stderr())
        TlsRawClient(tls_port, client_context(certs)).join("after")
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.stderr()


def test_a_certificate_that_cannot_be_read_is_exit_2_at_start_and_kept_out_on_reload(
        tls_daemon, daemon_factory, certs, short_tmp):
    broken = os.path.join(short_tmp, "broken.crt")
    with open(broken, "w") as fh:
        fh.write("Certificate:\n-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
                 "-----END CERTIFICATE-----\n")
    d = daemon_factory("--listen-tls", "127.0.0.1:0", "--tls-cert", broken, "--tls-key",
                       certs("one.key"), wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "Traceback" not in d.stderr() and broken in d.stderr()


@pytest.mark.parametrize("minimum,refused", [("1.2", []), ("1.3", ["1.2"])])
def test_tls_min_version_is_what_the_server_accepts(tls_daemon, certs, minimum, refused):
    d, plain_port, tls_port = tls_daemon("--tls-min-version", minimum)
    for version, pinned in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
        context = client_context(certs)
        context.minimum_version = context.maximum_version = pinned
        if version in refused:
            with pytest.raises(ssl.SSLError):
                TlsRawClient(tls_port, context).sock.recv(10)
        else:
            client = TlsRawClient(tls_port, context)
            assert client.sock.version() == f"TLSv{version}"
            client.join(f"v{version.replace('.', '')}")
            client.close()
