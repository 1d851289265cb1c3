"""A parser of tcpchatd's log lines as rsyslog files them, written from DESIGN.md alone.

`2026-11-27T20:49:55.998675+00:00 host tcpchatd[4242]: EVENT key=value key="json" ...`
A value is bare ([A-Za-z0-9._:@/+-]+) or a JSON string. Must not import the package.
"""

from __future__ import annotations

import json
import re

LINE = re.compile(r"^(?P<time>\S+) (?P<host>\S+) (?P<tag>[^\[\s]+)\[(?P<pid>\d+)\]: (?P<msg>.*)$")
BARE = re.compile(r"[A-Za-z0-9._:@/+-]+")


def parse_message(msg: str) -> tuple[str, dict[str, str]]:
    event, _, rest = msg.partition(" ")
    fields: dict[str, str] = {}
    pos = 0
    decoder = json.JSONDecoder()
    while pos < len(rest):
        key_end = rest.index("=", pos)
        key = rest[pos:key_end]
        assert re.fullmatch(r"[a-z_]+", key), f"bad key {key!r} in {msg!r}"
        pos = key_end + 1
        if rest.startswith('"', pos):
            value, pos = decoder.raw_decode(rest, pos)
        else:
            match = BARE.match(rest, pos)
            assert match, f"bad bare value at {rest[pos:pos + 20]!r}"
            value, pos = match.group(), match.end()
        fields[key] = value
        if pos < len(rest):
            assert rest[pos] == " ", f"expected a space at {rest[pos:pos + 20]!r}"
            pos += 1
    return event, fields


def parse_file(path: str) -> list[tuple[str, dict]]:
    """[(event, fields)] of every line; fails on any line that does not parse."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            match = LINE.match(line)
            assert match, f"not a syslog line: {line!r}"
            assert match["tag"] == "tcpchatd", line
            assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in match["msg"]), line
            events.append(parse_message(match["msg"]))
    return events
