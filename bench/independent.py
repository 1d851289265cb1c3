"""p99 on an independent generator (`python -m bench independent`).

The usual generator is one process that sends, reads and confirms: under load its own
reading delays its sends and stamps, and its latencies carry its queueing. Here the 20
senders are one process and the 180 readers another, each on its own event loop: the
senders keep their rate whatever the readers do, and the latencies are the readers'
alone (a message's send time, stamped in it, against its arrival; one clock for both).
The readers stamp every delivery of a poll before they send the poll's confirms
(`confirm_after_reads`): a reader's own confirm sends would otherwise delay the stamps of
the deliveries read after them, a cost of the generator that ngircd's readers (no
confirms) do not pay.
Each at 20 senders x 20 msg/s to 200 members: tcpchatd with receipts, tcpchatd without
confirms, and ngircd (IRC, no receipts).
"""

from __future__ import annotations

import multiprocessing
import time

from .loadgen import LoadGenerator, Settings
from .servers import Ngircd, Tcpchatd

KINDS = ("tcpchatd", "tcpchatd, no confirms", "ngircd")
SENDERS, READERS, RATE = 20, 180, 20.0


def _side(settings: Settings, sends: bool, pipe) -> None:
    """A child process: join, say so, then at the parent's word send (or not) and read
    until the end it names; report what the readers saw."""
    generator = LoadGenerator(settings)
    try:
        generator.join_all()
        if sends:
            generator.arm()  # ngircd: its senders are operators, out of its flood penalty
        pipe.send(("joined", generator.result.connect_s))
        while not pipe.poll():
            generator.listen_until(time.monotonic() + 0.05)
        _, start, until = pipe.recv()
        generator.listen_until(start)
        if sends:
            generator.s.drain = 0.0
            generator._load_phase()
        generator.listen_until(until)
        latencies = sorted(generator.result.latencies)
        pipe.send(("done", {"sent": generator.result.sent,
                            "deliveries": generator.result.deliveries,
                            "disconnects": generator.result.disconnects,
                            "latencies": latencies}))
    except Exception as exc:
        pipe.send(("failed", repr(exc)))
    finally:
        for client in generator.clients:
            client.sock.close()


def _once(kind: str, duration: float, drain: float) -> dict:
    irc, confirms = kind == "ngircd", kind == "tcpchatd"
    server = Ngircd() if irc else Tcpchatd()
    context = multiprocessing.get_context("fork")
    with server:
        sides = []
        for sends, count, prefix, base in ((False, READERS, "r", 1000),
                                           (True, SENDERS, "s", 0)):
            settings = Settings(port=server.port, clients=count,
                                senders=SENDERS if sends else 0, rate=RATE,
                                duration=duration, confirms=confirms, irc=irc,
                                name_prefix=prefix, index_base=base,
                                confirm_after_reads=True)
            parent, child = context.Pipe()
            process = context.Process(target=_side, args=(settings, sends, child),
                                      daemon=True)
            process.start()
            kind_of, payload = parent.recv()  # readers in first: they hear every message
            if kind_of == "failed":
                raise RuntimeError(f"{kind}: a generator failed: {payload}")
            sides.append((parent, process))
        start = time.monotonic() + 1.0
        until = start + duration + drain
        for parent, _ in sides:
            parent.send(("go", start, until))
        reports = []
        for parent, process in sides:
            kind_of, payload = parent.recv()
            if kind_of == "failed":
                raise RuntimeError(f"{kind}: a generator failed: {payload}")
            reports.append(payload)
            process.join(10)
    readers, senders = reports
    latencies = readers["latencies"]

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) \
            if latencies else 0.0
    return {"server": kind, "sent": senders["sent"],
            "reader_deliveries": readers["deliveries"],
            "missing": senders["sent"] * READERS - readers["deliveries"],
            "disconnects": readers["disconnects"] + senders["disconnects"],
            "p50_ms": percentile(0.5), "p99_ms": percentile(0.99)}


def independent_comparison(args, log) -> list[dict]:
    rows = []
    for _ in range(args.repeats):
        for kind in KINDS:  # alternated
            row = _once(kind, args.duration, args.drain)
            log(row)
            rows.append(row)
    return rows


def independent_text(rows: list[dict], command: str) -> str:
    lines = ["## p99 on an independent generator", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `{command}`: 20 senders (one process)"
             " × 20 msg/s to 200 members, the 180 readers in another process; latencies "
             "are the readers' alone. Alternated, every run listed.", "",
             "| server | p50 ms | p99 ms | sent | missing | disconnects |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['server']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['sent']} | {row['missing']} | {row['disconnects']} |")
    medians = {}
    for kind in KINDS:
        values = sorted(r["p99_ms"] for r in rows if r["server"] == kind)
        medians[kind] = values[len(values) // 2]
    ngircd = medians["ngircd"] or 1.0
    lines += ["", f"Medians of p99: tcpchatd with receipts {medians['tcpchatd']} ms "
              f"({medians['tcpchatd'] / ngircd:.2f}× ngircd's {medians['ngircd']} ms), "
              f"without confirms {medians['tcpchatd, no confirms']} ms "
              f"({medians['tcpchatd, no confirms'] / ngircd:.2f}×). Issue 30's target: "
              "at most 1.25× ngircd's."]
    return "\n".join(lines) + "\n"
