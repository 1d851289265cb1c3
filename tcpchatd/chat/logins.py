"""Logins: who may log in to an account now, and which nicknames accounts reserve.

A login is checked in the account book's pool (accounts.py), never on an event loop.
Failed logins are counted per address and per account: past login_free_failures, each
further attempt from that address or for that account must wait (1 s, doubling, at most
login_backoff_max), and one that comes sooner is refused without being checked, so a
flood of guesses costs the daemon nothing but the refusal. Each failure is logged
`login_failed account=NAME addr=IP` (contrib/fail2ban reads those lines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from ..wire import errors
from ..wire.errors import ProtocolError
from ..wire.nicknames import nickname_key
from .accounts import Account, AccountBook

GUEST = "guest"        # the role of a member that did not log in
MAX_TRACKED = 100_000  # addresses and accounts with failures remembered at most


class LoginSettings(Protocol):
    @property
    def nick_reservation(self) -> str: ...
    @property
    def require_account(self) -> bool: ...
    @property
    def login_free_failures(self) -> int: ...
    @property
    def login_backoff_max(self) -> float: ...


class EventLog(Protocol):
    def event(self, name: str, **fields: Any) -> None: ...


class Failures:
    """Failed attempts per key (an address, an account): how many, and until when the
    next must wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[int, float]] = {}  # key -> (failures, wait until)

    def wait(self, key: str, now: float) -> float:
        """Seconds the next attempt for `key` must still wait (0: it may go on)."""
        with self._lock:
            entry = self._failed.get(key)
        return max(0.0, entry[1] - now) if entry is not None else 0.0

    def failed(self, key: str, now: float, free: int, longest: float) -> None:
        with self._lock:
            count = self._failed.get(key, (0, 0.0))[0] + 1
            delay = 0.0 if count < free else min(longest, 2.0 ** (count - free))
            if len(self._failed) >= MAX_TRACKED:  # the oldest first (insertion order)
                del self._failed[next(iter(self._failed))]
            self._failed.pop(key, None)
            self._failed[key] = (count, now + delay)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failed.pop(key, None)


class Logins:
    """The daemon's account book, its limits and its log; `config` is replaced on reload."""

    def __init__(self, book: AccountBook, config: LoginSettings, log: EventLog) -> None:
        self.book = book
        self.config = config
        self.log = log
        self.failures = Failures()
        self.failed_count = 0  # for `stats`

    def reserved(self, nickname: str, account: str | None) -> ProtocolError | None:
        """The refusal of `nickname` for a member logged in to `account` (None: a guest)
        when another account owns it; None when it may take it."""
        if self.config.nick_reservation != "strict" or not len(self.book):
            return None
        owner = self.book.get(nickname)
        if owner is None or account is not None and owner.key == nickname_key(account):
            return None
        return ProtocolError(errors.NICKNAME_RESERVED, f"nickname {nickname!r} belongs to an "
                             "account: log in to it, or choose another")

    def guest_refused(self) -> ProtocolError | None:
        if not self.config.require_account:
            return None
        return ProtocolError(errors.ACCOUNT_REQUIRED, "this server lets in only members "
                             "with an account: log in (tcpchat-client --account NAME)")

    def login(self, name: str, password: str, ip: str,
              done: Callable[[Account | None, ProtocolError | None], None],
              request_id: Any = None) -> None:
        """Check a login in the pool; done(account, None) or done(None, refusal) from the
        pool's thread (or this one, for a refusal made at once)."""
        now = time.monotonic()
        keys = ("addr:" + ip, "account:" + nickname_key(name))
        wait = max(self.failures.wait(key, now) for key in keys)
        if wait > 0:
            self.log.event("login_throttled", account=name, addr=ip, wait=f"{wait:.0f}s")
            done(None, ProtocolError(errors.LOGIN_THROTTLED, f"too many failed logins: try "
                                     f"again in {wait:.0f} s", request_id=request_id))
            return
        future = self.book.verify(name, password)

        def checked(future: Future) -> None:
            try:
                account = future.result()
            except Exception as exc:  # noqa: BLE001 (the pool shut down: the daemon stops)
                done(None, ProtocolError(errors.LOGIN_FAILED, f"login not checked: {exc}",
                                         request_id=request_id))
                return
            if account is None:
                config = self.config
                for key in keys:
                    self.failures.failed(key, time.monotonic(), config.login_free_failures,
                                         config.login_backoff_max)
                self.failed_count += 1
                self.log.event("login_failed", account=name, addr=ip)
                done(None, ProtocolError(errors.LOGIN_FAILED, "unknown account or wrong "
                                         "password", request_id=request_id))
                return
            for key in keys:
                self.failures.succeeded(key)
            self.log.event("login", account=account.name, role=account.role, addr=ip)
            done(account, None)
        future.add_done_callback(checked)
