"""Metrics for Prometheus: the daemon's own counters, read when scraped.

prometheus_client's exposition does the format and the HTTP (its request handler, on the
stdlib's threaded HTTP server);
what is exposed is a collector over `stats()` (the counters `tcpchatctl stats` shows), so
nothing on the chat's hot path knows metrics exist. Off unless `listen_metrics` names an
address (127.0.0.1:9155, say): the numbers are no secret, but nobody outside should
reach them unless an operator says so.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

PREFIX = "tcpchatd_"


class MetricsUnavailable(Exception):
    """prometheus_client is not installed (one line saying what to install)."""


def _client() -> Any:
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError:
        raise MetricsUnavailable("metrics need prometheus_client: pip install "
                                 "'tcpchatd[metrics]' (Debian: python3-prometheus-client)") \
            from None
    return prometheus_client, core


class Collector:
    """prometheus_client's custom collector over the daemon's counters."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []  # the families depend on the rooms: collected on each scrape

    def collect(self) -> Iterator[Any]:
        _, core = _client()
        stats = self.stats()

        def counter(name: str, help_text: str, value: float) -> Any:
            return core.CounterMetricFamily(PREFIX + name, help_text, value=value)

        def gauge(name: str, help_text: str, value: float) -> Any:
            return core.GaugeMetricFamily(PREFIX + name, help_text, value=value)
        yield gauge("members", "clients connected to this node", stats["clients"])
        yield counter("messages", "messages sent", stats["messages"])
        yield counter("deliveries", "messages queued for a recipient", stats["deliveries"])
        yield counter("confirms", "delivery confirms taken", stats["confirms"])
        yield counter("undelivered", "messages that reached nobody", stats["undelivered"])
        yield counter("send_queue_disconnects", "clients dropped for their send queue",
                      stats["send_queue_disconnects"])
        yield counter("log_dropped", "traffic log lines dropped", stats["log_dropped"])
        yield counter("upgrades", "hitless upgrades done", stats["upgrades"])
        yield gauge("uptime_seconds", "seconds since the daemon started", stats["uptime_s"])
        transports = core.GaugeMetricFamily(
            PREFIX + "transport_members", "this node's members by how they came in: tcp, "
            "tls, web (WebSocket), wss, irc, ircs", labels=["transport"])
        for transport, count in (stats.get("members_by_transport") or {}).items():
            transports.add_metric([transport], count)
        yield transports
        rooms = core.GaugeMetricFamily(PREFIX + "room_members", "members of each room",
                                       labels=["room"])
        room_messages = core.CounterMetricFamily(PREFIX + "room_messages",
                                                 "messages sent in each room",
                                                 labels=["room"])
        for name, counts in (stats.get("rooms") or {}).items():
            rooms.add_metric([name], counts["members"])
            room_messages.add_metric([name], counts["messages"])
        yield rooms
        yield room_messages
        receipts = core.CounterMetricFamily(PREFIX + "receipts", "receipts at their end: "
                                            "settled (every recipient confirmed), partial "
                                            "(some did), expired (of either, ended by "
                                            "confirm_timeout)", labels=["outcome"])
        for outcome, count in (stats.get("receipts") or {}).items():
            receipts.add_metric([outcome], count)
        yield receipts
        errors = core.CounterMetricFamily(PREFIX + "protocol_errors", "clients' protocol "
                                          "errors by code", labels=["code"])
        for code, count in sorted((stats.get("protocol_errors") or {}).items()):
            errors.add_metric([code], count)
        yield errors
        for key in ("bans", "accounts", "login_failures"):
            if key in stats:
                maker = counter if key == "login_failures" else gauge
                yield maker(key, f"{key.replace('_', ' ')}", stats[key])
        if "history_written" in stats:
            yield counter("history_written", "messages written to the lasting history",
                          stats["history_written"])
            yield counter("history_errors", "failed history writes and reads",
                          stats["history_errors"])
            yield counter("history_dropped", "messages the history writer's queue could "
                          "not take", stats["history_dropped"])
            yield gauge("history_queue", "messages waiting for the history writer",
                        stats["history_queue"])
        if "tls_cert_expires_ts" in stats:
            yield gauge("tls_cert_expiry_timestamp_seconds", "when the TLS certificate "
                        "in use expires (epoch seconds)", stats["tls_cert_expires_ts"])
        yield counter("flood_drops", "messages and IRC lines dropped over the flood limit",
                      stats.get("flood_drops", 0))
        yield counter("flood_disconnects", "clients disconnected for flooding",
                      stats.get("flood_disconnects", 0))
        answers = core.CounterMetricFamily(PREFIX + "http_answers", "the web door's answers "
                                           "that end at it, by status: 200 (a file of the "
                                           "page), 403 (an origin refused), 400, 404, 405, "
                                           "408 (nothing whole came), 431; a WebSocket "
                                           "opened is a member", labels=["status"])
        for status, count in sorted((stats.get("http_answers") or {}).items()):
            answers.add_metric([str(status)], count)
        yield answers
        if "broker_up" in stats:
            yield gauge("broker_up", "1 while this node is linked to the cluster's broker",
                        stats["broker_up"])
            yield gauge("broker_lag_seconds", "how old the newest event of a read of the "
                        "cluster's stream was when this node read it, the largest of the "
                        "last 10 s (by the Redis server's clock)",
                        stats.get("broker_lag_s", 0.0))
            yield counter("broker_events_read", "events read from the cluster's stream",
                          stats.get("broker_events_read", 0))
            yield gauge("broker_queue", "events waiting to be written to the stream",
                        stats.get("broker_queue", 0))
            yield counter("broker_missed", "events of this node lost while the broker was lost",
                          stats.get("broker_missed", 0))
            yield counter("broker_gap_events", "other nodes' events trimmed from the stream "
                          "before this node read them", stats.get("broker_gap_events", 0))


class MetricsServer:
    """The HTTP endpoint (`/metrics`) on a listening socket of its own thread: one bound
    from `listen_metrics`, or tcpchatd-metrics.socket's (systemd), or the one a hitless
    upgrade carried, so that the port never closes while the daemon lives."""

    def __init__(self, sock: socket.socket, stats: Callable[[], dict]) -> None:
        prometheus_client, core = _client()
        registry = core.CollectorRegistry()
        registry.register(Collector(stats))
        handler = prometheus_client.exposition.MetricsHandler.factory(registry)
        server = ThreadingHTTPServer(sock.getsockname()[:2], handler,
                                     bind_and_activate=False)
        server.socket.close()  # the one socketserver made: ours is already listening
        server.socket = sock
        server.daemon_threads = True  # a scrape in progress never holds up an exit
        server.timeout = 1.0  # handle_request's wait, should a connection vanish meanwhile
        self.server, self.sock = server, sock

    def start(self) -> None:
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """serve_forever's loop, but stopped at once by the pipe (its shutdown() waits
        up to a poll interval, which an upgrade's pause would pay)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_read:
                        return
                self.server.handle_request()  # accepts it; a thread of its own answers

    def stop_serving(self) -> None:
        """No more accepting (an upgrade): the socket stays open and what connects
        waits in its backlog for the new image."""
        os.write(self._wake_write, b"x")
        self._thread.join()
