"""The interactive side of tcpchat-client (prompt_toolkit).

Incoming lines are printed through `patch_stdout`, so they appear above the
line being typed instead of garbling it.
"""

from __future__ import annotations

import argparse
import sys
import threading

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.patch_stdout import patch_stdout

from .client import EXIT_FAILED, EXIT_OK, Connection, ServerGone, describe_receipt, format_line

QUIT_COMMANDS = ("/quit", "/exit")


class Terminal:
    def __init__(self, conn: Connection, session: PromptSession) -> None:
        self.conn = conn
        self.session = session
        self.lost: str | None = None
        self.mine: set[str] = set()
        self._mine_lock = threading.Lock()  # a receipt may arrive before send_message returns

    def receive(self) -> None:
        try:
            for frame in self.conn.incoming():
                kind, frame_uuid = frame.get("type"), frame.get("uuid")
                with self._mine_lock:
                    mine = isinstance(frame_uuid, str) and frame_uuid in self.mine
                if mine and (kind == "confirm" or frame.get("event") == "undelivered"):
                    with self._mine_lock:
                        self.mine.discard(frame_uuid)
                    reached, text = describe_receipt(frame)
                    print_formatted_text(("  \u2713 " if reached else "  \u2717 ") + text)
                    continue
                line = format_line(frame)
                if line is not None:
                    print_formatted_text(line)
                if frame.get("event") in ("shutdown", "kick"):
                    raise ServerGone(frame.get("message", "disconnected"))
        except ServerGone as exc:
            self.lost = str(exc)
            app = self.session.app
            if app.is_running and app.loop is not None:
                app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    def _exit_if_lost(self) -> None:
        # The connection may have gone before this prompt started: the receiver found
        # no running app to stop, so the prompt stops itself.
        if self.lost:
            self.session.app.exit(exception=EOFError())

    def loop(self) -> int:
        threading.Thread(target=self.receive, daemon=True).start()
        while True:
            try:
                text = self.session.prompt(f"{self.conn.nickname}> ", pre_run=self._exit_if_lost)
            except KeyboardInterrupt:
                return EXIT_OK
            except EOFError:
                break
            if self.lost:
                break
            if text.strip() in QUIT_COMMANDS:
                return EXIT_OK
            if not text.strip():
                continue
            try:
                with self._mine_lock:
                    self.mine.add(self.conn.send_message(text))
            except ServerGone as exc:
                self.lost = str(exc)
                break
        if self.lost:
            print(f"tcpchat-client: {self.lost}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK


def run_interactive(args: argparse.Namespace) -> int:
    session: PromptSession = PromptSession()
    first = [args.nick]

    def ask() -> str:
        if first[0]:
            nick, first[0] = first[0], None
            return nick
        while True:
            nick = session.prompt("Choose your nickname: ").strip()
            if nick:
                return nick

    try:
        conn = Connection(args.host, args.port, args.timeout)
        conn.join(ask, lambda reason: print(f"Nickname rejected: {reason}", flush=True))
    except ServerGone as exc:
        print(f"tcpchat-client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        return EXIT_OK
    print(f"Joined as {conn.nickname}. Type messages; /quit, Ctrl-D or Ctrl-C leaves.",
          flush=True)
    try:
        with patch_stdout(raw=True):
            return Terminal(conn, session).loop()
    finally:
        conn.close()
