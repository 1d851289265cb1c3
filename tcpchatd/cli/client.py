"""`tcpchat-client`: the interactive terminal client, also scriptable from a pipe.

It speaks like the original client (raw nickname in one write, `NICK: text`
inside every message) so that it also works against the original server, and
it copes with what that server sends: no `event`/`nickname`/`time` fields, a
receipt without counts from the first recipient only, none when alone, and no
`names` frame (so no features: `/msg`, `/nick` and `/who` stay local).

After a restart or a lost connection it reconnects (0.5 s, doubling to 30 s) and
rejoins under its nickname; never after a kick or a disconnect for flooding.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from .. import __version__
from ..wire import errors
from .chatlink import (
    CHAT_PORT,
    DEFAULT_RATE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    KEEPALIVE_IDLE,
    TLS_PORT,
    Connection,
    ServerGone,
    connect,
    connect_and_join,
    describe_receipt,
    read_password,
    reconnect,
    refusal,
    tls_context,
)
from .output import exit_with, reader_left

# --- pipe mode

@dataclass
class Outgoing:
    text: str
    uuid: str = ""
    result: tuple[bool, str] | None = None


@dataclass
class PipeRun:
    """Each input line is sent as a message, paced; each result printed as it arrives."""

    args: argparse.Namespace
    conn: Connection
    out: TextIO = sys.stdout
    pending: dict[str, Outgoing] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    down: str | None = None     # why the connection is down (reconnecting)
    final: str | None = None    # why nothing more can be sent
    done: threading.Event = field(default_factory=threading.Event)
    results: list[bool] = field(default_factory=list)
    room: str | None = None     # the room lines go to (--room); None: the default room

    def _finish(self, item: Outgoing, reached: bool, text: str) -> None:
        """Under the lock: a line's result, printed at once (`tail -f log | client` works)."""
        if item.result is not None:
            return
        item.result = (reached, text)
        self.results.append(reached)
        self.pending.pop(item.uuid, None)
        try:
            print(f"{text}: {item.text}", file=self.out, flush=True)
        except BrokenPipeError:  # `| head`: the results go nowhere, the lines still go out
            reader_left()
        self.cond.notify_all()

    def receive(self) -> None:
        conn: Connection | None = self.conn
        while conn is not None:
            why = self._receive_from(conn)
            with self.cond:
                for item in list(self.pending.values()):  # sent, never confirmed: not resent
                    self._finish(item, False, f"no receipt ({self.final or why})")
                if self.final is not None or self.done.is_set():
                    self.final = self.final or why
                    self.cond.notify_all()
                    return
                self.down = why
            def say(text: str) -> None:
                print(f"tcpchat-client: {text}", file=sys.stderr, flush=True)
            say(why)  # then "reconnecting in ...": the reason first
            conn = reconnect(self.args, self.conn.nickname, say, self.done,
                             [self.room] if self.room else None)
            with self.cond:
                if conn is None:
                    self.final = self.final or why
                else:
                    self.conn, self.down = conn, None
                self.cond.notify_all()
            if conn is None:
                return

    def _receive_from(self, conn: Connection) -> str:
        """Take frames until the connection ends; returns why it ended."""
        try:
            for frame in conn.incoming():
                kind, frame_uuid = frame.get("type"), frame.get("uuid")
                refused = refusal(frame)
                if refused is not None:
                    with self.cond:
                        self.final = refused
                with self.cond:
                    item = self.pending.get(frame_uuid) if isinstance(frame_uuid, str) else None
                    if item is not None and kind != "message":
                        if frame.get("code") == errors.FLOOD:
                            self._finish(item, False, "dropped by the flood limit")
                        elif kind == "confirm" or frame.get("event") == "undelivered":
                            self._finish(item, *describe_receipt(frame))
                        elif frame.get("event") == "error":
                            self._finish(item, False, f"error: {frame.get('message')}")
                if frame.get("event") in ("shutdown", "restart"):
                    raise ServerGone("the server is restarting" if frame["event"] == "restart"
                                     else "the server is shutting down")
        except ServerGone as exc:
            return str(exc)
        return "the server closed the connection"

    def run(self, lines: Iterable[str]) -> int:
        threading.Thread(target=self.receive, daemon=True).start()
        rate = self.args.rate
        interval = 1.0 / rate if rate > 0 else 0.0
        next_send = time.monotonic()
        unsent: list[Outgoing] = []
        for line in lines:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            item = Outgoing(text)
            with self.cond:
                while self.down is not None and self.final is None:
                    self.cond.wait()  # reconnecting: the line goes out once we are back
                if self.final is not None:
                    unsent.append(item)
                    continue
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_send = max(next_send, time.monotonic() - 1.0) + interval
            with self.cond:
                item.uuid = str(uuidlib.uuid4())
                self.pending[item.uuid] = item  # before sending: the receipt may be quick
                try:
                    self.conn.send_message(text, frame_uuid=item.uuid, room=self.room)
                except ServerGone:
                    del self.pending[item.uuid]
                    unsent.append(item)  # the receiver notices and reconnects
        deadline = time.monotonic() + self.args.timeout
        with self.cond:
            # a refusal (a flood disconnect) still lets the receipts of what went out
            # before it arrive: the receiver settles the rest when the connection ends
            while self.pending or (self.down is not None and self.final is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            self.done.set()
            for item in list(self.pending.values()):
                self._finish(item, False, "no receipt")
            reason = self.final or self.down
            for item in unsent:
                self._finish(item, False, f"not sent ({reason})" if reason else "not sent")
        if reason and not self.results:
            print(f"tcpchat-client: {reason}", file=sys.stderr)
        elif self.final and any(not ok for ok in self.results):
            print(f"tcpchat-client: {self.final}", file=sys.stderr)
        return EXIT_OK if all(self.results) and not (reason and not self.results) \
            else EXIT_FAILED


def run_pipe(args: argparse.Namespace) -> int:
    if not args.nick and not args.account:
        print("tcpchat-client: --nick (or --account) is needed when stdin is not a terminal",
              file=sys.stderr)
        return EXIT_USAGE
    conn: Connection | None = None
    try:
        conn = connect_and_join(args, args.nick)
        room = conn.enter(args.room) if args.room else None
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    run = PipeRun(args, conn, room=room)
    try:
        return run.run(sys.stdin)
    finally:
        run.conn.close()


# --- post mode: a script's messages, without joining the room's conversation

@dataclass
class Post:
    text: str
    uuid: str
    frames: list[dict] = field(default_factory=list)

    def outcome(self, require_delivery: bool) -> tuple[bool, str] | None:
        """(reached, what to print), or None while the answer is still due."""
        for frame in self.frames:
            event = frame.get("event")
            if event == "error":
                return False, f"error: {frame.get('message')}"
            if require_delivery and (frame.get("type") == "confirm"
                                     or event == "undelivered"):
                return describe_receipt(frame)
            if not require_delivery and event == "accepted":
                return True, f"accepted ({frame.get('recipients', 0)} recipients)"
        return None


def run_post(args: argparse.Namespace, lines: Iterable[str]) -> int:
    """Each line a message, posted quietly (no join or leave notices, a free variant of
    the name if it is taken); exit 0 once the server has taken every one (with
    --require-delivery: once each reached someone who confirmed it)."""
    try:
        conn = connect(args)
        conn.hello(args.nick, "post", args.account, args.password)
        room = conn.enter(args.room) if args.room else None
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    posts: dict[str, Post] = {}
    cond = threading.Condition()
    gone: list[str] = []

    def receive() -> None:
        try:
            for frame in conn.incoming():
                with cond:
                    post = posts.get(frame.get("uuid")) if isinstance(frame.get("uuid"),
                                                                      str) else None
                    if post is not None:
                        post.frames.append(frame)
                    cond.notify_all()
        except ServerGone as exc:
            with cond:
                gone.append(str(exc))
                cond.notify_all()
    threading.Thread(target=receive, daemon=True).start()
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_send = time.monotonic()
    order: list[Post] = []
    for line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        delay = next_send - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_send = max(next_send, time.monotonic() - 1.0) + interval
        post = Post(text, str(uuidlib.uuid4()))
        with cond:
            posts[post.uuid] = post
        order.append(post)
        try:
            conn.send_message(text, frame_uuid=post.uuid, room=room)
        except ServerGone:
            break
    deadline = time.monotonic() + args.timeout
    with cond:
        while not gone and any(p.outcome(args.require_delivery) is None for p in order):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            cond.wait(remaining)
    results = []
    for post in order:
        outcome = post.outcome(args.require_delivery)
        reached, said = outcome if outcome is not None else (
            False, f"no answer ({gone[0] if gone else 'timed out'})")
        results.append(reached)
        try:
            print(f"{said}: {post.text}", flush=True)
        except BrokenPipeError:
            reader_left()
    conn.close()
    if conn.nickname != (args.nick or args.account):
        print(f"tcpchat-client: {args.nick or args.account} is taken: posted as "
              f"{conn.nickname}",
              file=sys.stderr)
    return EXIT_OK if results and all(results) else EXIT_FAILED


def run_search(args: argparse.Namespace) -> int:
    """Print the matches of --search WORDS in --room (or the default room), newest first,
    one line each (`TIME NICK: text`); exit 0, or 1 with the server's reason."""
    try:
        conn = connect_and_join(args, args.nick)
        room = conn.enter(args.room) if args.room else None
        conn.request("search", words=args.search, **({"room": room} if room else {}))
        while True:
            frame = conn.next()
            if isinstance(frame, dict) and frame.get("id") == "search":
                break
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if conn is not None:
            conn.close()
    if frame.get("event") != "search":
        print(f"tcpchat-client: {frame.get('message', 'the search failed')}", file=sys.stderr)
        return EXIT_FAILED
    for match in frame.get("messages") or ():
        try:
            print(f"{match.get('time')} {match.get('message')}", flush=True)
        except BrokenPipeError:
            reader_left()
            break
    return EXIT_OK


def _seconds(text: str) -> int:
    """--keepalive's whole seconds (the kernel's unit), 0 to 32767."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, not {text!r}") from None
    if not 0 <= value <= 32767:
        raise argparse.ArgumentTypeError("must be 0 (off) to 32767 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpchat-client", description="Chat client for tcpchatd (and the original "
        "TCPchat server). From a pipe, each line is sent as a message and its result "
        "printed as soon as its receipt arrives.",
        epilog="exit status: 0 every message reached someone, 1 not (or no connection), "
        "2 usage. Colours are off when NO_COLOR is set or the output is not a terminal.")
    parser.add_argument("--version", action="version", version=f"tcpchat-client {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"default {CHAT_PORT}, with --tls {TLS_PORT}")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying the server's certificate and "
                        "host name")
    parser.add_argument("--cafile", metavar="FILE",
                        help="trust the CA certificates in FILE instead of the system's "
                        "(implies --tls)")
    parser.add_argument("--nick", help="nickname (asked for when not given)")
    parser.add_argument("--account", metavar="NAME",
                        help="log in to account NAME (tcpchatd only): its nickname is yours "
                        "(the default --nick); the password from --password-file, the "
                        "credential $CREDENTIALS_DIRECTORY/tcpchat.password, or asked")
    parser.add_argument("--password-file", metavar="FILE",
                        help="read --account's password from the first line of FILE")
    parser.add_argument("--room", metavar="ROOM",
                        help="join ROOM (#dev or dev; made if it does not exist and the "
                        "server allows it) and talk there: from a pipe or with --post each "
                        "line goes to it; in the terminal it is the room you start in "
                        "(default: the server's default room)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to connect, and in pipe mode to wait for the last "
                        "receipts (default 10)")
    parser.add_argument("--keepalive", type=_seconds, default=KEEPALIVE_IDLE, metavar="S",
                        help="TCP keepalive: probe the server after S silent seconds, so "
                        "that a connection the server dropped unheard is noticed "
                        f"(default {KEEPALIVE_IDLE}; 0 = off)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help="messages per second, under the server's flood limit "
                        f"(default {DEFAULT_RATE:g}; 0 = no pacing)")
    parser.add_argument("--no-bell", action="store_true",
                        help="no bell when a message mentions your nickname")
    parser.add_argument("--post", action="store_true",
                        help="post TEXT (or each line of stdin) as --nick without joining "
                        "the conversation: no join or leave notices, a free variant of the "
                        "name if it is taken (NICK-2 ...), exit 0 once the server has taken "
                        "every message (tcpchatd only; for scripts and CI)")
    parser.add_argument("--search", metavar="WORDS",
                        help="print the messages of --room (default: the server's default "
                        "room) that hold all of WORDS, newest first, and exit (tcpchatd "
                        "with a lasting history)")
    parser.add_argument("--require-delivery", action="store_true",
                        help="with --post: exit 0 only once every message reached someone "
                        "who confirmed it")
    parser.add_argument("text", nargs="*", metavar="TEXT",
                        help="with --post: the message (default: each line of stdin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.timeout <= 0 or args.rate < 0:
        print("tcpchat-client: --timeout must be positive and --rate not negative",
              file=sys.stderr)
        return EXIT_USAGE
    args.tls = args.tls or args.cafile is not None
    if args.port is None:
        args.port = TLS_PORT if args.tls else CHAT_PORT
    args.tls_context = None
    if args.tls:
        try:
            args.tls_context = tls_context(args.cafile)
        except (OSError, ssl.SSLError) as exc:
            print(f"tcpchat-client: cannot use --cafile {args.cafile}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.text and not args.post or args.require_delivery and not args.post:
        print("tcpchat-client: TEXT and --require-delivery go with --post", file=sys.stderr)
        return EXIT_USAGE
    args.password = None
    if args.password_file and not args.account:
        print("tcpchat-client: --password-file goes with --account", file=sys.stderr)
        return EXIT_USAGE
    if args.account:
        try:
            args.password = read_password(args)
        except ValueError as exc:
            print(f"tcpchat-client: {exc}", file=sys.stderr)
            return EXIT_USAGE
    one_shot = "--search" if args.search else "--post" if args.post else None
    if one_shot and not args.nick and not args.account:
        print(f"tcpchat-client: {one_shot} needs --nick (or --account)", file=sys.stderr)
        return EXIT_USAGE
    if args.search:
        return run_search(args)
    if args.post:
        return run_post(args, [" ".join(args.text)] if args.text else sys.stdin)
    if not sys.stdin.isatty():
        return run_pipe(args)
    from .terminal import run_interactive  # prompt_toolkit is only needed here
    return run_interactive(args)


def main_exit() -> None:
    exit_with(main)


if __name__ == "__main__":
    main_exit()
