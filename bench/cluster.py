"""Two tcpchatd nodes on one Redis against one node alone (`python -m bench cluster`).

Rows: one node alone (the embedded room), one node on a Redis broker (what the broker adds
per message when nobody else is there to hear it), two nodes on one Redis with the
clients spread over them. Each at the fixed load (20 senders x 20 msg/s, receipts) for
p99, at full speed (window 20) for CPU per delivery, and a fan-out to 10,000 clients.
CPU is the sum of every process serving the room: the nodes and, where there is one,
redis-server. Everything runs on this 2-core machine, the generator too.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

from .loadgen import Settings
from .servers import RedisServer, Tcpchatd

NODE_TTL = "2"       # heartbeats every 0.5 s: the nodes know each other soon after start
SETTLE_S = 1.5       # after the nodes start: each has seen the other's heartbeat
SETUPS = ("one node", "one node + Redis", "two nodes + Redis")


def _started(stack: ExitStack, setup: str, clients: int) -> list:
    """The processes of one setup, started; nodes first, redis-server last."""
    limit = ("--max-clients", str(clients + 100), "--max-per-address", str(clients + 100))
    if setup == "one node":
        return [stack.enter_context(Tcpchatd(*limit))]
    redis = stack.enter_context(RedisServer())
    count = 2 if setup.startswith("two") else 1
    nodes = [stack.enter_context(Tcpchatd(*limit, "--broker", redis.url, "--room", "bench",
                                          "--node-name", f"n{i}", "--node-ttl", NODE_TTL))
             for i in range(count)]
    time.sleep(SETTLE_S)
    return [*nodes, redis]


def measure_setup(setup: str, settings: Settings, measure_running) -> dict:
    with ExitStack() as stack:
        servers = _started(stack, setup, settings.clients)
        nodes = [s for s in servers if isinstance(s, Tcpchatd)]
        settings.port = nodes[0].port
        settings.ports = tuple(node.port for node in nodes)
        result = measure_running("tcpchatd", settings, servers)
    result["server"] = setup
    return result


def cluster_comparison(args, measure_running, log) -> list[dict]:
    rows = []
    for setup in SETUPS:
        for name, settings in (
                ("fixed", Settings(port=0, clients=200, senders=20, rate=20.0,
                                   duration=args.duration)),
                ("full", Settings(port=0, clients=200, senders=20, window=20,
                                  duration=args.duration)),
                ("fanout", Settings(port=0, clients=args.scale_clients, senders=1,
                                    fanout=True))):
            row = measure_setup(setup, settings, measure_running)
            row["load"] = name
            log(json.dumps(row))
            rows.append(row)
    return rows


def cluster_text(rows: list[dict]) -> str:
    def get(setup, load):
        return next(r for r in rows if r["server"] == setup and r["load"] == load)
    lines = ["## Two nodes through Redis", "",
             f"Measured {time.strftime('%Y-%m-%d')} by "
             "`python -m bench cluster`: the same 200 clients (20 senders) on one node alone, "
             "on one node with the Redis broker, and spread over two nodes on one Redis; "
             "then one message to 10,000 clients. CPU is every serving process's (nodes and "
             "redis-server); all of it, and the generator, shares this machine's 2 cores, so "
             "two nodes here measure the broker's cost, not the capacity two machines add.",
             "", "| setup | p99 ms at 20 x 20 msg/s | CPU µs per delivery (full speed) | "
             "deliveries/s | 10,000 joined in s | one message to 10,000 s | peak RSS MiB "
             "(10,000) | missing |", "|---|---|---|---|---|---|---|---|"]
    for setup in SETUPS:
        fixed, full, fan = get(setup, "fixed"), get(setup, "full"), get(setup, "fanout")
        missing = fixed["missing"] + full["missing"] + fan["missing"]
        lines.append(f"| {setup} | {fixed['latency_p99_ms']} | {full['cpu_us_per_delivery']} "
                     f"| {full['deliveries_per_s']} | {fan['connect_join_s']} | "
                     f"{fan['fanout_s']} | {fan['server_peak_rss_mib']} | {missing} |")
    alone, broker = get("one node", "full"), get("one node + Redis", "full")
    per_message = (broker["server_cpu_s"] / max(1, broker["messages"])
                   - alone["server_cpu_s"] / max(1, alone["messages"])) * 1e6
    lines += ["", f"What the broker adds per message (one node + Redis against one node "
              f"alone, CPU of the node and redis-server per message sent): "
              f"{per_message:.0f} µs — one XADD of the event pipelined with its neighbours, "
              "read back and skipped by its own node. With a second node each message "
              "also costs that node's relay (read, deliver to its members) and its "
              "acknowledgement, coalesced confirms and tally back to the origin."]
    return "\n".join(lines) + "\n"
