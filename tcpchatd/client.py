"""`tcpchat-client`: the interactive terminal client, also scriptable from a pipe.

It speaks like the original client (raw nickname in one write, `NICK: text`
inside every message) so that it also works against the original server, and
it copes with what that server sends: no `event`/`nickname`/`time` fields, a
receipt without counts from the first recipient only, none when alone.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime

from . import errors, protocol
from .config import CHAT_PORT

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_FRAME = 1 << 24  # what the client accepts from a server


class ServerGone(Exception):
    """The server closed the connection or sent something unreadable."""


class Connection:
    """A chat connection: handshake, then frames both ways."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ServerGone(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self.sock.settimeout(None)
        self.reader = protocol.FrameReader(self.sock.recv)
        self._send_lock = threading.Lock()
        self.nickname: str | None = None

    def next(self) -> dict | bytes:
        """The next frame as a dict, or NICKNAME_PROMPT."""
        try:
            body = self.reader.next_body(MAX_FRAME, allow_prompt=True)
        except (OSError, protocol.PeerClosedMidFrame, errors.ProtocolError):
            raise ServerGone("connection to the server was lost") from None
        if body is None:
            raise ServerGone("the server closed the connection")
        if body is protocol.NICKNAME_PROMPT:
            return body
        try:
            return protocol.decode(body)
        except errors.ProtocolError as exc:
            raise ServerGone(f"the server sent a bad frame: {exc.message}") from None

    def incoming(self):
        """Frames from the server; each message is confirmed as it arrives (as the original)."""
        while True:
            frame = self.next()
            if frame is protocol.NICKNAME_PROMPT:
                continue
            if frame.get("type") == "message" and isinstance(frame.get("uuid"), str):
                self.confirm(frame["uuid"])
            yield frame

    def join(self, ask_nickname, tell) -> None:
        """Answer `_nickname_` prompts until this client's join arrives."""
        while True:
            item = self.next()
            if item is protocol.NICKNAME_PROMPT:
                self.nickname = ask_nickname()
                self._send(self.nickname.encode("utf-8"))  # raw, one write, as the original
                continue
            if item.get("type") != "system":
                continue
            if item.get("event") == "error":
                tell(f"{item.get('message')}")
                continue
            joined = item.get("nickname") == self.nickname if "event" in item \
                else item.get("message") == f"{self.nickname} joined!"
            if joined:
                return

    def send_message(self, text: str) -> str:
        frame_uuid = str(uuidlib.uuid4())
        self._send(protocol.encode({"type": "message", "uuid": frame_uuid,
                                    "message": f"{self.nickname}: {text}"}))
        return frame_uuid

    def confirm(self, frame_uuid: str) -> None:
        self._send(protocol.encode({"type": "confirm", "uuid": frame_uuid}))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                raise ServerGone("connection to the server was lost") from None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def describe_receipt(frame: dict) -> tuple[bool, str]:
    """(reached someone, text) for a receipt or undelivered notice."""
    if frame.get("type") == "confirm":
        if "delivered" in frame and "recipients" in frame:
            return True, f"delivered to {frame['delivered']} of {frame['recipients']}"
        return True, "delivered"
    message = str(frame.get("message", "not delivered"))
    return False, message.replace("Message not delivered", "not delivered")


def format_line(frame: dict) -> str | None:
    """`HH:MM nick: text` for a message, `HH:MM -- text` for a notice."""
    stamp = datetime.now()
    if isinstance(frame.get("time"), str):
        try:
            stamp = datetime.fromisoformat(frame["time"].replace("Z", "+00:00")).astimezone()
        except ValueError:
            pass
    clock = stamp.strftime("%H:%M")
    if frame.get("type") == "message":
        return f"{clock} {frame.get('message', '')}"
    if frame.get("type") == "system" and frame.get("event") not in ("undelivered",):
        return f"{clock} -- {frame.get('message', '')}"
    return None


# --- pipe mode

@dataclass
class Outgoing:
    text: str
    result: tuple[bool, str] | None = None
    sent_at: float = 0.0


@dataclass
class PipeRun:
    conn: Connection
    rate: float
    timeout: float
    out: object = sys.stdout
    pending: dict[str, Outgoing] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    lost: str | None = None

    def receive(self) -> None:
        try:
            for frame in self.conn.incoming():
                kind, frame_uuid = frame.get("type"), frame.get("uuid")
                if not isinstance(frame_uuid, str) or kind == "message":
                    ours = False
                else:  # under the lock: the sender registers a uuid under it as it sends
                    with self.cond:
                        ours = frame_uuid in self.pending
                if ours and (kind == "confirm"
                             or frame.get("event") in ("undelivered", "error")):
                    with self.cond:
                        item = self.pending[frame_uuid]
                        if frame.get("code") == errors.FLOOD:
                            item.result = (False, "dropped by the flood limit")
                        elif item.result is None:
                            item.result = describe_receipt(frame) if kind == "confirm" or \
                                frame.get("event") == "undelivered" else \
                                (False, f"error: {frame.get('message')}")
                        self.cond.notify_all()
                elif frame.get("event") == "shutdown":
                    raise ServerGone("the server is shutting down")
        except ServerGone as exc:
            with self.cond:
                self.lost = str(exc)
                self.cond.notify_all()

    def run(self, lines) -> int:
        threading.Thread(target=self.receive, daemon=True).start()
        order = []
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_send = time.monotonic()
        for line in lines:
            text = line.rstrip("\r\n")
            if not text.strip() or self.lost:
                continue
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_send = max(next_send, time.monotonic() - 1.0) + interval
            item = Outgoing(text, sent_at=time.monotonic())
            with self.cond:
                try:
                    frame_uuid = self.conn.send_message(text)
                except ServerGone as exc:
                    self.lost = str(exc)
                    break
                self.pending[frame_uuid] = item
            order.append(item)
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while any(i.result is None for i in order) and not self.lost:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
        ok = not (self.lost and not order)
        for item in order:
            reached, text = item.result or (False, "no receipt" if not self.lost
                                            else f"no receipt ({self.lost})")
            ok = ok and reached
            print(f"{text}: {item.text}", file=self.out, flush=True)
        if self.lost and not order:
            print(f"tcpchat-client: {self.lost}", file=sys.stderr)
        return EXIT_OK if ok else EXIT_FAILED


def run_pipe(args: argparse.Namespace) -> int:
    if not args.nick:
        print("tcpchat-client: --nick is needed when stdin is not a terminal", file=sys.stderr)
        return EXIT_USAGE
    try:
        conn = Connection(args.host, args.port, args.timeout)
        rejected = []

        def ask() -> str:
            if rejected:
                raise ServerGone(f"nickname {args.nick!r} rejected: {rejected[-1]}")
            return args.nick
        conn.join(ask, rejected.append)
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return PipeRun(conn, args.rate, args.timeout).run(sys.stdin)
    finally:
        conn.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpchat-client", description="Chat client for tcpchatd (and the original "
        "TCPchat server). From a pipe, each line is sent as a message.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=CHAT_PORT, help=f"default {CHAT_PORT}")
    parser.add_argument("--nick", help="nickname (asked for when not given)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="pipe mode: seconds to wait for receipts (default 10)")
    parser.add_argument("--rate", type=float, default=15.0,
                        help="pipe mode: messages per second, under the server's flood limit "
                        "(default 15; 0 = no pacing)")
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
    if not sys.stdin.isatty():
        return run_pipe(args)
    from .terminal import run_interactive  # prompt_toolkit is only needed here
    return run_interactive(args)


def main_exit() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
