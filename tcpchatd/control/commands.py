"""The daemon's admin commands: one method per command (supervisor's `do_*`), the table
of them built once from specs.py, looked up by name (never getattr on a peer's input:
the names come from SPECS). Errors of the chat side (a bad ban) are turned into the
admin protocol's codes here, at the boundary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

from .. import __version__
from ..chat.accounts import EXISTS as ACCOUNT_EXISTS
from ..chat.accounts import INVALID as ACCOUNT_INVALID
from ..chat.accounts import UNKNOWN as ACCOUNT_UNKNOWN
from ..chat.accounts import AccountBook, AccountError, from_row, row
from ..chat.bans import INVALID, UNKNOWN, Ban, BanError, BanList, iso, parse_duration
from ..chat.hall import EventLog, Hall, Member, NoSuchMember, NoSuchRoom, NotInRoom
from ..store.history import HistoryError, HistoryStore, parse_time
from ..wire.errors import ProtocolError
from ..wire.nicknames import nickname_key
from . import errors
from .admin import Caller, Command, Deferred
from .errors import AdminError
from .specs import SPECS

DEFAULT_KICK_REASON = "kicked by an operator"
DEFAULT_BAN_REASON = "banned by an operator"
OPERATOR = "operator"  # who set a topic from tcpchatctl
STATS_GATHER = 1.0  # seconds `stats` waits for the other nodes of a cluster
BAN_ERROR_CODES = {INVALID: errors.BAD_REQUEST, UNKNOWN: errors.NO_SUCH_BAN}  # else internal
ACCOUNT_ERROR_CODES = {ACCOUNT_INVALID: errors.BAD_REQUEST, ACCOUNT_UNKNOWN: errors.NO_SUCH_ACCOUNT,
                       ACCOUNT_EXISTS: errors.ACCOUNT_EXISTS}

Upgrade = Callable[[Any, Any, bool], dict]


def _string_arg(args: dict, name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise AdminError(errors.BAD_REQUEST, f"argument {name!r} must be a non-empty string")
    return value


def _optional_arg(args: dict, name: str) -> str | None:
    return None if args.get(name) is None else _string_arg(args, name)


def _flag_arg(args: dict, name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise AdminError(errors.BAD_REQUEST, f"argument {name!r} must be true or false")
    return value


def _target(args: dict, key: str) -> tuple[str, bool, str | None]:
    """(the target, it names an account, the reason) of a kick, ban or unban: `key`'s
    value, or with `account` the account's name (then words given where the target goes
    begin the reason: `kick --account ann too rude`)."""
    reason = _optional_arg(args, "reason")
    account = _optional_arg(args, "account")
    if account is None:
        return _string_arg(args, key), False, reason
    words = " ".join(w for w in (_optional_arg(args, key), reason) if w)
    return account, True, words or None


def _room_field(room: str | None) -> dict[str, str]:
    """A log line's room, when the command named one."""
    return {"room": room.lstrip("#")} if room else {}


def _no_such_room(exc: NoSuchRoom) -> NoReturn:
    raise AdminError(errors.NO_SUCH_ROOM, f"no such room: #{exc.room.lstrip('#')}") from None


def _ban_refused(exc: BanError) -> NoReturn:
    """A ban list's error in the admin protocol's words."""
    raise AdminError(BAN_ERROR_CODES.get(exc.code, errors.INTERNAL), exc.message) from None


@dataclass(frozen=True)
class ChatCaller:
    """A moderator acting from a chat client (the admin socket's callers are Caller)."""

    nickname: str
    account: str


def _by(caller: Caller | ChatCaller) -> dict[str, Any]:
    """Who did it, for the log: the operator's uid and pid, or the moderator."""
    if isinstance(caller, ChatCaller):
        return {"by": caller.nickname, "account": caller.account}
    return {"uid": caller.uid, "pid": caller.pid}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


class CountedLog(EventLog, Protocol):
    """The traffic log, with its count of lines dropped (for `stats`)."""

    dropped: int


class AdminCommands:
    """Every command reads live state: the hall (its rooms), the bans, the log's counters, the TLS
    certificate in use (tls_expiry: None without TLS), the daemon's hitless upgrade
    (upgrade(conn, request_id, check) -> result) and its counts."""

    def __init__(self, hall: Hall, log: CountedLog, bans: BanList | None = None,
                 tls_expiry: Callable[[], datetime | None] = lambda: None,
                 upgrade: Upgrade | None = None, upgrades: Callable[[], int] = lambda: 0,
                 started_at: Callable[[], float] | None = None,
                 traffic_counters: Callable[[], dict[str, Any]] = dict) -> None:
        self.hall, self.log, self.bans = hall, log, bans
        self.broker = hall.broker
        self.tls_expiry, self.upgrade, self.upgrades = tls_expiry, upgrade, upgrades
        self.traffic_counters = traffic_counters  # the listeners' (ChatServer.counters)
        started = time.monotonic()
        self.started_at = started_at or (lambda: started)  # carried by upgrades
        # the node column only in a cluster
        self.node = {"node": self.broker.node} if self.broker.node else {}

    def table(self) -> dict[str, Command]:
        """{name: command(args, caller) -> result}, one per command of specs.py."""
        return {name: getattr(self, f"do_{name}") for name in SPECS}

    # --- the commands

    def do_who(self, args: dict, caller: Caller) -> dict:
        now = time.monotonic()
        hall, room = self.hall, _optional_arg(args, "room")
        if room is None:
            members, remotes = hall.members(), hall.remote_members()
        else:
            try:
                room, members, remotes = hall.room_members(room)
            except NoSuchRoom as exc:
                _no_such_room(exc)
        names = {key: hall.rooms.get(key) for r in remotes for key in r.rooms}
        clients: list[dict[str, Any]] = [{
            "nickname": member.nickname, "address": member.address,
            "connected": _iso(member.connected), "idle_s": round(now - member.last_active, 3),
            "sent": member.sent, "received": member.received, "tls": member.tls,
            "via": member.via,
            "post": member.quiet, "rooms": hall.rooms_of(member), **self.node,
            "account": member.account, "role": member.role,
        } for member in members] + [{
            "nickname": remote.nickname, "address": remote.address,
            "connected": _iso(remote.connected), "idle_s": None, "sent": None,
            "received": None, "tls": remote.tls, "post": remote.quiet, "node": remote.node,
            "via": remote.via,
            "account": remote.account, "role": remote.role,
            "rooms": [r.name for r in (names.get(key) for key in list(remote.rooms))
                      if r is not None],
        } for remote in remotes]
        clients.sort(key=lambda c: c["nickname"].casefold())
        return {"clients": clients, **({"room": room} if room is not None else {})}

    def do_rooms(self, args: dict, caller: Caller) -> dict:
        return {"rooms": self.hall.room_list()}

    def do_kick(self, args: dict, caller: Caller) -> dict:
        nickname, account, reason = _target(args, "nickname")
        if account:  # every member logged in to it (a bot's several connections)
            return self._kick_account(nickname, reason, args, caller)
        reason = reason or DEFAULT_KICK_REASON
        room = _optional_arg(args, "room")
        try:
            kicked = self.hall.kick(nickname, reason, room)
        except NoSuchRoom as exc:
            _no_such_room(exc)
        except NotInRoom as exc:
            raise AdminError(errors.NOT_IN_ROOM,
                             f"{exc.nickname} is not in #{exc.room}") from None
        except NoSuchMember:  # the hall's error, in the admin protocol's words
            elsewhere = self.hall.node_of(nickname)
            if elsewhere is None:
                raise AdminError(errors.NO_SUCH_NICKNAME,
                                 f"no such nickname: {nickname}") from None
            self.broker.publish({"kind": "kick", "nick": nickname, "reason": reason,
                                 "room": room})
            self.log.event("kick", nick=nickname, **_room_field(room), reason=reason,
                           **_by(caller), node=elsewhere)
            return {"kicked": nickname, "node": elsewhere,
                    **({"room": room.lstrip("#")} if room else {})}
        self.log.event("kick", nick=kicked, **_room_field(room), reason=reason,
                       **_by(caller))
        return {"kicked": kicked, **({"room": room.lstrip("#")} if room else {})}

    def _kick_account(self, account: str, reason: str | None, args: dict,
                      caller: Caller) -> dict:
        key = nickname_key(account)
        members = sorted({nick for nick in self.hall.matching(
            lambda nick, ip, their: their is not None and nickname_key(their) == key)},
            key=str.casefold)
        if not members:
            raise AdminError(errors.NO_SUCH_NICKNAME, f"nobody is logged in to account "
                             f"{account}")
        kicked = []
        for nickname in members:
            try:
                done = self.do_kick({**{k: v for k, v in args.items()
                                        if k not in ("account", "nickname", "reason")},
                                     "nickname": nickname,
                                     **({"reason": reason} if reason else {})}, caller)
            except AdminError:
                continue  # left meanwhile, or not in that room
            kicked.append(done["kicked"])
        room = _optional_arg(args, "room")
        return {"kicked": ", ".join(kicked), "account": account,
                **({"room": room.lstrip("#")} if room else {})}

    def do_stats(self, args: dict, caller: Caller) -> dict:
        result = self.node_stats()
        if self.broker.node is None:
            return result
        replies, silent = self.broker.gather(result, STATS_GATHER)
        totals = {key: sum(r.get(key, 0) for r in replies.values())
                  for key in ("clients", "messages", "deliveries", "confirms", "undelivered")}
        result["cluster"] = {"nodes": sorted(replies), **totals, "silent": silent}
        return result

    def do_say(self, args: dict, caller: Caller) -> dict:
        room = _optional_arg(args, "room")
        text = _string_arg(args, "text")
        try:
            reached = self.hall.announce(text, room)
        except NoSuchRoom as exc:
            _no_such_room(exc)
        self.log.event("announce", **_room_field(room), text=text, **_by(caller))
        return {"clients": reached, **({"room": room.lstrip("#")} if room else {})}

    def do_topic(self, args: dict, caller: Caller) -> dict:
        name = _string_arg(args, "room")
        text = _optional_arg(args, "text")
        clear = _flag_arg(args, "clear")
        try:
            if text is None and not clear:
                rooms = {r["room"]: r for r in self.hall.room_list()}
                room = self.hall.room_named(name)
                if room is None:
                    raise NoSuchRoom(name)
                return {"room": room.name, "topic": rooms[room.name]["topic"]}
            room_name = self.hall.set_topic(name, "" if clear else text or "", OPERATOR)
        except NoSuchRoom as exc:
            _no_such_room(exc)
        except ProtocolError as exc:  # too long
            raise AdminError(errors.BAD_REQUEST, exc.message) from None
        return {"room": room_name, "topic": "" if clear else text}

    def do_ban(self, args: dict, caller: Caller) -> dict:
        target, account, reason = _target(args, "target")
        duration = _optional_arg(args, "for")
        reason = reason or DEFAULT_BAN_REASON
        force = _flag_arg(args, "force")
        bans = self._banlist()
        try:
            made = bans.make(target, parse_duration(duration) if duration else None, reason,
                             getattr(caller, "uid", -1), force, getattr(caller, "account", ""),
                             account)
        except BanError as exc:
            _ban_refused(exc)
        matched = sorted(self.hall.matching(lambda nick, ip, account: bans.matches(
                             made, nick, ip, account)),
                         key=str.casefold)
        limit = self.hall.config.ban_force_over
        if len(matched) > limit and not force:  # a wide ban never kicks without asking
            shown = ", ".join(matched[:20]) + (f" and {len(matched) - 20} more"
                                               if len(matched) > 20 else "")
            raise AdminError(errors.BAD_REQUEST, f"banning {made.target} would kick "
                             f"{len(matched)} members ({shown}); add --force if you mean it")
        try:
            bans.put(made)
        except BanError as exc:
            _ban_refused(exc)
        self.log.event("ban", target=made.target, account_ban="yes" if account else None,
                       until=iso(made.until), reason=reason, **_by(caller))
        self.broker.publish({"kind": "ban", "ban": dataclasses.asdict(made)})
        self._ban_out(made, caller)  # the other nodes disconnect theirs
        return {"banned": made.target, "until": iso(made.until), "kicked": matched,
                **({"account": True} if account else {})}

    def do_unban(self, args: dict, caller: Caller) -> dict:
        target, account, _ = _target(args, "target")
        try:
            removed = self._banlist().remove(target, account)
        except BanError as exc:
            _ban_refused(exc)
        self.log.event("unban", target=removed.target, account_ban="yes" if account else None,
                       **_by(caller))
        self.broker.publish({"kind": "unban", "target": removed.target, "account": account})
        return {"unbanned": removed.target, **({"account": True} if account else {})}

    def do_bans(self, args: dict, caller: Caller) -> dict:
        return {"bans": [b.record() for b in self._banlist().all()]}

    def do_account(self, args: dict, caller: Caller) -> dict:
        action = _string_arg(args, "action")
        book = self._book()
        try:
            if action == "list":
                return {"accounts": [a.record() for a in book.all()]}
            name = _string_arg(args, "name")
            if action == "add":
                account = book.add(name, _string_arg(args, "password"),
                                   _optional_arg(args, "role") or "user", caller.uid)
            elif action == "passwd":
                account = book.passwd(name, _string_arg(args, "password"))
            elif action == "role":
                account = book.set_role(name, _string_arg(args, "role"))
            elif action == "del":
                account = book.remove(name)
            else:
                raise AdminError(errors.BAD_REQUEST, f"unknown account action {action!r}: "
                                 "add, passwd, del, list or role")
        except AccountError as exc:
            raise AdminError(ACCOUNT_ERROR_CODES.get(exc.code, errors.INTERNAL),
                             exc.message) from None
        self.log.event(f"account_{action}", account=account.name, role=account.role,
                       **_by(caller))
        return {"action": action, **account.record()}

    def _book(self) -> AccountBook:
        if self.hall.logins is None:
            raise AdminError(errors.INTERNAL, "this daemon keeps no accounts")
        return self.hall.logins.book

    def moderate(self, member: Member, cmd: str, fields: dict[str, str | None]) -> str:
        """A moderator's kick, ban or unban from a chat client, as the admin commands do
        them (logged with the moderator's nickname and account); the line it is told.
        ProtocolError with the admin code when refused."""
        caller = ChatCaller(member.nickname, member.account or "")
        args = {key: value for key, value in fields.items() if value}
        if cmd == "ban" and "duration" in args:
            args["for"] = args.pop("duration")
        try:
            result = getattr(self, f"do_{cmd}")(args, caller) \
                if cmd in ("kick", "ban", "unban") else None
        except AdminError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        if result is None:
            raise ProtocolError(errors.UNKNOWN_COMMAND, f"no moderator's command {cmd!r}")
        return SPECS[cmd].show(result)

    def do_history(self, args: dict, caller: Caller) -> dict:
        store = self._history()
        name = _string_arg(args, "room")
        room = self.hall.room_named(name)
        if room is None:
            raise AdminError(errors.NO_SUCH_ROOM, f"no such room: #{name.lstrip('#')}")
        limit_text = _optional_arg(args, "limit") or str(self.hall.config.history_page)
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise AdminError(errors.BAD_REQUEST, f"--limit must be a whole number: "
                             f"{limit_text!r}")
        limit = int(limit_text)
        since = _optional_arg(args, "since")
        try:
            if since is None:
                kept, _ = store.page(room.key, None, limit).result()
            else:
                at = parse_time(since)
                if at is None:
                    raise AdminError(errors.BAD_REQUEST, f"--since takes an ISO 8601 time "
                                     f"(2026-12-06T09:00:00Z), not {since!r}")
                kept = store.since(room.key, at, limit).result()
        except HistoryError as exc:
            raise AdminError(errors.INTERNAL, str(exc)) from None
        return {"room": room.name, "messages": [k.shown() for k in kept]}

    def do_forget(self, args: dict, caller: Caller) -> dict:
        who = _string_arg(args, "who")
        try:
            count = self._history().forget(nickname_key(who)).result(timeout=30)
        except HistoryError as exc:
            raise AdminError(errors.INTERNAL, str(exc)) from None
        self.log.event("forget", who=who, count=count, **_by(caller))
        return {"who": who, "count": count}

    def _history(self) -> HistoryStore:
        if self.hall.history_store is None:
            raise AdminError(errors.INTERNAL, "this daemon keeps no lasting history "
                             "(history_store = no, or its database could not be opened)")
        return self.hall.history_store

    def do_upgrade(self, args: dict, caller: Caller) -> Deferred:
        check = _flag_arg(args, "check")
        upgrade = self.upgrade
        if upgrade is None:
            raise AdminError(errors.INTERNAL, "this daemon cannot upgrade itself")
        return Deferred(lambda conn, request_id: upgrade(conn, request_id, check))

    # --- shared by the commands and the other nodes' events

    def node_stats(self) -> dict:
        counters = self.hall.counters
        result = {
            **self.node,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at(), 3),
            "clients": len(self.hall),
            "messages": counters.messages,
            "deliveries": counters.deliveries,
            "confirms": counters.confirms,
            "undelivered": counters.undelivered,
            "send_queue_disconnects": counters.send_queue_disconnects,
            "log_dropped": self.log.dropped,
            "upgrades": self.upgrades(),
            "rooms": self.hall.room_stats(),
            **self._history_stats(),
        }
        expires = self.tls_expiry()
        if expires is not None:
            result["tls_cert_expires"] = expires.isoformat().replace("+00:00", "Z")
        return result

    def metrics_stats(self) -> dict:
        """node_stats and what only metrics show: bans, accounts, failed logins, the
        certificate's end in epoch seconds, the broker's link."""
        result = self.node_stats()
        result["bans"] = len(self.bans.all()) if self.bans is not None else 0
        by_transport: dict[str, int] = dict.fromkeys(("tcp", "tls", "web", "wss", "irc",
                                                      "ircs"), 0)
        for member in self.hall.members():
            by_transport[member.via] = by_transport.get(member.via, 0) + 1
        result["members_by_transport"] = by_transport
        counters = self.hall.counters
        result["receipts"] = {"settled": counters.receipts_settled,
                              "partial": counters.receipts_partial,
                              "expired": counters.receipts_expired}
        result.update(self.traffic_counters())  # protocol errors, floods, HTTP answers
        logins = self.hall.logins
        if logins is not None:
            result["accounts"] = len(logins.book)
            result["login_failures"] = logins.failed_count
        expires = self.tls_expiry()
        if expires is not None:
            result["tls_cert_expires_ts"] = expires.timestamp()
        if self.broker.node is not None:
            result["broker_up"] = 1 if getattr(self.broker, "linked", False) else 0
            result.update(self.broker.health())
        return result

    def _history_stats(self) -> dict:
        store = self.hall.history_store
        if store is None:
            return {"history": "off"}
        return {"history_written": store.written, "history_errors": store.errors,
                "history_dropped": store.dropped, "history_queue": store.queued()}

    def _ban_out(self, ban: Ban, caller: Caller | ChatCaller | None) -> None:
        """Every member of this node the ban matches leaves at once, told it is a ban."""
        bans = self._banlist()
        for nickname in self.hall.ban_out(lambda nick, ip, account: bans.matches(
                ban, nick, ip, account),
                                          ban.reason, ban.how_long()):
            self.log.event("kick", nick=nickname, reason=ban.reason,
                           **(_by(caller) if caller is not None else {}), ban="yes")

    def _banlist(self) -> BanList:
        if self.bans is None:
            raise AdminError(errors.INTERNAL, "this daemon keeps no bans")
        return self.bans

    def on_other_node(self, event: dict) -> None:
        """What an operator asked on another node (the broker's reader calls this)."""
        kind, origin = event["kind"], event.get("node")
        if kind == "kick":
            try:
                kicked = self.hall.kick(event["nick"], event["reason"], event.get("room"))
            except (NoSuchMember, NoSuchRoom, NotInRoom):
                return
            self.log.event("kick", nick=kicked, **_room_field(event.get("room")),
                           reason=event["reason"], node=origin)
        elif kind == "ban" and self.bans is not None:
            ban = Ban(**event["ban"])
            self.bans.put(ban)  # unwritable here: the broker logs the event not applied
            self.log.event("ban", target=ban.target, until=iso(ban.until), reason=ban.reason,
                           node=origin)
            self._ban_out(ban, None)
        elif kind == "unban" and self.bans is not None:
            try:
                self.bans.remove(event["target"], bool(event.get("account")))
            except BanError:
                return  # not here (added while this node was cut off)
            self.log.event("unban", target=event["target"], node=origin)
        elif kind == "stats":
            self.broker.reply(event["reply"], self.node_stats())
        elif kind == "account" and self.hall.logins is not None:
            try:
                account = from_row(event["account"]) if event["account"] else None
            except (ValueError, KeyError, TypeError):
                return
            self.hall.logins.book.put(account, str(event["key"]))
            self.log.event("account_sync", account=account.name if account else None,
                           key=event["key"], node=origin)
        elif kind == "accounts" and self.hall.logins is not None:  # linked: the cluster's
            rows = event["rows"] if isinstance(event.get("rows"), list) else []
            for account in self.hall.logins.book.merge(rows):  # ours, written up
                self.broker.publish({"kind": "account", "key": account.key,
                                     "account": row(account)})
