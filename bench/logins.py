"""Issue 26's measure: a login costs the event loops nothing. A pair of members chats at a
steady rate; its round-trip latency (p50, p99) is measured alone, and while 20 logins a
second (each an Argon2id check in the accounts' pool) come in beside it, alternated."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from .loadgen import Settings
from .servers import Tcpchatd

ACCOUNT, PASSWORD = "loadbot", "bench password"
HEADER = 10


def frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return f"{len(body):<{HEADER}}".encode() + body


def read_frame(sock: socket.socket) -> bytes:
    def exact(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
    header = exact(HEADER)
    return header if header == b"_nickname_" else exact(int(header))


class LoginLoad:
    """`rate` logins a second to the bot account, each on its own connection (closed once
    answered); counts the answers."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.stop = threading.Event()
        self.done = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                read_frame(sock)  # the prompt
                sock.sendall(frame({"type": "hello", "account": ACCOUNT,
                                    "password": PASSWORD, "mode": "post"}))
                answer = json.loads(read_frame(sock))
            if answer.get("event") == "login":
                self.done += 1
            else:
                self.failed += 1
        except (OSError, EOFError, ValueError):
            self.failed += 1

    def _run(self) -> None:
        interval, next_at = 1.0 / self.rate, time.monotonic()
        while not self.stop.is_set():
            threading.Thread(target=self._one, daemon=True).start()
            next_at += interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def logins_comparison(args, measure_running, log) -> dict:
    runs: dict[str, list[dict]] = {"alone": [], "with logins": []}
    for _ in range(args.repeats):
        for kind in runs:
            state = os.path.join("/tmp", f"tcdbench-logins-{os.getpid()}")
            with Tcpchatd("--state-dir", state, "--login-free-failures", "1000000") as server:
                admin = os.path.join(server.dir, "admin.sock")
                subprocess.run([sys.executable, "-m", "tcpchatd.cli.ctl", "--socket", admin,
                                "account", "add", ACCOUNT, "bot"], input=PASSWORD + "\n",
                               text=True, check=True, capture_output=True, timeout=30)
                load = LoginLoad(server.port, args.login_rate) if kind != "alone" else None
                if load is not None:
                    load.thread.start()
                settings = Settings(port=server.port, clients=2, senders=1, window=1,
                                    duration=args.duration, rate=args.rate)
                result = measure_running("tcpchatd", settings, [server])
                if load is not None:
                    load.stop.set()
                    load.thread.join()
                    time.sleep(0.5)
                    result["logins"] = load.done
                    result["login_failures"] = load.failed
                log(json.dumps({"run": kind, **result}))
                runs[kind].append(result)
            subprocess.run(["rm", "-rf", state], check=False)
    return {"runs": runs, "repeats": args.repeats, "duration": args.duration,
            "rate": args.rate, "login_rate": args.login_rate}


def logins_text(found: dict, measured) -> str:
    def med(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in found["runs"][kind]), 2)
    with_logins = found["runs"]["with logins"]
    logins = sum(r["logins"] for r in with_logins)
    seconds = sum(r["seconds"] for r in with_logins)
    p99_alone, p99_busy = med("alone", "latency_p99_ms"), med("with logins", "latency_p99_ms")
    held = p99_busy <= p99_alone * 1.25 + 0.5  # within the noise of a 2-core machine
    return "\n".join([
        "## Logins", "",
        measured(f"python -m bench logins --repeats {found['repeats']} --duration "
                 f"{found['duration']:g}") + f" A pair of members, one message every "
        f"{1000 / found['rate']:.0f} ms from one to the other (with receipts), alone and "
        f"while {found['login_rate']:g} logins a second come in beside it (each a new "
        "connection logging in to a bot account: an Argon2id check of 19 MiB, two passes, "
        "one lane, in the accounts' pool of 2 threads at nice 10); alternated, medians.",
        "",
        "| run | p50 ms | p99 ms | max ms | daemon CPU s |", "|---|---|---|---|---|",
        *[f"| {kind} | {med(kind, 'latency_p50_ms')} | {med(kind, 'latency_p99_ms')} | "
          f"{med(kind, 'latency_max_ms')} | {med(kind, 'server_cpu_s')} |"
          for kind in ("alone", "with logins")], "",
        f"{logins} logins were checked in {seconds:.0f} s of the busy runs "
        f"({logins / max(seconds, 1):.1f} a second; failures "
        f"{sum(r['login_failures'] for r in with_logins)}). The pair's p99 "
        f"{'is unchanged within the noise' if held else 'ROSE'}"
        ": the checks run on the pool's threads, which argon2-cffi lets run outside the GIL, "
        "so the event loop that carries the pair never waits for one; what the two cores "
        "share is the machine, not the loop."])
