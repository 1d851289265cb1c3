"""The admin command table: who, kick, stats, say, ban, unban, bans (built once, looked up
by name)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from typing import Any, Callable

from .. import __version__
from ..wire import errors, protocol
from .admin import Caller, Command, Deferred
from ..chat.bans import Ban, BanList, iso, parse_duration
from ..wire.errors import AdminError
from ..chat.room import NoSuchMember, Room
from .specs import SPECS

DEFAULT_KICK_REASON = "kicked by an operator"
STATS_GATHER = 1.0  # seconds `stats` waits for the other nodes of a cluster


def _string_arg(args: dict, name: str, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise AdminError(errors.BAD_REQUEST, f"argument {name!r} must be a non-empty string")
    return value


DEFAULT_BAN_REASON = "banned by an operator"


def build(room: Room, log: Any, bans: BanList | None = None,
          tls_expiry: Callable[[], datetime | None] = lambda: None,
          upgrade: Callable[[Any, Any, bool], dict] | None = None,
          upgrades: Callable[[], int] = lambda: 0,
          started_at: Callable[[], float] | None = None) -> dict[str, Command]:
    """{name: command(args, caller) -> result}; each command reads live state
    (tls_expiry: when the TLS certificate in use expires, None without TLS; upgrade:
    the daemon's hitless upgrade, upgrade(conn, request_id, check) -> result)."""
    started = started_at or (lambda now=time.monotonic(): now)  # carried by upgrades

    broker = room.broker
    node = {"node": broker.node} if broker.node else {}  # the column only in a cluster

    def who(args: dict, caller: Caller) -> dict:
        now = time.monotonic()
        clients = [{
            "nickname": member.nickname,
            "address": member.address,
            "connected": _iso(member.connected),
            "idle_s": round(now - member.last_active, 3),
            "sent": member.sent,
            "received": member.received,
            "tls": member.tls,
            "post": member.quiet,
            **node,
        } for member in room.members()] + [{
            "nickname": remote.nickname, "address": remote.address,
            "connected": _iso(remote.connected), "idle_s": None, "sent": None,
            "received": None, "tls": remote.tls, "post": remote.quiet, "node": remote.node,
        } for remote in room.remote_members()]
        clients.sort(key=lambda c: c["nickname"].casefold())
        return {"clients": clients}

    def kick(args: dict, caller: Caller) -> dict:
        nickname = _string_arg(args, "nickname")
        reason = _string_arg(args, "reason", required=False) or DEFAULT_KICK_REASON
        try:
            kicked = room.kick(nickname, reason)
        except NoSuchMember:  # the room's error, in the admin protocol's words
            elsewhere = room.node_of(nickname)
            if elsewhere is None:
                raise AdminError(errors.NO_SUCH_NICKNAME,
                                 f"no such nickname: {nickname}") from None
            broker.publish({"kind": "kick", "nick": nickname, "reason": reason})
            log.event("kick", nick=nickname, reason=reason, uid=caller.uid, pid=caller.pid,
                      node=elsewhere)
            return {"kicked": nickname, "node": elsewhere}
        log.event("kick", nick=kicked, reason=reason, uid=caller.uid, pid=caller.pid)
        return {"kicked": kicked}

    def stats(args: dict, caller: Caller) -> dict:
        result = node_stats()
        if broker.node is None:
            return result
        replies, silent = broker.gather(result, STATS_GATHER)
        totals = {key: sum(r.get(key, 0) for r in replies.values())
                  for key in ("clients", "messages", "deliveries", "confirms", "undelivered")}
        result["cluster"] = {"nodes": sorted(replies), **totals, "silent": silent}
        return result

    def node_stats() -> dict:
        counters = room.counters
        result = {
            **node,
            "version": __version__,
            "uptime_s": round(time.monotonic() - started(), 3),
            "clients": len(room),
            "messages": counters.messages,
            "deliveries": counters.deliveries,
            "confirms": counters.confirms,
            "undelivered": counters.undelivered,
            "send_queue_disconnects": counters.send_queue_disconnects,
            "log_dropped": log.dropped,
            "upgrades": upgrades(),
        }
        expires = tls_expiry()
        if expires is not None:
            result["tls_cert_expires"] = expires.isoformat().replace("+00:00", "Z")
        return result

    def say(args: dict, caller: Caller) -> dict:
        return {"clients": room.announce(_string_arg(args, "text"))}

    def kick_matching(ban: Ban, uid: object, pid: object) -> list[str]:
        """Every member of this node the ban matches leaves at once, told it is a ban."""
        kicked = []
        for member in room.members():
            if banlist().matches(ban, member.nickname, member.ip):
                member.close("banned", protocol.ban_frame(ban.reason, ban.how_long()),
                             detail=ban.reason)
                log.event("kick", nick=member.nickname, reason=ban.reason, uid=uid, pid=pid,
                          ban="yes")
                kicked.append(member.nickname)
        return kicked

    def ban(args: dict, caller: Caller) -> dict:
        target = _string_arg(args, "target")
        duration = _string_arg(args, "for", required=False)
        reason = _string_arg(args, "reason", required=False) or DEFAULT_BAN_REASON
        force = args.get("force", False)
        if not isinstance(force, bool):
            raise AdminError(errors.BAD_REQUEST, "argument 'force' must be true or false")
        made = banlist().make(target, parse_duration(duration) if duration else None, reason,
                              caller.uid, force)
        matched = sorted([m.nickname for m in room.members()
                          if banlist().matches(made, m.nickname, m.ip)] +
                         [r.nickname for r in room.remote_members()
                          if banlist().matches(made, r.nickname, r.ip)], key=str.casefold)
        limit = room.config.ban_force_over
        if len(matched) > limit and not force:  # a wide ban never kicks without asking
            shown = ", ".join(matched[:20]) + (f" and {len(matched) - 20} more"
                                               if len(matched) > 20 else "")
            raise AdminError(errors.BAD_REQUEST, f"banning {made.target} would kick "
                             f"{len(matched)} members ({shown}); add --force if you mean it")
        banlist().put(made)
        log.event("ban", target=made.target, until=iso(made.until), reason=reason,
                  uid=caller.uid, pid=caller.pid)
        broker.publish({"kind": "ban", "ban": dataclasses.asdict(made)})
        kick_matching(made, caller.uid, caller.pid)  # the other nodes kick theirs
        return {"banned": made.target, "until": iso(made.until), "kicked": matched}

    def unban(args: dict, caller: Caller) -> dict:
        removed = banlist().remove(_string_arg(args, "target"))
        log.event("unban", target=removed.target, uid=caller.uid, pid=caller.pid)
        broker.publish({"kind": "unban", "target": removed.target})
        return {"unbanned": removed.target}

    def upgrade_daemon(args: dict, caller: Caller) -> Deferred:
        check = args.get("check", False)
        if not isinstance(check, bool):
            raise AdminError(errors.BAD_REQUEST, "argument 'check' must be true or false")
        if upgrade is None:
            raise AdminError(errors.INTERNAL, "this daemon cannot upgrade itself")
        return Deferred(lambda conn, request_id: upgrade(conn, request_id, check))

    def list_bans(args: dict, caller: Caller) -> dict:
        return {"bans": [b.record() for b in banlist().all()]}

    def banlist() -> BanList:
        if bans is None:
            raise AdminError(errors.INTERNAL, "this daemon keeps no bans")
        return bans

    def from_other_node(event: dict) -> None:
        """What an operator asked on another node (the broker's reader calls this)."""
        kind, origin = event["kind"], event.get("node")
        if kind == "kick":
            try:
                kicked = room.kick(event["nick"], event["reason"])
            except NoSuchMember:
                return
            log.event("kick", nick=kicked, reason=event["reason"], node=origin)
        elif kind == "ban" and bans is not None:
            ban = Ban(**event["ban"])
            bans.put(ban)
            log.event("ban", target=ban.target, until=iso(ban.until), reason=ban.reason,
                      node=origin)
            kick_matching(ban, None, None)
        elif kind == "unban" and bans is not None:
            try:
                bans.remove(event["target"])
            except AdminError:
                return  # not here (added while this node was cut off)
            log.event("unban", target=event["target"], node=origin)
        elif kind == "stats":
            broker.reply(event["reply"], node_stats())

    handlers = {"who": who, "kick": kick, "stats": stats, "say": say, "ban": ban,
                "unban": unban, "bans": list_bans, "upgrade": upgrade_daemon}
    assert handlers.keys() == SPECS.keys(), "specs.py and the handlers name the same commands"
    return handlers, from_other_node


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")
