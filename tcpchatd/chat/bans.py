"""Bans that last: addresses, networks and nicknames, kept in `bans.json` in state_dir.

A target is an address or network when it parses as one (`203.0.113.7`,
`2001:db8::/32`; an IPv4-mapped IPv6 peer matches IPv4 bans), else a nickname, compared
as nicknames are (nickname_key). The file is written atomically: a temporary file,
fsync, rename over the old one, fsync of the folder, so a crash or a power cut leaves
the old list or the new one, never a torn one. A file that does not parse stops the
start: an operator's bans are never silently emptied.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ..store.files import write_atomic
from ..wire.errors import CodedError
from ..wire.nicknames import looks_like_an_address, nickname_key

FILE_NAME = "bans.json"
FORMAT = 1
_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST_BAN = 3650 * 86400  # ten years; longer is a ban until unbanned (no --for)
# An end past every date the log, `bans` and the banned client can write (a file from a
# version that took any duration): kept as a ban with no end.
LAST_UNTIL = datetime(9999, 1, 1, tzinfo=UTC).timestamp()
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a change of the ban list can meet; the admin side turns each into its own code
# (control/commands.py): a bad request, no such ban, an internal error.
INVALID, UNKNOWN, UNWRITABLE = "invalid", "unknown", "unwritable"


class BanError(CodedError):
    """A ban that cannot be made or lifted (code INVALID, UNKNOWN or UNWRITABLE)."""


class BanListError(Exception):
    """bans.json cannot be read or does not parse (one line naming the file): the daemon
    does not start without its bans."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d` in seconds; BanError(INVALID) otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise BanError(INVALID, f"bad duration {text!r}: write it like 90s, "
                         "15m, 2h or 7d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > LONGEST_BAN:
        raise BanError(INVALID, f"duration {text!r} is longer than "
                         f"{LONGEST_BAN // 86400}d: leave --for out for a ban until unbanned")
    return seconds


def parse_target(text: str) -> tuple[str, Network | None]:
    """(the target as kept, its network or None for a nickname); BanError(INVALID) if
    empty or an address that is not one."""
    text = text.strip()
    if not text:
        raise BanError(INVALID, "a ban needs a target: an address, a network "
                         "or a nickname")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        if "/" in text or looks_like_an_address(text):  # `127.1`: never silently a nickname
            raise BanError(INVALID, f"bad address or network {text!r}: write "
                             "a whole address (127.0.0.1) or a network (10.0.0.0/8); no "
                             "nickname looks like an address") from None
        return text, None
    first = network.network_address
    if isinstance(first, ipaddress.IPv6Address) and network.prefixlen >= 96 and \
            first.ipv4_mapped is not None:
        network = ipaddress.ip_network(f"{first.ipv4_mapped}/{network.prefixlen - 96}")
    return str(network if network.num_addresses > 1 else network.network_address), network


def peer_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped:  # a dual-stack socket's IPv4 peer
        return address.ipv4_mapped
    return address


def iso(moment: float | None) -> str | None:
    if moment is None or moment >= LAST_UNTIL:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def _until(value: Any) -> float | None:
    """A ban's end as kept in the file (None, or far beyond any date: no end)."""
    if value is None:
        return None
    until = float(value)  # ValueError, TypeError: the file does not parse
    if until != until:
        raise ValueError("a ban ends at NaN")
    return None if until >= LAST_UNTIL else until


@dataclass(frozen=True)
class Ban:
    target: str
    until: float | None  # epoch seconds; None: until unbanned
    reason: str
    by_uid: int      # the operator's uid (-1: a moderator, from a chat client)
    since: float
    by: str = ""     # the moderator's account, when a moderator made it
    account: bool = False  # target is an account: its logins are refused, its members out

    @property
    def network(self) -> Network | None:
        if self.account:
            return None
        try:
            return ipaddress.ip_network(self.target, strict=False)
        except ValueError:
            return None

    def how_long(self) -> str:
        return f"until {iso(self.until)}" if iso(self.until) is not None else "with no end"

    def describe(self) -> str:
        """For the banned client: the reason and how long."""
        return f"banned ({self.reason}), {self.how_long()}"

    def record(self) -> dict:
        """As `tcpchatctl bans` shows it."""
        return {"target": self.target, "until": iso(self.until), "reason": self.reason,
                "by_uid": self.by_uid, "since": iso(self.since),
                **({"by": self.by} if self.by else {}),
                **({"account": True} if self.account else {})}


class BanList:
    """The bans in force; the file is rewritten on every change. Thread-safe."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self._lock = threading.Lock()
        self._bans: dict[str, Ban] = {}  # key: the network's text or the nickname_key

    @staticmethod
    def _key(target: str, network: Network | None, account: bool = False) -> str:
        if account:
            return "account:" + nickname_key(target)
        return str(network) if network is not None else "nick:" + nickname_key(target)

    # --- the file

    def load(self) -> None:
        """Read bans.json if it exists; BanListError naming the file if it does not parse."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a format {FORMAT} ban list")
            bans = [Ban(str(b["target"]), _until(b["until"]), str(b["reason"]),
                        int(b["by_uid"]), float(b["since"]), str(b.get("by", "")),
                        bool(b.get("account", False)))
                    for b in data["bans"]]
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BanListError(f"cannot read the ban list {self.path}: {exc.strerror}") \
                from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BanListError(f"the ban list {self.path} does not parse ({exc}); fix or "
                               "move it, the daemon will not start without its bans") from None
        with self._lock:
            self._bans = {self._key(b.target, b.network, b.account): b for b in bans}

    def _save(self, bans: dict[str, Ban]) -> None:
        """Atomically (store/files.py): the old list or the new one, never a torn one."""
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        body = json.dumps({"format": FORMAT, "bans": [asdict(b) for b in bans.values()]},
                          ensure_ascii=False, indent=1).encode("utf-8")
        write_atomic(self.path, body, 0o640)

    def _change(self, bans: dict[str, Ban]) -> None:
        """Under the lock: write the new list, then make it the one in force."""
        try:
            self._save(bans)
        except OSError as exc:
            raise BanError(UNWRITABLE, f"cannot write the ban list {self.path}: "
                             f"{exc.strerror or exc}; nothing was changed") from None
        self._bans = bans

    # --- an upgrade: the list in force handed over (the new image never reads the file)

    def export_state(self) -> list:
        """[key, ban] of each ban in force (the key: a new version's nickname_key may
        differ, and a ban keeps the one it was made with)."""
        with self._lock:
            return [[key, asdict(ban)] for key, ban in self._bans.items()]

    def import_state(self, rows: list) -> None:
        with self._lock:
            self._bans = {key: Ban(**ban) for key, ban in rows}

    # --- changes

    @staticmethod
    def make(target: str, seconds: float | None, reason: str, by_uid: int,
             force: bool = False, by: str = "", account: bool = False) -> Ban:
        """A ban of TARGET (an account's name with `account`), checked, not yet in force
        (see put)."""
        if account:
            target = target.strip()
            if not target:
                raise BanError(INVALID, "an account ban needs the account's name")
            now = time.time()
            return Ban(target, None if seconds is None else now + seconds, reason, by_uid,
                       now, by, True)
        kept, network = parse_target(target)
        if network is not None and network.prefixlen == 0 and not force:
            raise BanError(INVALID, f"{kept} matches every address: add --force "
                             "if you mean to ban everyone")
        now = time.time()
        return Ban(kept, None if seconds is None else now + seconds, reason, by_uid, now, by)

    def add(self, target: str, seconds: float | None, reason: str, by_uid: int,
            force: bool = False) -> Ban:
        ban = self.make(target, seconds, reason, by_uid, force)
        self.put(ban)
        return ban

    def put(self, ban: Ban) -> None:
        """A ban in force from now (made here, or by another node of the cluster: kept
        here too, as it was made)."""
        with self._lock:
            self._change({**self._bans, self._key(ban.target, ban.network, ban.account): ban})

    def remove(self, target: str, account: bool = False) -> Ban:
        kept, network = (target.strip(), None) if account else parse_target(target)
        key = self._key(kept, network, account)
        with self._lock:
            ban = self._bans.get(key)
            if ban is None:
                raise BanError(UNKNOWN, f"no such ban: {'account ' if account else ''}{kept}")
            self._change({k: b for k, b in self._bans.items() if k != key})
        return ban

    def expire(self, now: float | None = None) -> list[Ban]:
        """Drop the bans whose time is up; the ones dropped (an unwritable file keeps them)."""
        now = time.time() if now is None else now
        with self._lock:
            ended = [b for b in self._bans.values() if b.until is not None and b.until <= now]
            if not ended:
                return []
            try:
                self._change({k: b for k, b in self._bans.items() if b not in ended})
            except BanError:
                return []
        return ended

    # --- lookups

    def all(self) -> list[Ban]:
        with self._lock:
            return sorted(self._bans.values(), key=lambda b: b.since)

    def for_address(self, ip: str) -> Ban | None:
        """The ban matching a peer's address (live ones only), or None."""
        address = peer_address(ip)
        now = time.time()
        with self._lock:
            bans = list(self._bans.values())
        for ban in bans:
            network = ban.network
            if network is not None and network.version == address.version \
                    and address in network and (ban.until is None or ban.until > now):
                return ban
        return None

    def for_account(self, name: str) -> Ban | None:
        with self._lock:
            ban = self._bans.get("account:" + nickname_key(name))
        if ban is not None and (ban.until is None or ban.until > time.time()):
            return ban
        return None

    def for_nickname(self, nickname: str) -> Ban | None:
        with self._lock:
            ban = self._bans.get("nick:" + nickname_key(nickname))
        if ban is not None and (ban.until is None or ban.until > time.time()):
            return ban
        return None

    def matches(self, ban: Ban, nickname: str | None, ip: str,
                account: str | None = None) -> bool:
        """True when a connected client (nickname, address, account) falls under the ban."""
        if ban.account:
            return account is not None and nickname_key(account) == nickname_key(ban.target)
        network = ban.network
        if network is None:
            return nickname is not None and nickname_key(nickname) == nickname_key(ban.target)
        if not ip:  # an address not known (another node's member that did not say)
            return False
        address = peer_address(ip)
        return address.version == network.version and address in network
