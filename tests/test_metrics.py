"""Metrics for Prometheus (issue 30, part 1): the daemon's counters on /metrics, read
with prometheus_client's own parser of the text format."""

import re
import socket
import urllib.request

from conftest import ctl, free_port, status_port
from rawclient import RawClient, raw_frame, wait_for
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample served."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_counters_are_scraped_in_prometheus_text_format(daemon_factory):
    from ircclient import IrcClient
    metrics_port, irc_port = free_port(), free_port()
    d = daemon_factory("--listen-metrics", f"127.0.0.1:{metrics_port}", "--listen-irc",
                       f"127.0.0.1:{irc_port}")
    port = status_port(d)
    admin = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    ann, ben = RawClient(port), RawClient(port)
    ann.join("ann")
    ben.join("ben")
    ben.enter("dev")
    for text in ("one", "two"):
        u = ann.say(text)
        ben.confirm(ben.read_until(lambda f, u=u: f.get("uuid") == u)["uuid"])
    assert ctl(admin, "ban", "10.9.9.9").returncode == 0
    samples = wait_for(lambda: (s := scrape(metrics_port))
                       and s[("tcpchatd_history_written_total", ())] == 2 and s, timeout=10)
    assert samples[("tcpchatd_members", ())] == 2
    assert samples[("tcpchatd_transport_members", (("transport", "tcp"),))] == 2
    assert samples[("tcpchatd_transport_members", (("transport", "irc"),))] == 0
    ircy = IrcClient(irc_port)  # one by another door
    ircy.register("ircy")
    samples = scrape(metrics_port)
    assert samples[("tcpchatd_transport_members", (("transport", "irc"),))] == 1
    assert samples[("tcpchatd_transport_members", (("transport", "web"),))] == 0
    assert samples[("tcpchatd_members", ())] == 3
    assert samples[("tcpchatd_messages_total", ())] == 2
    assert samples[("tcpchatd_deliveries_total", ())] == 2
    assert samples[("tcpchatd_confirms_total", ())] == 2
    assert samples[("tcpchatd_room_members", (("room", "general"),))] == 3
    assert samples[("tcpchatd_room_members", (("room", "dev"),))] == 1
    assert samples[("tcpchatd_room_messages_total", (("room", "general"),))] == 2
    assert samples[("tcpchatd_bans", ())] == 1
    assert samples[("tcpchatd_log_dropped_total", ())] == 0
    assert samples[("tcpchatd_history_errors_total", ())] == 0


def test_a_metrics_port_in_use_is_one_warning_and_the_chat_runs_on(daemon_factory):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        d = daemon_factory("--listen-metrics", f"127.0.0.1:{taken.getsockname()[1]}")
        assert "warning: no metrics on 127.0.0.1:" in d.stderr()
        c = RawClient(status_port(d))
        c.join("still-here")
    finally:
        taken.close()


def test_a_bad_metrics_address_stops_the_start(daemon_factory):
    d = daemon_factory("--listen-metrics", "nowhere", wait_ready=False)
    assert d.proc.wait(10) == 2
    assert "listen-metrics" in d.stderr() or "listen_metrics" in d.stderr()


def test_receipts_by_outcome_and_protocol_errors_by_code(daemon_factory):
    metrics_port = free_port()
    d = daemon_factory("--listen-metrics", f"127.0.0.1:{metrics_port}", "--confirm-timeout",
                       "0.5", "--receipt-wait", "0.2")
    port = status_port(d)
    ann, ben, cy = RawClient(port), RawClient(port), RawClient(port)
    for client, name in ((ann, "ann"), (ben, "ben"), (cy, "cy")):
        client.join(name)
    everyone = ann.say("both confirm")
    for reader in (ben, cy):
        reader.confirm(reader.read_until(lambda f: f.get("uuid") == everyone)["uuid"])
    some = ann.say("only ben confirms")
    ben.confirm(ben.read_until(lambda f: f.get("uuid") == some)["uuid"])
    cy.read_until(lambda f: f.get("uuid") == some)  # read, never confirmed
    ann.send_raw(raw_frame(b"{not json"))  # a protocol error, answered and counted
    assert ann.read_until(lambda f: f.get("event") == "error")["code"] == "bad_json"
    samples = wait_for(lambda: (s := scrape(metrics_port))
                       and s[("tcpchatd_receipts_total", (("outcome", "expired"),))] == 1
                       and s, timeout=10)
    assert samples[("tcpchatd_receipts_total", (("outcome", "settled"),))] == 1
    assert samples[("tcpchatd_receipts_total", (("outcome", "partial"),))] == 1
    assert samples[("tcpchatd_protocol_errors_total", (("code", "bad_json"),))] == 1


def test_floods_and_the_web_door_s_answers_are_counted(daemon_factory):
    from ircclient import IrcClient
    from wsclient import Refused, WsClient, http_get
    metrics_port, web_port, irc_port = free_port(), free_port(), free_port()
    d = daemon_factory("--listen-metrics", f"127.0.0.1:{metrics_port}", "--listen-web",
                       f"127.0.0.1:{web_port}", "--listen-irc", f"127.0.0.1:{irc_port}",
                       "--flood-rate", "2", "--flood-burst", "2")
    port = status_port(d)
    assert http_get(web_port, "/")[0] == 200
    assert http_get(web_port, "/app.js")[0] == 200
    assert http_get(web_port, "/nothing-here")[0] == 404
    try:
        WsClient(web_port, origin="https://evil.example")
        raise AssertionError("a foreign origin was let in")
    except Refused as refused:
        assert "403" in str(refused)
    noisy = RawClient(port)
    noisy.join("noisy")
    for n in range(4):  # a burst of 2: two dropped, each told
        noisy.say(f"spam {n}")
    dropped = [noisy.read_until(lambda f: f.get("code") == "flood") for _ in range(2)]
    assert all("dropped" in f["message"] for f in dropped)
    ircy = IrcClient(irc_port)
    ircy.register("ircy")
    ircy.send(*["PING :x"] * 40)  # lines over twice the rate and burst: closed
    assert "Excess Flood" in ircy.until(lambda line: line.startswith("ERROR"))
    assert ircy.closed()
    samples = wait_for(lambda: (s := scrape(metrics_port))
                       and s[("tcpchatd_flood_disconnects_total", ())] == 1 and s,
                       timeout=10)
    assert samples[("tcpchatd_flood_drops_total", ())] == 3  # noisy's two, ircy's line
    assert samples[("tcpchatd_http_answers_total", (("status", "200"),))] == 2
    assert samples[("tcpchatd_http_answers_total", (("status", "404"),))] == 1
    assert samples[("tcpchatd_http_answers_total", (("status", "403"),))] == 1
    assert ("tcpchatd_broker_up", ()) not in samples  # no cluster, no broker families
    log = wait_for(lambda: (text := d.stderr()) and "reason=flood" in text and text)
    assert "flood nick=ircy transport=irc" in log
    assert re.search(r"leave nick=ircy .*reason=flood", log)


def test_scrapes_through_a_hitless_upgrade_are_all_answered(daemon_factory):
    """The metrics port is carried across the exec like the chat's, and the old image
    stops accepting on it before the hand-over: a scraper asking all the while is never
    refused and never cut off; what connects meanwhile is answered by the new image."""
    import threading
    metrics_port = free_port()
    d = daemon_factory("--listen-metrics", f"127.0.0.1:{metrics_port}")
    admin = d.proc.args[d.proc.args.index("--admin-socket") + 1]
    pid = d.proc.pid
    assert scrape(metrics_port)[("tcpchatd_upgrades_total", ())] == 0
    upgraded, outcomes = threading.Event(), []

    def scraper():
        while not upgraded.is_set():
            try:
                outcomes.append(scrape(metrics_port)[("tcpchatd_upgrades_total", ())])
            except Exception as exc:  # refused, reset, cut short: each a failure
                outcomes.append(exc)
    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 3)
        result = ctl(admin, "upgrade")
        assert result.returncode == 0, result.stderr
        assert f"(pid {pid})" in result.stdout
        wait_for(lambda: outcomes[-1] == 1)  # the new image answers
    finally:
        upgraded.set()
        thread.join()
    assert [o for o in outcomes if o not in (0, 1)] == []
    assert "no metrics" not in d.stderr()
