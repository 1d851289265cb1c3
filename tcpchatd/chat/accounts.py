"""Accounts: nicknames that belong to someone, kept in `accounts.json` in state_dir.

An account has a name (a nickname by the nickname rules: its nickname_key is what is
compared), a role (user, moderator or bot) and an Argon2id hash of its password (through
argon2-cffi; nothing plain or fast is ever kept). The file is written as the ban list is
(store/files.py: a temporary file made with O_EXCL|O_NOFOLLOW, fsync, rename), so a crash
leaves the old book or the new one; a file that does not parse stops the start and the
upgrade's pre-flight, it is never silently emptied.

Hashing is slow on purpose (some 20 ms of one core and 19 MiB each): every hash and
every check runs in the book's own small pool of threads (argon2-cffi releases the GIL
while it hashes), never on an event loop, and those threads run at a lower priority
(nice LOGIN_NICE), so a storm of logins takes the cores the loops leave, not the loops'
own; callers get a Future.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from ..store.files import write_atomic
from ..wire.errors import CodedError, ProtocolError
from ..wire.nicknames import check_nickname, nickname_key

# Argon2id as OWASP's password storage cheat sheet sets it for a server (19 MiB, two
# passes, one lane): RFC 9106's first choice (2 GiB) or its low-memory one (64 MiB, 4
# lanes, about 90 ms of both cores here) would let 20 logins a second take the whole
# machine. A hash carries its parameters: hashes made with others still verify.
HASH_TIME, HASH_MEMORY_KIB, HASH_LANES = 2, 19 * 1024, 1
LOGIN_NICE = 10  # the pool's threads yield the cores to the event loops
FILE_NAME = "accounts.json"
FORMAT = 1
ROLES = ("user", "moderator", "bot")
MAX_PASSWORD = 1024  # bytes: a longer one is refused, not hashed (hashing costs its length)

# What a change of the book can meet; the admin side turns each into its own code.
INVALID, UNKNOWN, EXISTS, UNWRITABLE = "invalid", "unknown", "exists", "unwritable"


class AccountError(CodedError):
    """An account that cannot be made, changed or removed (INVALID, UNKNOWN, EXISTS,
    UNWRITABLE)."""


class AccountFileError(Exception):
    """accounts.json cannot be read or does not parse (one line naming the file)."""


@dataclass(frozen=True)
class Account:
    name: str        # as its owner wrote it
    role: str        # one of ROLES
    hash: str        # Argon2id, in the PHC string form argon2-cffi writes
    since: float     # epoch seconds
    by_uid: int      # the operator who made it

    @property
    def key(self) -> str:
        return nickname_key(self.name)

    def record(self) -> dict:
        """As `tcpchatctl account list` shows it (never the hash)."""
        return {"name": self.name, "role": self.role,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
                "by_uid": self.by_uid}


def _hasher():
    """argon2-cffi's hasher (Argon2id, RFC 9106's low-memory profile), imported when
    first needed: a daemon with no accounts never loads it."""
    from argon2 import PasswordHasher
    return PasswordHasher(time_cost=HASH_TIME, memory_cost=HASH_MEMORY_KIB,
                          parallelism=HASH_LANES)


def check_password(password: str) -> bytes:
    """The password as bytes; AccountError(INVALID) for an empty or oversized one."""
    data = password.encode("utf-8", "surrogateescape")
    if not data:
        raise AccountError(INVALID, "the password is empty")
    if len(data) > MAX_PASSWORD:
        raise AccountError(INVALID, f"the password is longer than {MAX_PASSWORD} bytes")
    return data


class AccountBook:
    """Every account; the file is rewritten on every change. Thread-safe. `threads`:
    the pool that hashes and checks passwords."""

    def __init__(self, state_dir: str, threads: int = 2, max_nickname: int = 32) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self.max_nickname = max_nickname
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}  # nickname_key -> account
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self.on_change = lambda account, removed: None  # the cluster tells its nodes

    def __len__(self) -> int:
        return len(self._accounts)

    # --- the file

    def load(self) -> None:
        """Read accounts.json if it exists; AccountFileError naming it if it does not parse."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a format {FORMAT} account file")
            accounts = [_account(row) for row in data["accounts"]]
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AccountFileError(f"cannot read the accounts {self.path}: {exc.strerror}") \
                from None
        except (ValueError, KeyError, TypeError) as exc:
            raise AccountFileError(f"the accounts {self.path} do not parse ({exc}); fix or "
                                   "move the file, the daemon will not start without its "
                                   "accounts") from None
        with self._lock:
            self._accounts = {a.key: a for a in accounts}

    def _change(self, accounts: dict[str, Account]) -> None:
        """Under the lock: write the new book, then make it the one in force."""
        try:
            os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
            body = json.dumps({"format": FORMAT,
                               "accounts": [asdict(a) for a in accounts.values()]},
                              ensure_ascii=False, indent=1).encode("utf-8")
            write_atomic(self.path, body, 0o600)  # hashes: for the daemon's user alone
        except OSError as exc:
            raise AccountError(UNWRITABLE, f"cannot write the accounts {self.path}: "
                               f"{exc.strerror or exc}; nothing was changed") from None
        self._accounts = accounts

    # --- an upgrade, and the cluster: the book as rows

    def export_state(self) -> list:
        with self._lock:
            return [asdict(a) for a in self._accounts.values()]

    def import_state(self, rows: list) -> None:
        with self._lock:
            self._accounts = {a.key: a for a in map(_account, rows)}

    def merge(self, rows: list) -> list[Account]:
        """The cluster's book (its rows) joined with this node's: theirs win for the names
        they hold (a row that does not parse is left out); ours that they lack are
        returned, to be written up."""
        theirs = {}
        for row in rows:
            try:
                account = _account(row)
            except (ValueError, KeyError, TypeError):
                continue
            theirs[account.key] = account
        with self._lock:
            ours_only = [a for key, a in self._accounts.items() if key not in theirs]
            accounts = {**self._accounts, **theirs}
            if accounts != self._accounts:
                try:
                    self._change(accounts)
                except AccountError:
                    self._accounts = accounts  # in force here even if the file lags
        return ours_only

    def put(self, account: Account | None, key: str) -> None:
        """Another node's change, kept here too (None: removed)."""
        with self._lock:
            accounts = {k: a for k, a in self._accounts.items() if k != key}
            if account is not None:
                accounts[account.key] = account
            try:
                self._change(accounts)
            except AccountError:
                self._accounts = accounts  # in force here even if the file lags

    # --- changes (from the admin socket; each hashes in the pool and waits for it)

    def add(self, name: str, password: str, role: str, by_uid: int) -> Account:
        try:
            name = check_nickname(name.encode("utf-8", "replace"), self.max_nickname)
        except ProtocolError as exc:
            raise AccountError(INVALID, f"bad account name: {exc.message}") from None
        _check_role(role)
        digest = self.hash(password)
        account = Account(name, role, digest, time.time(), by_uid)
        with self._lock:
            taken = self._accounts.get(account.key)
            if taken is not None:
                raise AccountError(EXISTS, f"account {taken.name} exists"
                                   + ("" if taken.name == name else f" (like {name})"))
            self._change({**self._accounts, account.key: account})
        self.on_change(account, False)
        return account

    def passwd(self, name: str, password: str) -> Account:
        digest = self.hash(password)
        return self._update(name, lambda a: replace(a, hash=digest))

    def set_role(self, name: str, role: str) -> Account:
        _check_role(role)
        return self._update(name, lambda a: replace(a, role=role))

    def remove(self, name: str) -> Account:
        key = nickname_key(name)
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                raise AccountError(UNKNOWN, f"no such account: {name}")
            self._change({k: a for k, a in self._accounts.items() if k != key})
        self.on_change(account, True)
        return account

    def _update(self, name: str, change) -> Account:
        key = nickname_key(name)
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                raise AccountError(UNKNOWN, f"no such account: {name}")
            account = change(account)
            self._change({**self._accounts, key: account})
        self.on_change(account, False)
        return account

    # --- lookups

    def get(self, name: str) -> Account | None:
        """The account whose name is `name` or looks like it."""
        return self._accounts.get(nickname_key(name))

    def all(self) -> list[Account]:
        with self._lock:
            return sorted(self._accounts.values(), key=lambda a: a.key)

    # --- passwords, in the pool

    def _run(self, job, *args) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="login",
                                                initializer=_lower_priority)
            return self._pool.submit(job, *args)

    def hash(self, password: str) -> str:
        """An Argon2id hash of the password, made in the pool (the caller waits)."""
        data = check_password(password)
        return self._run(lambda: _hasher().hash(data)).result()

    def verify(self, name: str, password: str) -> Future:
        """A Future of the account when the password is its own, else of None (unknown
        account or wrong password: the caller cannot tell them apart by time either, an
        unknown account is checked against a hash of its own)."""
        account = self.get(name)
        try:
            data = check_password(password)
        except AccountError:
            data = b""
        return self._run(_verify, account, data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority() -> None:
    """In a pool thread: nice LOGIN_NICE for this thread alone (Linux keeps a nice value
    per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOGIN_NICE)
    except OSError:
        pass  # not allowed (a container's policy): it runs at the loops' priority


_DECOY: list[str] = []  # one hash to check unknown accounts against (as long as a real one)


def _verify(account: Account | None, password: bytes) -> Account | None:
    from argon2.exceptions import InvalidHashError, VerificationError
    hasher = _hasher()
    if not _DECOY:
        _DECOY.append(hasher.hash(b"not a password of anyone"))
    try:
        hasher.verify(account.hash if account is not None else _DECOY[0], password or b"\0")
    except (VerificationError, InvalidHashError):
        return None
    return account if password else None


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(INVALID, f"bad role {role!r}: one of {', '.join(ROLES)}")


def row(account: Account) -> dict:
    """An account as the cluster's stream and Redis hash carry it."""
    return asdict(account)


def from_row(data: dict) -> Account:
    """... and back (ValueError, KeyError, TypeError when it does not parse)."""
    return _account(data)


def _account(row: dict) -> Account:
    role = str(row["role"])
    if role not in ROLES:
        raise ValueError(f"bad role {role!r}")
    digest = str(row["hash"])
    if not digest.startswith("$argon2id$"):
        raise ValueError(f"the account {row['name']!r} has no Argon2id hash")
    return Account(str(row["name"]), role, digest, float(row["since"]), int(row["by_uid"]))
