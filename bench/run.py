"""`python -m bench`: one measurement, or the whole comparison written to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from .cluster import cluster_comparison, cluster_text
from .independent import independent_comparison, independent_text
from .scale import members_text, members_run
from .history import history_comparison, history_text
from .logins import logins_comparison, logins_text
from .loadgen import CONNECTS_IN_FLIGHT, IRC_SERVER_MASK, LoadGenerator, Settings
from .servers import SERVER_CPUS, GroupStats, Ngircd, Tcpchatd, raise_fd_limit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def percentile(values, q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(server_kind: str, settings: Settings, server_args=()) -> dict:
    """Start a server, run the generator against it, stop it; one result dict."""
    server = Ngircd() if server_kind == "ngircd" else Tcpchatd(
        *server_args, tls=settings.tls, web=settings.web, irc=settings.irc_door)
    with server:
        settings.port = server.tls_port if settings.tls else \
            server.web_port if settings.web else \
            server.irc_port if settings.irc_door else server.port
        settings.cafile = getattr(server, "cafile", None)
        return measure_running(server_kind, settings, [server])


def measure_running(server_kind: str, settings: Settings, servers: list) -> dict:
    """Run the generator against servers already started; their CPU summed (a cluster's
    nodes and its Redis), their memory and threads summed too."""
    stats = GroupStats([server.stats() for server in servers])
    own_start = [0.0]  # the generator's own CPU from the same start: it shares the cores

    def on_tick(what: str) -> None:
        if what == "start":
            stats.reset_cpu()
            own_start[0] = time.process_time()
        else:
            stats.sample()
    generator = LoadGenerator(settings, on_tick=on_tick)
    result = generator.run()
    generator_cpu_s = time.process_time() - own_start[0]
    stats.sample()
    proc = stats.report()
    alive = all(server.proc.poll() is None for server in servers)
    elapsed = getattr(generator, "elapsed", None)
    recipients = settings.members() - 1
    lat = result.latencies
    out = {
        "server": server_kind, "clients": settings.clients, "senders": settings.senders,
        "rooms": settings.rooms, "rooms_per_client": settings.rooms_per_client,
        "window": settings.window, "rate": settings.rate,
        "confirms": settings.confirms and not settings.irc,
        "connect_join_s": round(result.connect_s, 3),
        "messages": result.sent, "deliveries": result.deliveries, "receipts": result.receipts,
        "missing": result.sent * recipients - result.deliveries,
        "undelivered": result.undelivered, "errors": result.errors,
        "disconnects": result.disconnects,
        "server_alive": alive, **proc, "generator_cpu_s": round(generator_cpu_s, 3),
    }
    if settings.fanout:
        out["fanout_s"] = round(result.fanout_s, 3)
        return out
    out.update({
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(result.deliveries / elapsed),
        "messages_per_s": round(result.sent / elapsed),
        "receipts_per_s": round(result.receipts / elapsed),
        "latency_p50_ms": round(percentile(lat, 0.50) or 0, 2),
        "latency_p99_ms": round(percentile(lat, 0.99) or 0, 2),
        "latency_max_ms": round(max(lat) if lat else 0, 2),
        "cpu_us_per_delivery": round(proc["server_cpu_s"] * 1e6 / max(1, result.deliveries), 2),
    })
    return out


def table(rows: list[dict]) -> str:
    cols = [("server", "server"), ("clients", "N"), ("senders", "S"), ("confirms", "confirms"),
            ("rate", "rate/s"), ("deliveries_per_s", "deliveries/s"),
            ("cpu_us_per_delivery", "CPU µs/delivery"), ("latency_p50_ms", "p50 ms"),
            ("latency_p99_ms", "p99 ms"), ("missing", "missing"), ("errors", "errors"),
            ("server_peak_rss_mib", "peak RSS MiB"), ("server_threads", "threads")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c[0], "")) for c in cols) + " |")
    return "\n".join(lines)


def median_of(runs: list[dict]) -> dict:
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = round(statistics.median(r[key] for r in runs), 3)
    merged["missing"] = max(r["missing"] for r in runs)
    merged["errors"] = max(r["errors"] for r in runs)
    merged["disconnects"] = max(r["disconnects"] for r in runs)
    merged["server_alive"] = all(r["server_alive"] for r in runs)
    if "fanout_s" in merged:  # its spread between runs is wide: keep every run's
        merged["fanout_s_runs"] = sorted(r["fanout_s"] for r in runs)
    return merged


IO2 = ("--io-threads", "2")  # the engine with two loops, beside the default one


def receipts_for(kind: str) -> bool:
    """tcpchatd's rows confirm every delivery, except the no-confirm ones; IRC has none."""
    return kind.startswith("tcpchatd") and not kind.endswith("no-confirm")


def compare(settings_for, kinds, repeats: int, log,
            runs: dict[str, list] | None = None) -> dict[str, dict]:
    """Alternate the servers A B, B A, A B ..., `repeats` times each (the order turned
    round every other time: a machine that slows or speeds up over a run favours none);
    medians (every run's result in `runs`, if given)."""
    runs = {} if runs is None else runs
    runs.update({k: [] for k, _ in kinds})
    for repeat in range(repeats):
        for kind, extra in (kinds if repeat % 2 == 0 else kinds[::-1]):
            result = measure(kind.split("/")[0], settings_for(kind), extra)
            result["server"] = kind
            log(json.dumps(result))
            runs[kind].append(result)
    return {kind: median_of(r) for kind, r in runs.items()}


def tls_comparison(args, log) -> dict:
    """Plaintext and TLS side by side, each measured in this one run: CPU per delivery at
    saturation (N=200, S=20, receipts), p99 at 20 × 20 msg/s, and at N = scale clients the
    joins (handshakes per second) and RSS."""
    def closed(kind):
        return Settings(port=0, clients=200, senders=20, window=args.window,
                        duration=args.duration, tls="tls" in kind)
    kinds = [("tcpchatd", ()), ("tcpchatd/tls", ()), ("tcpchatd/tls-io2", IO2)]
    rows = list(compare(closed, kinds, args.repeats, log).values())
    fixed = compare(lambda kind: Settings(port=0, clients=200, senders=20, rate=20,
                                          duration=args.duration, tls="tls" in kind),
                    kinds[:2], args.repeats, log)
    rows += list(fixed.values())
    scale = {}
    try:
        scale = compare(lambda kind: Settings(
            port=0, clients=args.scale_clients, senders=1, fanout=True, duration=0,
            tls="tls" in kind), [("tcpchatd", ()), ("tcpchatd/tls", ())], 1, log)
    except RuntimeError as exc:
        scale = {"failed": f"{args.scale_clients} TLS clients: {exc}"}
    return {"rows": rows, "scale": scale}


def tls_text(tls: dict) -> str:
    lines = ["## TLS", "", measured("python -m bench tls") + " "
             "Plaintext beside TLS (TLS 1.3, a P-256 certificate, every client verifying it),",
             "each pair measured in one run; `tls-io2`: TLS with `io_threads = 2`.", "",
             table(tls["rows"]), ""]
    scale = tls["scale"]
    if "failed" in scale:
        lines.append(f"Scale: FAILED in this run: {scale['failed']}.")
    else:
        lines += ["| server | N | connect + TLS handshake + join s | handshakes (joins) per s "
                  "| one message to all s | peak RSS MiB |", "|---|---|---|---|---|---|"]
        for kind, row in scale.items():
            lines.append(f"| {kind} | {row['clients']} | {row['connect_join_s']} | "
                         f"{row['clients'] / row['connect_join_s']:.0f} | {row['fanout_s']} | "
                         f"{row['server_peak_rss_mib']} |")
        lines += ["", "The generator connects one client at a time and its own handshake "
                  "(verifying the certificate) is in the join time; the server's share is "
                  "its CPU, not measured apart here."]
    return "\n".join(lines) + "\n"


def replace_tls_section(text: str) -> None:
    replace_section("TLS", text)


def upgrade_pause(clients: int, log) -> dict:
    """N clients joined, one sender at 20 msg/s, everyone confirming; `tcpchatctl upgrade`
    half a second into the sending. The longest delivery delay is the longest silence a
    client saw; the daemon reports its own pause (hand-over to serving again)."""
    server = Tcpchatd("--max-clients", str(clients + 100))
    outcome = {}
    with server:  # the same 20,000 deliveries a second offered at every N
        settings = Settings(port=server.port, clients=clients, senders=1,
                            rate=20_000 / clients, duration=3.0)

        def tick(what):
            if what == "tick" and "proc" not in outcome:
                outcome["proc"] = subprocess.Popen(
                    [sys.executable, "-m", "tcpchatd.cli.ctl", "--admin-socket",
                     os.path.join(server.dir, "admin.sock"), "upgrade", "--json"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        result = LoadGenerator(settings, on_tick=tick).run()
        out, err = outcome["proc"].communicate(timeout=120)
        alive = server.proc.poll() is None
    reply = json.loads(out) if outcome["proc"].returncode == 0 else {"error": err.strip()}
    row = {"clients": clients, "messages": result.sent, "deliveries": result.deliveries,
           "missing": result.sent * (clients - 1) - result.deliveries,
           "disconnects": result.disconnects, "errors": result.errors,
           "longest_silence_ms": round(max(result.latencies) if result.latencies else 0, 1),
           "daemon_pause_ms": reply.get("pause_ms"), "carried": reply.get("clients"),
           "server_alive": alive, "error": reply.get("error")}
    log(json.dumps(row))
    return row


def upgrade_text(rows: list[dict]) -> str:
    lines = ["## Hitless upgrade", "", measured("python -m bench upgrade") + " "
             "`tcpchatctl upgrade` while N clients are joined and one sends 20,000 / N "
             "messages a second (20,000 deliveries a second at every N; everyone confirming). The longest silence is the longest delay of any "
             "delivery in the run (the generator's own share included); the daemon's pause "
             "runs from the hand-over to serving again. Targets: ≤ 250 ms at 1,000, ≤ 1.5 s "
             "at 10,000.", "",
             "| N | carried | longest silence ms | daemon's pause ms | missing | disconnects "
             "| met |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        target = 250 if row["clients"] <= 1000 else 1500
        met = (row["longest_silence_ms"] <= target and not row["missing"]
               and not row["disconnects"] and row["server_alive"] and not row["error"])
        lines.append(f"| {row['clients']} | {row['carried']} | {row['longest_silence_ms']} | "
                     f"{row['daemon_pause_ms']} | {row['missing']} | {row['disconnects']} | "
                     f"{'yes' if met else '**no**'} |")
    lines += ["", "Where the pause goes (the `upgrade` log line's `handover_ms` and `start_ms`): "
              "writing the state takes 8-10 ms at 1,000 clients (about 160 ms at 10,000); the "
              "new image's start, to its loops serving the carried clients, 100-125 ms at "
              "1,000 (about 400 ms at 10,000): some 30 ms of interpreter and site, 45 ms of "
              "imports, the rest adopting the connections and the room. The admin side and "
              "the `regex` package are imported after the loops serve. The package is "
              "byte-compiled first, as an install does (this machine sets "
              "PYTHONDONTWRITEBYTECODE: runs before that compiled every module at each "
              "start, about 35 ms more). At 10,000 one message goes out every half second, "
              "so a pause can fall between two: the daemon's pause is then the longer figure."]
    return "\n".join(lines) + "\n"


HISTORY = "History"  # older runs, newest first: each section holds one current run


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(what comes before the first `## `, [(title, the section's text with its heading)])."""
    head, *parts = text.split("\n## ")
    return head, [(part.split("\n", 1)[0].strip(), "## " + part) for part in parts]


def to_history(sections: list[tuple[str, str]], title: str, old: str) -> list[tuple[str, str]]:
    """Move a replaced section's text into History (its heading one level down)."""
    moved = old.replace("## ", "### ", 1).replace("\n### ", "\n#### ").rstrip("\n")
    heading, _, body = moved.partition("\n")
    date = re.search(r"Measured (?:by `[^`]*` on\s+)?(\d{4}-\d\d-\d\d)", body)
    moved = f"{heading}, {date.group(1) if date else 'an earlier run'}\n{body}"
    history = dict(sections).get(HISTORY, f"## {HISTORY}\n\nOlder runs, newest first.\n")
    first, _, rest = history.partition("\n\n")
    intro, _, older = rest.partition("\n### ")
    history = f"{first}\n\n{intro.rstrip()}\n\n{moved.rstrip()}\n" + (
        f"\n### {older}" if older else "")
    kept = [(t, body) for t, body in sections if t != HISTORY]
    return kept + [(HISTORY, history.rstrip("\n") + "\n")]


def join_sections(head: str, sections: list[tuple[str, str]]) -> str:
    return head.rstrip("\n") + "\n\n" + "\n".join(
        body.rstrip("\n") + "\n" for _, body in sections)


def replace_section(title: str, text: str) -> None:
    """Put a section into BENCHMARKS.md where an older one was (that one goes to History),
    else before the targets."""
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path) as fh:
        head, sections = split_sections(fh.read())
    old = dict(sections).get(title)
    if old is not None:
        sections = to_history(sections, title, old)
        sections = [(t, text if t == title else body) for t, body in sections]
    else:
        at = next((i for i, (t, _) in enumerate(sections) if t.startswith("Targets")),
                  len(sections))
        sections.insert(at, (title, text))
    with open(path, "w") as fh:
        fh.write(join_sections(head, sections))


def pin(args) -> None:
    """`--pin`: the generator on the first of this process's CPUs, the servers on the
    others (servers.SERVER_CPUS), so that neither slows the other by sharing a core."""
    if not getattr(args, "pin", False):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs at least")
    SERVER_CPUS.clear()
    SERVER_CPUS.update(cpus[1:])
    os.sched_setaffinity(0, {cpus[0]})


def rooms_comparison(args, log) -> dict:
    """Issue 25's two measures: the CPU per delivery of a client in 5 rooms of 200 beside
    one room of 200 (with receipts, alternated, medians); the time 10,000 clients take to
    join one room, and to join 100 rooms (each its own, leaving the default room)."""
    def cpu(kind: str) -> Settings:  # in those rooms alone (the default room parted)
        rooms = 5 if "5-rooms" in kind else 0
        return Settings(port=0, clients=200, senders=20, window=args.window,
                        duration=args.duration, rooms=rooms, rooms_per_client=rooms,
                        leave_default=rooms > 0, rate=args.rate if "rate" in kind else 0.0)
    # As fast as the generator goes (closed loop), and at one offered load for both
    # (fixed rate): in the closed loop the one-process generator sets the pace, and the
    # daemon's CPU per delivery moves with it; at a fixed rate both do the same work.
    runs: dict[str, list] = {}
    per_delivery = compare(cpu, [("tcpchatd/1-room", ()), ("tcpchatd/5-rooms", ()),
                                 ("tcpchatd/1-room-rate", ()), ("tcpchatd/5-rooms-rate", ())],
                           args.repeats, log, runs)
    joins: dict[str, list[float]] = {"one room": [], "100 rooms": [],
                                     "100 rooms, join and part": []}
    for _ in range(args.repeats):
        for kind in joins:
            spread = kind != "one room"
            result = measure("tcpchatd", Settings(
                port=0, clients=args.scale_clients, senders=1, window=1, duration=1.0,
                rooms=100 if spread else 0, leave_default=kind.endswith("part"),
                hello_room=kind == "100 rooms"),
                ("--max-clients", str(args.scale_clients + 10)))
            log(json.dumps({"joins": kind, **result}))
            joins[kind].append(result["connect_join_s"])
    return {"per_delivery": per_delivery, "joins": joins, "clients": args.scale_clients,
            "repeats": args.repeats, "duration": args.duration, "rate": args.rate,
            "pin": args.pin,
            "cpu_runs": {kind: [r["cpu_us_per_delivery"] for r in results]
                         for kind, results in runs.items()}}


def rooms_text(found: dict) -> str:
    cpu, runs = found["per_delivery"], found["cpu_runs"]
    rate = found["rate"]
    names = {"tcpchatd/1-room": "200 clients, one room",
             "tcpchatd/5-rooms": "200 clients, each in 5 rooms of 200",
             "tcpchatd/1-room-rate": f"one room, {rate:g} msg/s per sender",
             "tcpchatd/5-rooms-rate": f"5 rooms of 200, {rate:g} msg/s per sender"}
    rows = [f"| {name} | {cpu[kind]['deliveries_per_s']} | {cpu[kind]['cpu_us_per_delivery']} "
            f"({' / '.join(str(v) for v in runs[kind])}) | {cpu[kind]['latency_p50_ms']} | "
            f"{cpu[kind]['latency_p99_ms']} | {cpu[kind]['missing']} |"
            for kind, name in names.items()]
    joins = found["joins"]

    def more(kind: str) -> float:  # the 5-room run's CPU per delivery beside one room's
        return cpu[f"tcpchatd/5-{kind}"]["cpu_us_per_delivery"] \
            / cpu[f"tcpchatd/1-{kind.replace('rooms', 'room')}"]["cpu_us_per_delivery"] - 1
    more_time = statistics.median(joins["100 rooms"]) / statistics.median(joins["one room"]) - 1
    paired = sum(f > o for o, f in zip(runs["tcpchatd/1-room"], runs["tcpchatd/5-rooms"],
                                       strict=True))

    def verdict(more: float, what: str) -> str:  # the target is "no more": nothing allowed
        return f"no more {what}(target met)" if more <= 0 else \
            f"{more:.1%} MORE {what}(target missed)" if more < 0.01 else \
            f"{more:.0%} MORE {what}(target missed)"
    return "\n".join([
        "## Rooms", "",
        measured(f"python -m bench rooms --repeats {found['repeats']} --duration "
                 f"{found['duration']:g} --rate {rate:g}" + (" --pin" if found["pin"] else ""))
        + " Alternated, medians of "
        f"{found['repeats']} (every run's CPU in brackets); with receipts; each sender "
        "sends to its rooms in turn." + (" The generator runs on one core, the daemon on "
                                         "the other (`--pin`)." if found["pin"] else "")
        + " The first two rows go as fast as the one-process generator allows (a closed "
        "loop, window 20); the last two offer the same load "
        f"to both ({rate:g} messages a second from each of 20 senders).", "",
        "| run | deliveries/s | CPU µs/delivery | p50 ms | p99 ms | missing |",
        "|---|---|---|---|---|---|", *rows, "",
        f"A client in 5 rooms of 200 costs {cpu['tcpchatd/5-rooms']['cpu_us_per_delivery']} "
        f"µs of the daemon's CPU per delivery in the closed loop against "
        f"{cpu['tcpchatd/1-room']['cpu_us_per_delivery']} in one room of 200: "
        f"{verdict(more('rooms'), '')} (more in {paired} of {found['repeats']} alternated "
        f"pairs); at the same offered load {verdict(more('rooms-rate'), '')}. Each room "
        "has a broadcast log of its own; a loop sends only to the connections of the rooms "
        "that have news.", "",
        f"{found['clients']:,} clients joining, seconds (connect, then the nickname): into "
        "one room " + " / ".join(f"{s:.2f}" for s in joins["one room"])
        + "; into 100 rooms, each client straight into its own (its hello names the room) "
        + " / ".join(f"{s:.2f}" for s in joins["100 rooms"])
        + f" (medians): {verdict(more_time, 'time ')}. "
        "In one room of 10,000 a join past announce_joins_max (1,000) is announced to "
        "nobody and its names frame lists 1,000 nicknames; in a room of 100 every join is "
        "announced to the room and its names list is whole. A client that first lands in "
        "the default room, then joins its room and parts the default room, takes three "
        "steps: " + " / ".join(f"{s:.2f}" for s in joins["100 rooms, join and part"]) + ".",
    ]) + "\n"


def web_comparison(args, log) -> dict:
    """Issue 28's two measures: CPU per delivery of WebSocket members beside TCP members
    (200 clients, 20 senders, receipts; alternated, medians); the memory of 10,000 of each
    joined (RSS, and per member above a daemon with 10 members)."""
    per_delivery = compare(lambda kind: Settings(
        port=0, clients=200, senders=20, window=args.window, duration=args.duration,
        rate=args.rate if "rate" in kind else 0.0, web="web" in kind),
        [("tcpchatd/tcp-rate", ()), ("tcpchatd/web-rate", ()), ("tcpchatd/tcp", ()),
         ("tcpchatd/web", ())], args.repeats, log)
    memory: dict[str, list[dict]] = {"tcp": [], "web": []}
    for _ in range(args.repeats):
        for kind in memory:
            found = {}
            for clients in (10, args.scale_clients):
                result = measure("tcpchatd", Settings(
                    port=0, clients=clients, senders=1, window=1, duration=1.0,
                    web=kind == "web"), ("--max-clients", str(args.scale_clients + 10)))
                log(json.dumps({"memory": kind, **result}))
                found[clients] = result
            memory[kind].append({
                "rss_mib": found[args.scale_clients]["server_rss_mib"],
                "join_s": found[args.scale_clients]["connect_join_s"],
                "kib_per_member": round((found[args.scale_clients]["server_rss_mib"]
                                         - found[10]["server_rss_mib"]) * 1024
                                        / (args.scale_clients - 10), 2)})
    return {"per_delivery": per_delivery, "memory": memory, "clients": args.scale_clients,
            "repeats": args.repeats, "duration": args.duration, "rate": args.rate}


def web_text(found: dict) -> str:
    runs = found["per_delivery"]
    tcp, web = runs["tcpchatd/tcp-rate"], runs["tcpchatd/web-rate"]
    rate = f"20 senders × {found['rate']:g} msg/s"
    rows = [f"| {kind} | {r['deliveries_per_s']} | {r['cpu_us_per_delivery']} | "
            f"{r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['missing']} |"
            for kind, r in ((f"200 TCP members, {rate}", tcp),
                            (f"200 WebSocket members, {rate}", web),
                            ("200 TCP members, as fast as receipts allow", runs["tcpchatd/tcp"]),
                            ("200 WebSocket members, as fast as receipts allow",
                             runs["tcpchatd/web"]))]
    cpu_ratio = web["cpu_us_per_delivery"] / tcp["cpu_us_per_delivery"]
    saturated = runs["tcpchatd/web"]["cpu_us_per_delivery"] / \
        runs["tcpchatd/tcp"]["cpu_us_per_delivery"]

    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in found["memory"][kind])
    memory_rows = [f"| {found['clients']:,} {label} members | {median(kind, 'rss_mib')} | "
                   f"{median(kind, 'kib_per_member')} | {median(kind, 'join_s'):.2f} |"
                   for kind, label in (("tcp", "TCP"), ("web", "WebSocket"))]
    memory_ratio = median("web", "kib_per_member") / median("tcp", "kib_per_member")
    return "\n".join([
        "## The browser (WebSocket members)", "",
        measured(f"python -m bench web --repeats {found['repeats']} --duration "
                 f"{found['duration']:g}") + " Alternated, medians of "
        f"{found['repeats']}; with receipts. The generator's WebSocket clients do the "
        "upgrade, mask their frames and read one text message per chat frame, as the "
        "page does.", "",
        "| run | deliveries/s | CPU µs/delivery | p50 ms | p99 ms | missing |",
        "|---|---|---|---|---|---|", *rows, "",
        f"At the same load ({rate}), a WebSocket member costs {cpu_ratio:.2f}× the CPU "
        f"per delivery of a TCP member (target ≤ 1.5×: "
        f"{'met' if cpu_ratio <= 1.5 else 'MISSED'}). As fast as receipts allow, "
        f"{saturated:.2f}×: there the generator's own WebSocket decoding (Python, on the "
        "same two cores) lowers the rate, so each of the daemon's rounds carries fewer "
        "messages and its fixed cost per round and member is shared by fewer deliveries; "
        "the same happens to TCP members at a lower rate. The daemon makes each "
        "broadcast's WebSocket message once per loop (a server's frames are not masked) "
        "and the page confirms what arrived together in one frame (the `confirms` "
        "feature): a frame per confirm cost 19 µs per delivery, wsproto's decoding of each "
        "small frame.", "",
        "| members joined | daemon RSS MiB | KiB per member (above 10 members) | join s |",
        "|---|---|---|---|", *memory_rows, "",
        f"A WebSocket member takes {memory_ratio:.2f}× the memory of a TCP member (target "
        f"≤ 1.5×: {'met' if memory_ratio <= 1.5 else 'MISSED'}): wsproto's connection "
        "(about 1.8 KiB, its event deque alone 0.75 KiB) and the transport around it "
        "(0.2 KiB with `__slots__`), beside the session both have; the loop's cache of "
        "WebSocket messages keeps only frames of at most 1 KiB (a room's chat, not a "
        "joiner's names list), 1,024 at most.",
    ]) + "\n"


def irc_comparison(args, log) -> dict:
    """Issue 29's measure: CPU per delivery of 200 IRC members in tcpchatd's room, beside
    200 native members (with receipts, and without) and beside ngircd's 200, in one run
    (alternated, medians)."""
    def settings_for(kind: str) -> Settings:
        return Settings(port=0, clients=200, senders=20, window=args.window,
                        duration=args.duration, confirms=kind == "tcpchatd/native",
                        irc=kind in ("tcpchatd/irc", "ngircd"),
                        irc_door=kind == "tcpchatd/irc")
    kinds = [("tcpchatd/native", ()), ("tcpchatd/native-no-confirm", ()),
             ("tcpchatd/irc", ()), ("ngircd", ())]
    return {"per_delivery": compare(settings_for, kinds, args.repeats, log),
            "repeats": args.repeats, "duration": args.duration}


def irc_text(found: dict) -> str:
    runs = found["per_delivery"]
    labels = {"tcpchatd/native": "200 native members, with receipts",
              "tcpchatd/native-no-confirm": "200 native members, no confirms",
              "tcpchatd/irc": "200 IRC members (tcpchatd confirms for them)",
              "ngircd": "ngircd, 200 IRC users"}
    rows = [f"| {labels[kind]} | {r['deliveries_per_s']} | {r['cpu_us_per_delivery']} | "
            f"{r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['missing']} |"
            for kind, r in runs.items()]
    irc, native = runs["tcpchatd/irc"], runs["tcpchatd/native"]
    ngircd = runs["ngircd"]
    return "\n".join([
        "## IRC members", "",
        measured(f"python -m bench irc --repeats {found['repeats']} --duration "
                 f"{found['duration']:g}") + " Alternated, medians of "
        f"{found['repeats']}; 20 senders in one room of 200, each sending as fast as its "
        "window of 20 allows (receipts open it for native members; for IRC, what one "
        "observer has received, as for ngircd).", "",
        "| run | deliveries/s | CPU µs/delivery | p50 ms | p99 ms | missing |",
        "|---|---|---|---|---|---|", *rows, "",
        f"An IRC member costs {irc['cpu_us_per_delivery']} µs of tcpchatd's CPU per "
        f"delivery, {irc['cpu_us_per_delivery'] / native['cpu_us_per_delivery']:.2f}× a "
        f"native member's ({native['cpu_us_per_delivery']} µs) and "
        f"{irc['cpu_us_per_delivery'] / ngircd['cpu_us_per_delivery']:.1f}× ngircd's "
        f"({ngircd['cpu_us_per_delivery']} µs). A room's message becomes IRC lines once per "
        "loop for every IRC member with the same `server-time`; what an IRC member still "
        "adds is the frames of its chunk split and looked up one by one, and the confirm "
        "the daemon makes for it, which takes the path a native client's confirm takes. "
        "No target is set for it (issue 29 asks for the measure).",
    ]) + "\n"


def measured(command: str) -> str:
    return f"Measured {time.strftime('%Y-%m-%d')} by `{command}`."


def full_run(args) -> int:
    raise_fd_limit()
    log_path = os.path.join(HERE, "results.jsonl")
    log_file = open(log_path, "w")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    rows = []
    kinds = [("tcpchatd", ()), ("tcpchatd/io2", IO2), ("tcpchatd/no-confirm", ()),
             ("ngircd", ())]
    for clients, senders in ((10, 1), (50, 5), (200, 20)):
        def settings_for(kind, clients=clients, senders=senders):
            return Settings(port=0, clients=clients, senders=senders, window=args.window,
                            duration=args.duration, confirms=receipts_for(kind),
                            irc=(kind == "ngircd"))
        medians = compare(settings_for, kinds, args.repeats, log)
        rows += list(medians.values())
    # latency at a fixed offered load: the 20 senders x 20 messages/s, and a tenth
    # of it; ngircd beside, on the same generator, shows what the generator itself adds
    for rate in (20, 2):
        fixed = compare(lambda kind, rate=rate: Settings(
            port=0, clients=200, senders=20, rate=rate, duration=args.duration,
            confirms=receipts_for(kind), irc=(kind == "ngircd")), kinds, args.repeats, log)
        rows += list(fixed.values())
    # N = 10,000: connect and join, then one message to everyone. ngircd's users register
    # without joining a channel (the JOIN broadcasts would be O(N^2)) and get the message
    # by server mask, as an IRC operator can send it.
    try:
        scale = compare(lambda kind: Settings(
            port=0, clients=args.scale_clients, senders=1, fanout=True, duration=0,
            irc=(kind == "ngircd"), irc_mask=(kind == "ngircd")),
            [("tcpchatd", ()), ("ngircd", ())], args.repeats, log)
    except RuntimeError as exc:
        scale = {"failed": f"{args.scale_clients} clients: {exc}"}
    # 15,000: beyond max_clients' default, raised for it; one run (it takes a while)
    try:
        larger = compare(lambda kind: Settings(
            port=0, clients=args.larger_clients, senders=1, fanout=True, duration=0),
            [("tcpchatd", ("--max-clients", str(args.larger_clients + 100)))], 1, log)
        if "failed" not in scale:
            scale[f"tcpchatd ({args.larger_clients})"] = larger["tcpchatd"]
    except RuntimeError as exc:
        scale.setdefault("failed", f"{args.larger_clients} clients: {exc}")
    tls = tls_comparison(args, log)
    pauses = [upgrade_pause(n, log) for n in (1000, args.scale_clients)]
    write_report(rows, scale, args)
    replace_tls_section(tls_text(tls))
    replace_section("Hitless upgrade", upgrade_text(pauses))
    return 0


def write_report(rows, scale, args) -> None:
    plot = os.path.join(HERE, "benchmarks.png")
    try:
        make_plot(rows, plot)
        plot_line = "![deliveries/s and p99 latency against N](bench/benchmarks.png)"
    except ImportError:
        plot_line = "(matplotlib not installed: `pip install .[bench]` for the plot)"
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    text = f"""# Benchmarks

{INTRO}

Measured by `{' '.join(['python', '-m', 'bench', 'run'] + sys.argv[2:])}` on
{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores ({cpu}), Linux {platform.release()},
Python {platform.python_version()}, tcpchatd and ngircd on loopback, the load generator
(bench/loadgen.py, one process, selectors) sharing the same cores. Window {args.window}
unconfirmed messages per sender, {args.duration} s of sending per run, servers
alternated (A B, then B A), medians of {args.repeats}. tcpchatd runs with `flood_rate = 0` and its
traffic log written (to /dev/null). `no-confirm`: recipients do not confirm; senders are
paced by what one observer client has received, exactly as for ngircd (IRC has no receipts).
`io2`: with receipts, `io_threads = 2` (two event loops) instead of the default one.

{table(rows)}

{scale_text(scale)}

At N = {args.scale_clients}: every client connects and joins (tcpchatd: its join notice
arrives; ngircd: it is registered), at most {CONNECTS_IN_FLIGHT} connecting at a time
(ngircd listens with a backlog of 10), then one client sends one message and the clock
stops when all the others have read it (they confirm it as they read, on tcpchatd).
ngircd's users do not join a channel: every JOIN is broadcast to every member, about 50
million JOIN lines for 10,000 users; an operator's PRIVMSG to the server mask
(`{IRC_SERVER_MASK}`) reaches them all instead. tcpchatd stops broadcasting joins above
`announce_joins_max` (1,000) and stays O(N) per join. The last row: {args.larger_clients}
clients (`max_clients` raised for it), one run.

## Targets (N=200, S=20 unless said)

{targets(rows, scale)}

{LIMITS}

{plot_line}

Raw results of every run: bench/results.jsonl.
"""
    path = os.path.join(ROOT, "BENCHMARKS.md")
    try:
        with open(path) as fh:
            old_head, old_sections = split_sections(fh.read())
    except FileNotFoundError:
        old_head, old_sections = "", []
    head, sections = split_sections(text)
    written = {title for title, _ in sections}
    # what this run does not measure stays (the cluster's, the history); the single node's
    # last tables go to History, with what was written of them under the old targets
    kept = [(t, body) for t, body in old_sections if t not in written]
    title = next(t for t, _ in sections if t.startswith("Targets"))
    rechecks = ""
    if title in dict(old_sections):
        merged, rechecks = merge_targets(dict(sections)[title], dict(old_sections)[title])
        sections = [(t, merged if t == title else body) for t, body in sections]
    if old_head.strip():
        old_run = old_head.split("\n", 1)[1].replace(INTRO, "").strip("\n")
        kept = to_history(kept, "Single node", f"## Single node\n\n{old_run}\n"
                          + (f"\n{rechecks}\n" if rechecks else ""))
    at = next(i for i, (t, _) in enumerate(sections) if t.startswith("Targets"))
    sections = sections[:at] + [(t, b) for t, b in kept if t != HISTORY] + sections[at:] + [
        (t, b) for t, b in kept if t == HISTORY]
    with open(path, "w") as fh:
        fh.write(join_sections(head, sections))


INTRO = """Each section holds one current run, with its date and the command that reproduces it;
older runs and rechecks are under "History" at the end, newest first (the bench moves a
section there when it writes a new one)."""


def merge_targets(new: str, old: str) -> tuple[str, str]:
    """This run's targets section with the rows of the old one that it does not measure
    kept after its own (the other sections' targets: rooms, the hot path, memory...), and,
    for History, the old rows it measured again and the old section's text after its
    table (rechecks of the run it replaces)."""
    def parts(section: str) -> tuple[list[str], list[str], list[str]]:
        lines = section.rstrip("\n").split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")),
                   len(lines))
        return lines[:start + 2], lines[start + 2:end], lines[end:]
    head, rows, after = parts(new)
    _, old_rows, old_after = parts(old)
    ours = {row.split("|")[1].strip() for row in rows}
    replaced = [row for row in old_rows if row.split("|")[1].strip() in ours]
    rows += [row for row in old_rows if row not in replaced]
    history = "\n\n".join(part for part in ("\n".join(head[-2:] + replaced) if replaced
                                              else "", "\n".join(old_after).strip("\n"))
                          if part)
    return "\n".join(head + rows + after) + "\n", history


LIMITS = """## What limits tcpchatd, and what moved it

- **The engine (issue 12).** `io_threads` event loops (selectors, epoll) own every
  connection; before, each client had a reader thread and one writer-pool thread sent for
  all. A confirm now costs a callback in the loop instead of a thread wake-up and a GIL
  hand-off, which was most of the CPU of the fixed-rate rows and of their latency; a
  client costs a Connection object and its socket instead of a thread stack, which was
  most of the RSS at 10,000. A broadcast is still appended once to the broadcast log
  under the room's lock, and each loop sends each of its connections what is new in one
  system call, caught-up connections sharing one joined chunk (net/broadcastlog.py).
- **One loop or two.** Under the GIL two loops on two cores run one at a time and hand the
  GIL back and forth (a convoy): the `io2` rows pay for it in latency and CPU, and one
  loop is the default. TLS does not change that (the `tls-io2` row): the crypto of a
  small record is short next to the GIL hand-offs around it.
- **TLS.** About twice the CPU per delivery at saturation (encrypting every send,
  decrypting every confirm). At 20 senders × 20 msg/s with receipts the TLS run keeps up
  with the offered load, at a p99 of tens of milliseconds (on 2026-12-02 it fell behind,
  p99 above a second): the server and the one-process generator, itself decrypting 80,000
  deliveries a second, share two cores. A TLS connection holds an OpenSSL object and its
  buffers, about 14 KiB more per client at 10,000. Joins over TLS are paced by the generator, which opens and verifies one
  handshake at a time.
- **Latency at a fixed load is partly the generator's.** At 20 senders × 20 messages/s the
  one-process generator reads about 80,000 deliveries/s from 200 sockets, close to a full
  core, so a message waits in the kernel until the generator's loop comes round to its
  socket: ngircd, a C event loop with no receipts, shows a p99 of tens of milliseconds on
  the same generator at that load, and a few at a tenth of it (the 2 msg/s rows). That is
  the generator's own share; only the ratio beside ngircd in one run means anything.
- **Joins at 10,000.** Every joiner gets a `names` frame of up to `announce_joins_max`
  (1,000) nicknames, about 15 KB: most of the CPU of a join in a large room, and the
  frames queued while the room fills are what the peak RSS holds beyond the connections.
- **The generator shares the two cores** with the server, so absolute rates are noisy;
  compare CPU per delivery and ratios within one run.
"""


def _find(rows, server, clients=200, rate=0.0):
    for row in rows:
        if row["server"] == server and row["clients"] == clients and row["rate"] == rate:
            return row
    return None


def targets(rows, scale) -> str:
    """The engine issue's targets, each against this run's own numbers."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(name, value, ok):
        lines.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    confirmed = _find(rows, "tcpchatd")
    plain, irc = _find(rows, "tcpchatd/no-confirm"), _find(rows, "ngircd")
    fixed, fixed_irc = _find(rows, "tcpchatd", rate=20), _find(rows, "ngircd", rate=20)
    if fixed and fixed_irc:
        ratio = fixed["latency_p99_ms"] / max(fixed_irc["latency_p99_ms"], 1e-9)
        add("p99 latency at 20 senders × 20 msg/s, with receipts, ≤ 1.25× ngircd's",
            f"{fixed['latency_p99_ms']} vs {fixed_irc['latency_p99_ms']} ms ({ratio:.2f}×)",
            ratio <= 1.25)
    if confirmed:
        add("CPU per delivery with receipts (closed loop) ≤ 2 µs",
            f"{confirmed['cpu_us_per_delivery']} µs", confirmed["cpu_us_per_delivery"] <= 2)
    if plain and irc:
        ratio = plain["cpu_us_per_delivery"] / max(irc["cpu_us_per_delivery"], 1e-9)
        add("CPU per delivery without receipts ≤ 2× ngircd's",
            f"{plain['cpu_us_per_delivery']} vs {irc['cpu_us_per_delivery']} µs "
            f"({ratio:.1f}×)", ratio <= 2)
    big, big_irc = scale.get("tcpchatd"), scale.get("ngircd")
    if big:
        if big_irc:
            add(f"{big['clients']} clients joined no slower than ngircd",
                f"{big['connect_join_s']} vs {big_irc['connect_join_s']} s",
                big["connect_join_s"] <= big_irc["connect_join_s"])
        add(f"RSS at {big['clients']} clients ≤ 150 MiB", f"{big['server_peak_rss_mib']} MiB",
            big["server_peak_rss_mib"] <= 150)
        add("one message to all of them ≤ 0.5 s", f"{big['fanout_s']} s (median; runs "
            f"{', '.join(str(v) for v in big['fanout_s_runs'])})", big["fanout_s"] <= 0.5)
    else:
        add("10,000 clients", scale.get("failed"), False)
    larger = next((row for kind, row in scale.items() if kind.startswith("tcpchatd (")), None)
    if larger:
        add(f"{larger['clients']} clients, RSS ≤ 225 MiB",
            f"{larger['server_peak_rss_mib']} MiB, {larger['missing']} missing",
            larger["server_peak_rss_mib"] <= 225 and larger["missing"] == 0)
    rows = rows + [r for r in scale.values() if isinstance(r, dict)]
    missing = sum(r["missing"] for r in rows if not r["rate"])
    missing_fixed = sum(r["missing"] for r in rows if r["rate"])
    add("zero missing deliveries (window runs)", missing, missing == 0)
    add("zero missing deliveries (fixed-rate runs, within the 5 s drain)", missing_fixed,
        missing_fixed == 0)
    deaths = sum(not r["server_alive"] for r in rows)
    add("zero server deaths, zero disconnects",
        f"{deaths} deaths, {sum(r['disconnects'] for r in rows)} disconnects",
        deaths == 0 and not any(r["disconnects"] for r in rows))
    one, two = _find(rows, "tcpchatd", rate=20), _find(rows, "tcpchatd/io2", rate=20)
    if one and two:
        better = 1 if one["latency_p99_ms"] <= two["latency_p99_ms"] else 2
        add("`io_threads` default = the better of 1 and 2 loops (p99 at 20 × 20 msg/s)",
            f"1 loop {one['latency_p99_ms']} ms, 2 loops {two['latency_p99_ms']} ms",
            better == 1)
    return "\n".join(lines)


def scale_text(scale: dict) -> str:
    if "failed" in scale:
        return f"Scale: FAILED in this run: {scale['failed']}."
    lines = ["| server | N | connect + join s | one message to all others s (each run) "
             "| missing | disconnects | peak RSS MiB | KiB per client | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, row in scale.items():
        runs = ", ".join(str(v) for v in row["fanout_s_runs"])
        lines.append(
            f"| {kind} | {row['clients']} | {row['connect_join_s']} | {row['fanout_s']} "
            f"({runs}) | {row['missing']} | {row['disconnects']} | "
            f"{row['server_peak_rss_mib']} | {row['server_peak_rss_mib'] * 1024 / row['clients']:.0f}"
            f" | {row['server_threads']} |")
    return "\n".join(lines)


def make_plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in sorted({r["server"] for r in rows if not r.get("rate")}):
        series = sorted((r["clients"], r) for r in rows if r["server"] == kind and not r["rate"])
        xs = [n for n, _ in series]
        left.plot(xs, [r["deliveries_per_s"] for _, r in series], marker="o", label=kind)
        right.plot(xs, [r["latency_p99_ms"] for _, r in series], marker="o", label=kind)
    left.set(xlabel="clients N", ylabel="deliveries/s", xscale="log", title="throughput")
    right.set(xlabel="clients N", ylabel="p99 latency ms", xscale="log", yscale="log",
              title="p99 delivery latency (window-limited)")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    commands = parser.add_subparsers(dest="cmd", required=True)
    one = commands.add_parser("one", help="one measurement, printed as a JSON line and a table")
    one.add_argument("--server", choices=["tcpchatd", "ngircd"], default="tcpchatd")
    one.add_argument("--clients", type=int, default=200)
    one.add_argument("--senders", type=int, default=20)
    one.add_argument("--window", type=int, default=20)
    one.add_argument("--duration", type=float, default=5.0)
    one.add_argument("--rate", type=float, default=0.0)
    one.add_argument("--no-confirms", action="store_true")
    one.add_argument("--fanout", action="store_true")
    one.add_argument("--tls", action="store_true", help="tcpchatd's TLS port")
    one.add_argument("--web", action="store_true", help="tcpchatd's web port: WebSocket clients")
    one.add_argument("--rooms", type=int, default=0,
                     help="tcpchatd: rooms r0..rN-1 (0: the default room alone)")
    one.add_argument("--rooms-per-client", type=int, default=1,
                     help="client i joins rooms r(i)...r(i+K-1); senders send to theirs in turn")
    one.add_argument("--leave-default", action="store_true",
                     help="each client parts the default room once in its own")
    one.add_argument("--hello-room", action="store_true",
                     help="each client goes straight into its first room (a hello frame)")
    one.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                     help="passed to tcpchatd (repeat: --server-arg=--io-threads --server-arg=1)")
    one.add_argument("--pin", action="store_true", help="the generator on one core, the "
                     "server on the other(s): neither slowed by sharing a core")
    run = commands.add_parser("run", help="the whole comparison; writes BENCHMARKS.md")
    tls = commands.add_parser("tls", help="plaintext beside TLS; rewrites BENCHMARKS.md's "
                              "TLS section")
    for comparison in (run, tls):
        comparison.add_argument("--duration", type=float, default=5.0)
        comparison.add_argument("--window", type=int, default=20)
        comparison.add_argument("--repeats", type=int, default=3)
        comparison.add_argument("--scale-clients", type=int, default=10_000)
    run.add_argument("--larger-clients", type=int, default=15_000)
    up = commands.add_parser("upgrade", help="the pause of a hitless upgrade at 1,000 and "
                             "10,000 clients; rewrites BENCHMARKS.md's section")
    up.add_argument("--clients", type=int, nargs="+", default=[1000, 10_000])
    rooms = commands.add_parser("rooms", help="a client in 5 rooms against one room, and "
                                "10,000 joins over 100 rooms against one; rewrites "
                                "BENCHMARKS.md's section")
    rooms.add_argument("--duration", type=float, default=15.0, help="seconds of each CPU "
                       "run (5 s runs of the closed loop spread by 15 %%)")
    rooms.add_argument("--window", type=int, default=20)
    rooms.add_argument("--repeats", type=int, default=3)
    rooms.add_argument("--scale-clients", type=int, default=10_000)
    rooms.add_argument("--rate", type=float, default=60.0, help="messages/s per sender of "
                       "the fixed-rate pair")
    rooms.add_argument("--pin", action="store_true", help="the generator on one core, the "
                       "daemon on the other(s): neither slowed by sharing a core")
    hist = commands.add_parser("history", help="CPU per delivery with the lasting history "
                               "on and off, its writer, searches over 1,000,000 messages; "
                               "rewrites BENCHMARKS.md's section")
    hist.add_argument("--duration", type=float, default=5.0)
    hist.add_argument("--window", type=int, default=20)
    hist.add_argument("--repeats", type=int, default=3)
    hist.add_argument("--messages", type=int, default=1_000_000)
    hist.add_argument("--searches", type=int, default=20)
    logins = commands.add_parser("logins", help="a pair's latency alone and beside 20 "
                                 "logins a second; rewrites BENCHMARKS.md's section")
    logins.add_argument("--duration", type=float, default=5.0)
    logins.add_argument("--repeats", type=int, default=3)
    logins.add_argument("--rate", type=float, default=20.0, help="the pair's messages/s")
    logins.add_argument("--login-rate", type=float, default=20.0)
    web = commands.add_parser("web", help="WebSocket members beside TCP members: CPU per "
                              "delivery and memory; rewrites BENCHMARKS.md's section")
    web.add_argument("--duration", type=float, default=5.0)
    web.add_argument("--window", type=int, default=20)
    web.add_argument("--repeats", type=int, default=3)
    web.add_argument("--scale-clients", type=int, default=10_000)
    web.add_argument("--rate", type=float, default=40.0, help="messages/s per sender for "
                     "the same-load comparison")
    irc = commands.add_parser("irc", help="IRC members beside native members and ngircd: "
                              "CPU per delivery; rewrites BENCHMARKS.md's section")
    irc.add_argument("--duration", type=float, default=5.0)
    irc.add_argument("--window", type=int, default=20)
    irc.add_argument("--repeats", type=int, default=3)
    two = commands.add_parser("cluster", help="two nodes through Redis against one node; "
                              "rewrites BENCHMARKS.md's section")
    two.add_argument("--duration", type=float, default=5.0)
    two.add_argument("--scale-clients", type=int, default=10_000)
    two.add_argument("--members", type=int, default=0,
                     help="instead: this many members across --nodes nodes, one Redis and "
                     "--generators generator processes (join, one message to all, steady "
                     "--rates); rewrites BENCHMARKS.md's section for that many")
    two.add_argument("--nodes", type=int, default=6)
    two.add_argument("--generators", type=int, default=6)
    two.add_argument("--rates", type=float, nargs="+", default=[2.0, 200.0],
                     help="messages a second in the room, one steady phase each")
    two.add_argument("--drain", type=float, default=10.0)
    alone = commands.add_parser("independent", help="p99 at 20 x 20 msg/s with the senders "
                                "and the readers in processes of their own, beside "
                                "ngircd; rewrites BENCHMARKS.md's section")
    alone.add_argument("--duration", type=float, default=15.0, help="seconds of sending "
                       "in each run (15: the p99 of a 5 s run rested on its slowest 20 "
                       "messages or so)")
    alone.add_argument("--drain", type=float, default=3.0)
    alone.add_argument("--repeats", type=int, default=5, help="rounds of the three "
                       "(5: a median of p99 that one burst of the machine's cannot move)")
    args = parser.parse_args(argv)
    if args.cmd == "independent":
        command = (f"python -m bench independent --repeats {args.repeats} "
                   f"--duration {args.duration:g}")
        replace_section("p99 on an independent generator", independent_text(
            independent_comparison(args, print), command))
        return 0
    if args.cmd == "cluster" and args.members:
        raise_fd_limit()
        row = members_run(args, print)
        print(json.dumps(row))
        command = (f"python -m bench cluster --members {args.members} --nodes {args.nodes} "
                   f"--generators {args.generators} --rates "
                   f"{' '.join(f'{r:g}' for r in args.rates)} --duration {args.duration:g}")
        replace_section(f"{args.members:,} members across nodes", members_text(row, command))
        return 0
    if args.cmd == "cluster":
        raise_fd_limit()
        replace_section("Two nodes through Redis", cluster_text(
            cluster_comparison(args, measure_running, print)))
        return 0
    if args.cmd == "history":
        raise_fd_limit()
        replace_section("History of messages", history_text(
            history_comparison(args, compare, print), measured))
        return 0
    if args.cmd == "logins":
        replace_section("Logins", logins_text(logins_comparison(args, measure_running, print),
                                              measured))
        return 0
    if args.cmd == "irc":
        raise_fd_limit()
        replace_section("IRC members", irc_text(irc_comparison(args, print)))
        return 0
    if args.cmd == "web":
        raise_fd_limit()
        replace_section("The browser (WebSocket members)", web_text(web_comparison(args, print)))
        return 0
    if args.cmd == "rooms":
        raise_fd_limit()
        pin(args)
        replace_section("Rooms", rooms_text(rooms_comparison(args, print)))
        return 0
    if args.cmd == "upgrade":
        raise_fd_limit()
        replace_section("Hitless upgrade", upgrade_text(
            [upgrade_pause(n, print) for n in args.clients]))
        return 0
    if args.cmd == "run":
        return full_run(args)
    if args.cmd == "tls":
        raise_fd_limit()
        replace_tls_section(tls_text(tls_comparison(args, print)))
        return 0
    raise_fd_limit()
    pin(args)
    result = measure(args.server, Settings(
        port=0, clients=args.clients, senders=args.senders, window=args.window,
        duration=args.duration, rate=args.rate,
        confirms=not args.no_confirms and args.server == "tcpchatd",
        irc=args.server == "ngircd", fanout=args.fanout,
        irc_mask=args.server == "ngircd" and args.fanout, tls=args.tls, rooms=args.rooms,
        rooms_per_client=args.rooms_per_client, leave_default=args.leave_default,
        hello_room=args.hello_room, web=args.web), args.server_arg)
    print(json.dumps(result))
    if not args.fanout:
        print(table([result]))
    return 0
