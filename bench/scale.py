"""100,000 members across nodes on this machine (`python -m bench cluster --members 100000`).

One redis-server, `--nodes` tcpchatd nodes (each under the machine's 20,000-descriptor
limit), `--generators` load generators, each a process of its own with an equal share of
the members spread over every node (generator g's client i connects to node i mod nodes).
The phases, timed on the monotonic clock that every process shares:

1. join: every generator connects and joins its members at once; the time until the last
   one is in;
2. fan-out: one message from one member to every other: when each arrived (p50, p99,
   the last);
3. steady: for each of `--rates` (messages a second in the room, sent by 20 members of the
   first generator), `--duration` seconds of sending and `--drain` more of reading: what
   was delivered, its latency, who was disconnected.

Members confirm what they read, as tcpchatd's clients do. CPU and memory are each
process's own (/proc): every node, Redis, and the generators' sum. Everything shares the
machine's two cores, so what the run shows is what the cluster does when the machine is
the limit, not what separate machines would do (BENCHMARKS.md says what would change).
"""

from __future__ import annotations

import multiprocessing
import time
from contextlib import ExitStack
from statistics import median

from .loadgen import LoadGenerator, Settings
from .servers import ProcStats, RedisServer, Tcpchatd

SENDERS = 20                # members of the first generator that send in a steady phase
NODE_TTL = "30"             # heartbeats may wait for a core: no node is swept meanwhile
LATENCY_SAMPLE = 200_000    # latencies a generator reports per phase (every k-th)
JOIN_DEADLINE = 900.0


def _sample(latencies) -> list[float]:
    step = max(1, len(latencies) // LATENCY_SAMPLE)
    return list(latencies[::step])


def _generator(index: int, settings: Settings, pipe) -> None:
    """A child process: one LoadGenerator, told each phase (and when) through `pipe`."""
    generator = LoadGenerator(settings)
    try:
        pipe.recv()  # "join": every generator begins at once
        generator.join_all()
        pipe.send(("joined", generator.result.connect_s))
        while True:
            # between phases: keep reading, until the parent says what comes
            while not pipe.poll():
                generator.listen_until(time.monotonic() + 0.05)
            command, *args = pipe.recv()
            if command == "stop":
                break
            generator.result.latencies = type(generator.result.latencies)("d")
            before = generator.result.deliveries
            lost_before = generator.result.disconnects
            if command == "fanout":
                at, expected, deadline = args
                generator.fanout_seen, generator.fanout_target = 0, expected
                generator.listen_until(at)
                if index == 0:
                    generator._send_chat(generator.clients[0], time.monotonic_ns())
                    generator._flush(generator.clients[0])
                generator.listen_until(
                    deadline, lambda expected=expected: generator.fanout_seen >= expected)
                generator.fanout_target = 0
            elif command == "steady":
                at, rate, duration, until = args
                generator.listen_until(at)
                if index == 0 and rate:
                    generator.s.rate, generator.s.duration = rate / SENDERS, duration
                    generator.s.drain = 0.0
                    sent_before = generator.result.sent
                    generator._load_phase()
                    pipe_sent = generator.result.sent - sent_before
                else:
                    pipe_sent = 0
                generator.listen_until(until)
            else:
                raise RuntimeError(f"unknown phase {command}")
            pipe.send(("done", {
                "deliveries": generator.result.deliveries - before,
                "disconnects": generator.result.disconnects - lost_before,
                "members": len(generator.by_fd),
                "sent": pipe_sent if command == "steady" else int(index == 0),
                "latencies": _sample(generator.result.latencies)}))
    except Exception as exc:  # told to the parent, which stops the run
        pipe.send(("failed", repr(exc)))
    finally:
        for client in generator.clients:
            client.sock.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    """The processes of one run and what was measured of them."""

    def __init__(self, args, log) -> None:
        self.args, self.log = args, log
        self.members, self.nodes = args.members, args.nodes
        self.generators = args.generators
        self.pipes: list = []
        self.children: list = []

    def __call__(self) -> dict:
        with ExitStack() as stack:
            redis = stack.enter_context(RedisServer())
            per_node = -(-self.members // self.nodes)
            limit = str(per_node + 100)
            nodes = [stack.enter_context(Tcpchatd(
                "--broker", redis.url, "--cluster", "scale", "--node-name", f"n{i}",
                "--node-ttl", NODE_TTL, "--max-clients", limit, "--max-per-address", limit))
                for i in range(self.nodes)]
            self.servers = {"redis": ProcStats(redis.proc.pid),
                            **{f"n{i}": ProcStats(node.proc.pid)
                               for i, node in enumerate(nodes)}}
            time.sleep(2)  # every node has heard the others' heartbeats
            try:
                return self._phases(tuple(node.port for node in nodes), redis)
            finally:
                for pipe in self.pipes:
                    try:
                        pipe.send(("stop",))
                    except OSError:
                        pass
                for child in self.children:
                    child.join(30)
                    if child.is_alive():
                        child.kill()

    def _start_generators(self, ports: tuple[int, ...]) -> None:
        share = -(-self.members // self.generators)
        context = multiprocessing.get_context("fork")
        for index in range(self.generators):
            count = min(share, self.members - share * index)
            settings = Settings(port=ports[0], ports=ports, clients=count,
                                senders=SENDERS if index == 0 else 0, rate=1.0,
                                name_prefix=f"g{index}x", join_deadline=JOIN_DEADLINE)
            parent, child = context.Pipe()
            process = context.Process(target=_generator, args=(index, settings, child),
                                      daemon=True)
            process.start()
            self.pipes.append(parent)
            self.children.append(process)

    def _gather(self, what: str) -> list:
        replies = []
        for pipe in self.pipes:
            kind, payload = pipe.recv()
            if kind == "failed":
                raise RuntimeError(f"a generator failed during {what}: {payload}")
            replies.append(payload)
        return replies

    def _usage(self) -> dict:
        out = {}
        for name, stats in self.servers.items():
            status = stats.status()
            out[name] = {"cpu_s": round(stats.cpu_seconds() - stats.cpu_start, 2),
                         "rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                         "peak_rss_mib": round(int(status["VmHWM"].split()[0]) / 1024, 1)}
            stats.reset_cpu()
        generators = [ProcStats(child.pid) for child in self.children]
        out["generators_rss_mib"] = round(sum(
            int(g.status()["VmRSS"].split()[0]) for g in generators) / 1024, 1)
        return out

    def _phases(self, ports: tuple[int, ...], redis: RedisServer) -> dict:
        self._start_generators(ports)
        started = time.monotonic()
        for pipe in self.pipes:
            pipe.send(("join",))
        joined = self._gather("the joins")
        result = {"members": self.members, "nodes": self.nodes,
                  "generators": self.generators,
                  "join_s": round(time.monotonic() - started, 1),
                  "join_s_per_generator": [round(s, 1) for s in joined],
                  "after_join": self._usage(), "redis_used_memory_mib": None}
        self.log(f"joined: {result['join_s']} s")
        # one message to everyone
        at = time.monotonic() + 1.0
        for index, pipe in enumerate(self.pipes):
            share = -(-self.members // self.generators)
            count = min(share, self.members - share * index) - (1 if index == 0 else 0)
            pipe.send(("fanout", at, count, at + 60))
        replies = self._gather("the fan-out")
        latencies = [lat for reply in replies for lat in reply["latencies"]]
        result["fanout"] = {
            "delivered": sum(r["deliveries"] for r in replies),
            "delivered_per_generator": [r["deliveries"] for r in replies],
            "members_per_generator": [r["members"] for r in replies],
            "p50_ms": round(_percentile(latencies, 0.5), 1),
            "p99_ms": round(_percentile(latencies, 0.99), 1),
            "last_ms": round(max(latencies) if latencies else 0, 1),
            "usage": self._usage()}
        self.log(f"fan-out: {result['fanout']}")
        result["steady"] = []
        for rate in self.args.rates:
            at = time.monotonic() + 1.0
            until = at + self.args.duration + self.args.drain
            for pipe in self.pipes:
                pipe.send(("steady", at, rate, self.args.duration, until))
            replies = self._gather(f"the steady {rate} msg/s")
            latencies = [lat for reply in replies for lat in reply["latencies"]]
            sent = sum(r["sent"] for r in replies)
            members = sum(r["members"] for r in replies)
            delivered = sum(r["deliveries"] for r in replies)
            phase = {"rate": rate, "sent": sent, "members": members,
                     "delivered": delivered,
                     "expected": sent * (members - 1),
                     "p50_ms": round(_percentile(latencies, 0.5), 1),
                     "p99_ms": round(_percentile(latencies, 0.99), 1),
                     "disconnects": sum(r["disconnects"] for r in replies),
                     "usage": self._usage()}
            result["steady"].append(phase)
            self.log(f"steady {rate}: {phase}")
        result["redis_used_memory_mib"] = _redis_memory(redis)
        return result


def _redis_memory(redis: RedisServer) -> float | None:
    try:
        import redis as redis_client
    except ImportError:
        return None
    info = redis_client.Redis.from_url(redis.url).info("memory")
    return round(info["used_memory"] / 2**20, 1)


def members_run(args, log) -> dict:
    return Run(args, log)()


def members_text(row: dict, command: str) -> str:
    nodes = [f"n{i}" for i in range(row["nodes"])]
    after = row["after_join"]
    node_rss = median(after[n]["rss_mib"] for n in nodes)
    per_member_kib = round(node_rss * 1024 * row["nodes"] / row["members"], 1)
    lines = [f"## {row['members']:,} members across nodes", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `{command}`: one redis-server, "
             f"{row['nodes']} tcpchatd nodes (each under the 20,000-descriptor limit), "
             f"{row['generators']} generator processes, every member in one room and "
             "confirming what it reads; all of it on this machine's 2 cores.", "",
             f"- Joined: {row['members']:,} members in {row['join_s']} s (generators "
             f"{', '.join(str(s) for s in row['join_s_per_generator'])} s).",
             f"- Memory once joined: nodes {', '.join(str(after[n]['rss_mib']) for n in nodes)}"
             f" MiB RSS (median {node_rss}, {per_member_kib} KiB a member); Redis "
             f"{after['redis']['rss_mib']} MiB RSS"
             f" ({row['redis_used_memory_mib']} MiB used at the end); the generators "
             f"{after['generators_rss_mib']} MiB together.",
             f"- CPU to join: nodes {', '.join(str(after[n]['cpu_s']) for n in nodes)} s, "
             f"Redis {after['redis']['cpu_s']} s."]
    fan = row["fanout"]
    lines.append(f"- One message to all: delivered {fan['delivered']:,} of "
                 f"{row['members'] - 1:,}; p50 {fan['p50_ms']} ms, p99 {fan['p99_ms']} ms, "
                 f"the last {fan['last_ms']} ms after it was sent; Redis CPU "
                 f"{fan['usage']['redis']['cpu_s']} s, nodes "
                 f"{round(sum(fan['usage'][n]['cpu_s'] for n in nodes), 2)} s together.")
    lines += ["", "| messages/s in the room | deliveries/s asked | sent | delivered of expected "
              "| p50 ms | p99 ms | members disconnected | nodes' CPU s | Redis CPU s | "
              "peak node RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for phase in row["steady"]:
        usage = phase["usage"]
        share = phase["delivered"] / phase["expected"] if phase["expected"] else 0
        lines.append(
            f"| {phase['rate']:g} | {round(phase['rate'] * (phase['members'] - 1)):,} | "
            f"{phase['sent']} | {phase['delivered']:,} of "
            f"{phase['expected']:,} ({share:.0%}) | "
            f"{phase['p50_ms']} | {phase['p99_ms']} | {phase['disconnects']:,} | "
            f"{round(sum(usage[n]['cpu_s'] for n in nodes), 1)} | "
            f"{usage['redis']['cpu_s']} | {max(usage[n]['peak_rss_mib'] for n in nodes)} |")
    return "\n".join(lines) + "\n"
