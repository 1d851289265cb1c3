"""The admin command table: who, kick, stats, say, ban, unban, bans (built once, looked up
by name)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from .. import __version__
from ..wire import errors, protocol
from .admin import Caller, Command, Deferred
from ..chat.bans import BanList, iso, parse_duration
from ..wire.errors import AdminError
from ..chat.room import NoSuchMember, Room
from .specs import SPECS

DEFAULT_KICK_REASON = "kicked by an operator"


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
          upgrades: Callable[[], int] = lambda: 0) -> dict[str, Command]:
    """{name: command(args, caller) -> result}; each command reads live state
    (tls_expiry: when the TLS certificate in use expires, None without TLS; upgrade:
    the daemon's hitless upgrade, upgrade(conn, request_id, check) -> result)."""
    started = time.monotonic()

    def who(args: dict, caller: Caller) -> dict:
        now = time.monotonic()
        clients = [{
            "nickname": member.nickname,
            "address": member.address,
            "connected": datetime.fromtimestamp(member.connected, timezone.utc)
                                 .isoformat(timespec="seconds").replace("+00:00", "Z"),
            "idle_s": round(now - member.last_active, 3),
            "sent": member.sent,
            "received": member.received,
            "tls": member.tls,
        } for member in room.members()]
        clients.sort(key=lambda c: c["nickname"].casefold())
        return {"clients": clients}

    def kick(args: dict, caller: Caller) -> dict:
        nickname = _string_arg(args, "nickname")
        reason = _string_arg(args, "reason", required=False) or DEFAULT_KICK_REASON
        try:
            kicked = room.kick(nickname, reason)
        except NoSuchMember:  # the room's error, in the admin protocol's words
            raise AdminError(errors.NO_SUCH_NICKNAME, f"no such nickname: {nickname}") from None
        log.event("kick", nick=kicked, reason=reason, uid=caller.uid, pid=caller.pid)
        return {"kicked": kicked}

    def stats(args: dict, caller: Caller) -> dict:
        counters = room.counters
        result = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - started, 3),
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

    def ban(args: dict, caller: Caller) -> dict:
        target = _string_arg(args, "target")
        duration = _string_arg(args, "for", required=False)
        reason = _string_arg(args, "reason", required=False) or DEFAULT_BAN_REASON
        force = args.get("force", False)
        if not isinstance(force, bool):
            raise AdminError(errors.BAD_REQUEST, "argument 'force' must be true or false")
        added = banlist().add(target, parse_duration(duration) if duration else None, reason,
                              caller.uid, force)
        log.event("ban", target=added.target, until=iso(added.until), reason=reason,
                  uid=caller.uid, pid=caller.pid)
        kicked = []
        for member in room.members():  # everyone it matches leaves at once
            if banlist().matches(added, member.nickname, member.ip):
                member.close("kicked", protocol.kick_frame(reason), detail=reason)
                log.event("kick", nick=member.nickname, reason=reason, uid=caller.uid,
                          pid=caller.pid)
                kicked.append(member.nickname)
        return {"banned": added.target, "until": iso(added.until),
                "kicked": sorted(kicked, key=str.casefold)}

    def unban(args: dict, caller: Caller) -> dict:
        removed = banlist().remove(_string_arg(args, "target"))
        log.event("unban", target=removed.target, uid=caller.uid, pid=caller.pid)
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

    handlers = {"who": who, "kick": kick, "stats": stats, "say": say, "ban": ban,
                "unban": unban, "bans": list_bans, "upgrade": upgrade_daemon}
    assert handlers.keys() == SPECS.keys(), "specs.py and the handlers name the same commands"
    return handlers
