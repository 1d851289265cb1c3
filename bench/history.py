"""Issue 27's measures: the CPU per delivery with the lasting history on and off (the
daemon, alternated), the writer's rate, and a search over 1,000,000 kept messages (the
store itself, in this process)."""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid

from tcpchatd.store.history import HistoryStore, Kept

from .loadgen import Settings

WORDS = [f"w{n}" for n in range(20_000)]  # a vocabulary; word n is used about 1/(n+1)


class NoLog:
    def event(self, name: str, **fields) -> None:
        pass


def _text(rng: random.Random) -> str:
    # Zipf-like: a few words are in many messages, most in few (as in chat)
    return " ".join(WORDS[min(int(rng.paretovariate(1.1)) - 1, len(WORDS) - 1)]
                    for _ in range(rng.randint(4, 14)))


def fill(store: HistoryStore, count: int, rooms: int, rng: random.Random) -> float:
    """Queue `count` messages over `rooms` rooms; seconds until all are written."""
    started = time.monotonic()
    now = time.time()
    for n in range(count):
        while store.queued() > 50_000:  # the queue's bound, not the test of the writer
            time.sleep(0.001)
        room = f"r{n % rooms}"
        store.put(Kept(str(uuid.UUID(int=rng.getrandbits(128), version=4)), room, room,
                       f"u{n % 500}", f"u{n % 500}", None, now - (count - n) * 0.01,
                       _text(rng)))
    while store.written < count and store.errors == 0:
        time.sleep(0.01)
    return time.monotonic() - started


def history_comparison(args, compare, log) -> dict:
    per_delivery = compare(
        lambda kind: Settings(port=0, clients=200, senders=20, window=args.window,
                              duration=args.duration),
        [("tcpchatd/history", ()), ("tcpchatd/no-history", ("--no-history-store",))],
        args.repeats, log)
    folder = tempfile.mkdtemp(prefix="tcdhist")
    rng = random.Random(27)
    try:
        store = HistoryStore(folder, NoLog(), per_room=0, queue_size=100_000)
        store.open()
        burst = fill(store, 50_000, 100, rng)  # the writer's rate, from an empty database
        rest = fill(store, args.messages - 50_000, 100, rng)
        log(json.dumps({"writer_50k_s": round(burst, 2), "fill_s": round(rest, 2)}))
        size = os.path.getsize(store.path) + os.path.getsize(store.path + "-wal") \
            if os.path.exists(store.path + "-wal") else os.path.getsize(store.path)
        searches: dict[str, list[float]] = {}
        queries = {"a rare word": "w300", "a common word": "w0",
                   "two words": "w3 w40", "a word in no message": "nothing"}
        for label, words in queries.items():
            for room in ("r7", None):
                times = []
                for _ in range(args.searches):
                    started = time.perf_counter()
                    found = store.search(room, words, 50).result()
                    times.append((time.perf_counter() - started) * 1000)
                key = f"{label}, {'one room' if room else 'every room'}"
                searches[key] = [round(statistics.median(times), 2),
                                 round(max(times), 2), len(found)]
                log(json.dumps({"search": key, "median_ms": searches[key][0],
                                "max_ms": searches[key][1], "found": len(found)}))
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"per_delivery": per_delivery, "writer_rate": 50_000 / burst,
            "messages": args.messages, "fill_s": rest, "searches": searches,
            "db_mib": size / 2**20, "repeats": args.repeats, "duration": args.duration}


def history_text(found: dict, measured) -> str:
    on = found["per_delivery"]["tcpchatd/history"]
    off = found["per_delivery"]["tcpchatd/no-history"]
    ratio = on["cpu_us_per_delivery"] / off["cpu_us_per_delivery"]
    worst = max(v[1] for v in found["searches"].values())
    return "\n".join([
        "## History of messages", "",
        measured(f"python -m bench history --repeats {found['repeats']}") + " The daemon "
        "with its lasting history and without (`--no-history-store`), N=200, S=20, with "
        "receipts, alternated, medians; then the store alone, in one process: its writer "
        f"from an empty database, and searches once it holds {found['messages']:,} "
        "messages in 100 rooms (4-14 words each, Zipf-like: a few words in most messages, "
        "most in few), 50 results at most, the newest first.", "",
        "| run | deliveries/s | CPU µs/delivery | p99 ms |", "|---|---|---|---|",
        *[f"| {kind} | {r['deliveries_per_s']} | {r['cpu_us_per_delivery']} | "
          f"{r['latency_p99_ms']} |" for kind, r in (("history on", on),
                                                     ("history off", off))], "",
        f"With history the daemon spends {ratio:.2f}× the CPU per delivery "
        f"({'within 10 %: met' if ratio <= 1.10 else 'MORE than 10 %: missed'}); a message "
        "is one put on a queue for the loop, the writer's thread does the rest.", "",
        f"The writer: {found['writer_rate']:,.0f} messages a second into an empty database "
        f"({'at least 5,000: met' if found['writer_rate'] >= 5000 else 'under 5,000: missed'}"
        f"); {found['messages']:,} messages took {found['fill_s']:.0f} s more and "
        f"{found['db_mib']:.0f} MiB with their index.", "",
        "| search | median ms | slowest ms | found |", "|---|---|---|---|",
        *[f"| {key} | {v[0]} | {v[1]} | {v[2]} |" for key, v in found["searches"].items()],
        "",
        f"The slowest search took {worst} ms ({'within 50 ms: met' if worst <= 50 else 'OVER 50 ms: missed'}).",
    ]) + "\n"
