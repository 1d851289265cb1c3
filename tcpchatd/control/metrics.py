"""Metrics for Prometheus: the daemon's own counters, read when scraped.

prometheus_client's exposition does the format and the HTTP (its small threaded server);
what is exposed is a collector over `stats()` (the counters `tcpchatctl stats` shows), so
nothing on the chat's hot path knows metrics exist. Off unless `listen_metrics` names an
address (127.0.0.1:9155, say): the numbers are no secret, but nobody outside should
reach them unless an operator says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
        if "broker_up" in stats:
            yield gauge("broker_up", "1 while this node is linked to the cluster's broker",
                        stats["broker_up"])


class MetricsServer:
    """The HTTP endpoint (`/metrics`) on its own thread."""

    def __init__(self, host: str, port: int, stats: Callable[[], dict]) -> None:
        prometheus_client, core = _client()
        self.registry = core.CollectorRegistry()
        self.registry.register(Collector(stats))
        self.host, self.port = host, port
        self._start = lambda: prometheus_client.start_http_server(port, host,
                                                                  registry=self.registry)
        self._server: Any = None

    def start(self) -> None:
        started = self._start()
        # prometheus_client >= 0.17 returns (server, thread); 0.16 (Debian 12) returns None
        self._server = started[0] if isinstance(started, tuple) else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
