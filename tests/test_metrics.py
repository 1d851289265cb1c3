"""Metrics for Prometheus (issue 30, part 1): the daemon's counters on /metrics, read
with prometheus_client's own parser of the text format."""

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
