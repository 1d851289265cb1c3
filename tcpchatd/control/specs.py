"""The admin commands, once: name, arguments, help and how a result is printed.

tcpchatctl builds its command line and its requests from this table, the daemon checks
that its handlers (commands.py) are exactly these commands, and the man page and bash
completion come from tcpchatctl's parser. Adding a command is one entry here and one
handler there. Imports nothing of the daemon.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Arg:
    """One argument: `key` in the request's args; on the command line a positional, or
    `flag`, or (words) the rest of the command line joined by spaces."""
    key: str
    help: str
    flag: str | None = None
    words: bool = False
    required: bool = True
    boolean: bool = False
    metavar: str | None = None


@dataclass(frozen=True)
class Spec:
    name: str
    help: str
    description: str
    args: tuple[Arg, ...]
    show: Callable[[dict], str]
    one_of: tuple[str, ...] = ()  # args of which one at least must be given


# --- how results print (apart from the transport)

def display_width(text: str) -> int:
    """Columns a terminal gives `text`: wide East Asian characters take two, marks none."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def table(rows: list[tuple[str, ...]]) -> str:
    """Columns aligned by what a terminal shows, wide characters included."""
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell + " " * (w - display_width(cell))
                               for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def show_who(result: dict) -> str:
    clients = result["clients"]
    if not clients:
        return "no clients connected"
    tls = any(c.get("tls") for c in clients)  # the column only where TLS is served
    via = any(c.get("via") not in (None, "tcp", "tls") for c in clients)  # browsers, IRC
    post = any(c.get("post") for c in clients)  # ... this one only with posters
    node = any(c.get("node") for c in clients)  # ... and this one only in a cluster
    accounts = any(c.get("account") for c in clients)  # ... this one where some logged in
    # ... and the rooms where there are several (one room: what the original knew)
    rooms = any(c.get("rooms") != clients[0].get("rooms") or len(c.get("rooms") or ()) > 1
                for c in clients)

    def number(value: object, unit: str = "") -> str:
        return "-" if value is None else f"{value:.0f}{unit}" if unit else str(value)
    heading = f"#{result['room']}: {len(clients)} member{'' if len(clients) == 1 else 's'}\n" \
        if result.get("room") else ""
    return heading + table([("NICKNAME", "ADDRESS", "CONNECTED", "IDLE", "SENT", "RECEIVED")
                  + (("TLS",) if tls else ()) + (("VIA",) if via else ())
                  + (("POST",) if post else ())
                  + (("NODE",) if node else ()) + (("ACCOUNT",) if accounts else ())
                  + (("ROOMS",) if rooms else ())] + [
        (c["nickname"], c["address"], c["connected"], number(c["idle_s"], "s"),
         number(c["sent"]), number(c["received"]))
        + ((("yes" if c.get("tls") else "no"),) if tls else ())
        + ((c.get("via") or "tcp",) if via else ())
        + ((("yes" if c.get("post") else "no"),) if post else ())
        + ((c.get("node") or "",) if node else ())
        + ((_account_cell(c),) if accounts else ())
        + ((" ".join(f"#{r}" for r in c.get("rooms") or ()) or "-",) if rooms else ())
        for c in clients])


def _account_cell(client: dict) -> str:
    account = client.get("account")
    if not account:
        return "guest"
    role = client.get("role")
    return account if role in (None, "user") else f"{account} ({role})"


def show_account(result: dict) -> str:
    if "accounts" in result:
        if not result["accounts"]:
            return "no accounts"
        return table([("ACCOUNT", "ROLE", "SINCE", "BY UID")] + [
            (a["name"], a["role"], a["since"], str(a["by_uid"])) for a in result["accounts"]])
    done = {"add": "added", "passwd": "changed the password of", "del": "removed",
            "role": "changed the role of"}[result["action"]]
    return f"{done} account {result['name']} ({result['role']})"


def show_history(result: dict) -> str:
    if not result["messages"]:
        return f"#{result['room']}: no messages"
    return "\n".join(f"{m['time']}  {m['message']}" for m in result["messages"])


def show_rooms(result: dict) -> str:
    if not result["rooms"]:
        return "no rooms"
    return table([("ROOM", "MEMBERS", "TOPIC")] + [
        (f"#{r['room']}", str(r["members"]), r["topic"]) for r in result["rooms"]])


def show_stats(result: dict) -> str:
    cluster = result.get("cluster")
    rooms = result.get("rooms") or {}
    own = {key: value for key, value in result.items() if key not in ("cluster", "rooms")}
    width = max(len(key) for key in own)
    lines = [f"{key.ljust(width)}  {value}" for key, value in own.items()]
    if rooms:
        lines.append("rooms:")
        lines += ["  " + line for line in table(
            [("ROOM", "MEMBERS", "MESSAGES", "DELIVERIES", "UNDELIVERED")] + [
                (f"#{name}", *(str(counts[key]) for key in (
                    "members", "messages", "deliveries", "undelivered")))
                for name, counts in rooms.items()]).splitlines()]
    if cluster:
        lines.append("cluster:")
        width = max(len(key) for key in cluster)
        lines += [f"  {key.ljust(width)}  "
                  f"{', '.join(value) if isinstance(value, list) else value}"
                  for key, value in cluster.items()]
    return "\n".join(lines)


def show_ban(result: dict) -> str:
    until = f"until {result['until']}" if result["until"] else "permanently (until unbanned)"
    kicked = f"; kicked {', '.join(result['kicked'])}" if result["kicked"] else ""
    what = "account " if result.get("account") else ""
    return f"banned {what}{result['banned']} {until}{kicked}"


def show_bans(result: dict) -> str:
    if not result["bans"]:
        return "no bans"
    return table([("TARGET", "UNTIL", "SINCE", "BY", "REASON")] + [
        (f"account {b['target']}" if b.get("account") else b["target"],
         b["until"] or "permanent", b["since"],
         b.get("by") or f"uid {b['by_uid']}", b["reason"])
        for b in result["bans"]])


def show_upgrade(result: dict) -> str:
    if result.get("checked"):
        return "\n".join([f"pre-flight passed: tcpchatd {result['version']} would start"] + [
            f"warning: {warning}" for warning in result.get("warnings", [])])
    return (f"upgraded to tcpchatd {result['version']} (pid {result['pid']}); "
            f"{result['clients']} clients carried, pause {result['pause_ms']} ms")


def show_say(result: dict) -> str:
    where = f" in #{result['room']}" if result.get("room") else ""
    return f"announced to {result['clients']} client{'' if result['clients'] == 1 else 's'}" \
        + where


def show_kick(result: dict) -> str:
    where = f" from #{result['room']}" if result.get("room") else ""
    if result.get("account"):
        where += f" (account {result['account']})"
    return f"kicked {result['kicked']}{where}" \
        + (f" (on node {result['node']})" if result.get("node") else "")


def show_topic(result: dict) -> str:
    return f"topic of #{result['room']}: {result['topic']}" if result["topic"] else \
        f"#{result['room']} has no topic"


REASON = Arg("reason", "shown to the client and the room; also as words after the "
             "nickname (the IRC habit)", flag="--reason", words=True, required=False)

SPECS = {spec.name: spec for spec in (
    Spec("who", "list connected clients", "List connected clients, sorted by nickname, or "
         "the members of one room (in a cluster: every node's, with a NODE column; another "
         "node's IDLE, SENT and RECEIVED show as -). A ROOMS column names each client's "
         "rooms where clients are in several.",
         (Arg("room", "list only the members of this room (#dev or dev)", required=False),),
         show_who),
    Spec("rooms", "list the rooms", "List the rooms: members (every node's) and topic.",
         (), show_rooms),
    Spec("kick", "disconnect a client, or put it out of a room",
         "Disconnect a client, or with --room put it out of that room alone (a kick from the "
         "last room it is in disconnects it); it and the room see the reason. With --account "
         "NAME (and no NICKNAME), every member logged in to that account.",
         (Arg("nickname", "the client's nickname (case-insensitive)", required=False),
          Arg("account", "every member logged in to this account", flag="--account",
              required=False, metavar="NAME"),
          Arg("room", "out of this room only", flag="--room", required=False,
              metavar="ROOM"), REASON),
         show_kick, one_of=("nickname", "account")),
    Spec("stats", "show counters", "Show the daemon's counters (in a cluster, also the "
         "totals of every node, naming any node that did not answer in time).", (),
         show_stats),
    Spec("say", "announce to every client, or to one room",
         "Send a server announcement to every client (once each), or with --room to that "
         "room's members.",
         (Arg("room", "to this room only", flag="--room", required=False, metavar="ROOM"),
          Arg("text", "the announcement", words=True)), show_say),
    Spec("topic", "show or set a room's topic",
         "Show a room's topic, or set it (every member of the room sees it, set by "
         "`operator`), or clear it.",
         (Arg("room", "the room (#dev or dev)"),
          Arg("text", "the new topic", words=True, required=False),
          Arg("clear", "clear the topic", flag="--clear", required=False, boolean=True)),
         show_topic),
    Spec("ban", "ban an address, a network or a nickname",
         "Ban TARGET (an address or network such as 203.0.113.7 or 2001:db8::/32, else a "
         "nickname); every matching client is kicked at once. Kept on disk: bans survive "
         "restarts.",
         (Arg("target", "address, network or nickname", required=False),
          Arg("account", "ban this account instead: its logins are refused and its members "
              "kicked (no TARGET)", flag="--account", required=False, metavar="NAME"),
          Arg("for", "how long: 90s, 15m, 2h, 7d (default: until unbanned)", flag="--for",
              required=False, metavar="DURATION"),
          Arg("reason", "shown to the banned client and the room; also as words after the "
              "target, as for kick", flag="--reason", words=True, required=False),
          Arg("force", "needed for a ban that matches every address (0.0.0.0/0, ::/0), or "
              "that would kick more than ban_force_over members (they are named first)",
              flag="--force", required=False, boolean=True)),
         show_ban, one_of=("target", "account")),
    Spec("unban", "lift a ban", "Lift the ban on TARGET, or on an account.",
         (Arg("target", "as it was banned", required=False),
          Arg("account", "lift the ban on this account (no TARGET)", flag="--account",
              required=False, metavar="NAME")),
         lambda result: f"unbanned {'account ' if result.get('account') else ''}"
                        f"{result['unbanned']}", one_of=("target", "account")),
    Spec("bans", "list the bans", "List the bans in force.", (), show_bans),
    Spec("account", "manage accounts: add, passwd, del, list, role",
         "Accounts own their nicknames (nick_reservation) and carry a role: user, moderator "
         "(may kick, ban, unban from a client) or bot (may log in from several connections, "
         "joins without notices). `account add NAME [ROLE]` and `account passwd NAME` read "
         "the password from the terminal (asked twice), or one line of standard input; never "
         "from the command line. `account role NAME ROLE`, `account del NAME`, `account "
         "list`.",
         (Arg("action", "add, passwd, del, list or role", metavar="ACTION"),
          Arg("name", "the account (a nickname)", required=False, metavar="NAME"),
          Arg("role", "user, moderator or bot (for add and role)", required=False,
              metavar="ROLE")),
         show_account),
    Spec("history", "show a room's lasting history",
         "Show a room's messages from the lasting history: the newest (at most --limit), "
         "or those since a time (ISO 8601, UTC: 2026-12-06T09:00:00Z), oldest first.",
         (Arg("room", "the room (#dev or dev)"),
          Arg("since", "from this time on", flag="--since", required=False, metavar="TIME"),
          Arg("limit", "messages at most (default: history_page)", flag="--limit",
              required=False,
              metavar="N")),
         show_history),
    Spec("forget", "remove a person's messages from history and search",
         "Remove every message of NICK, or of the account NICK names, from the lasting "
         "history and its search (logged with who asked).",
         (Arg("who", "a nickname or an account's name", metavar="NICK"),),
         lambda result: f"forgot {result['count']} message"
                        f"{'' if result['count'] == 1 else 's'} of {result['who']}"),
    Spec("upgrade", "load new code without dropping a client",
         "Re-execute the daemon in place (same PID) with the code and settings now "
         "installed, carrying every plaintext client through; TLS clients are asked to "
         "reconnect. Waits: exit 0 once the new image serves, 1 with the reason when the "
         "pre-flight refuses it (the daemon then runs on as it was).",
         (Arg("check", "run the pre-flight alone (new code imports, config loads)",
              flag="--check", required=False, boolean=True),),
         show_upgrade),
)}
