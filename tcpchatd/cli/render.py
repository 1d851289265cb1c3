"""How tcpchat-client shows what the server sends: safe, aligned, optionally coloured.

Nothing a sender writes can look like a line from someone else: a message's continuation
lines are indented under its text, and every control, bidi or invisible character is
shown as a visible escape (`\\x1b`, `<U+202E>`). Lines are prompt_toolkit formatted text
(a list of (style, text) pairs), so colours come from prompt_toolkit's own styles and
output, never from escape sequences written here; `plain()` drops the styles for a pipe
or NO_COLOR.
"""

from __future__ import annotations

import functools
import unicodedata
import zlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import regex

Fragments = list[tuple[str, str]]

# styles by name; prompt_toolkit turns them into whatever the terminal understands
NICK_COLOURS = ("ansired", "ansigreen", "ansiyellow", "ansiblue", "ansimagenta", "ansicyan",
                "ansibrightred", "ansibrightgreen", "ansibrightblue", "ansibrightmagenta")
OWN_STYLE = "bold"
NOTICE_STYLE = "ansibrightblack"
ROOM_STYLE = "ansicyan"
MENTION_STYLE = "reverse"
RECEIPT_STYLES = {"full": "ansigreen", "partial": "ansiyellow", "none": "ansired"}
TAB = "    "
RECEIPT_EXCERPT = 24  # characters of a message shown beside its receipt


def nick_style(nickname: str, own: str | None) -> str:
    """The same colour for the same nickname in every session; one's own in bold."""
    if own is not None and nickname.casefold() == own.casefold():
        return OWN_STYLE
    return NICK_COLOURS[zlib.crc32(nickname.casefold().encode()) % len(NICK_COLOURS)]


ZWJ = "\u200d"
VARIATION_SELECTORS = "\ufe0e\ufe0f"


@functools.cache
def _emoji() -> regex.Pattern:
    import regex  # Unicode's emoji properties (not in unicodedata)
    return regex.compile(r"[\p{Extended_Pictographic}\p{Emoji_Modifier}]")


def _joins_emoji(text: str, index: int) -> bool:
    """The zero-width joiner at `index` joins two emoji (`👩‍💻`, `🏳️‍🌈`): shown whole.
    Anywhere else (between letters, where it could hide a spoof) it is made visible."""
    before = index - 1
    while before >= 0 and text[before] in VARIATION_SELECTORS:
        before -= 1
    return (before >= 0 and index + 1 < len(text) and _emoji().match(text[before]) is not None
            and _emoji().match(text[index + 1]) is not None)


def visible(text: str) -> str:
    """One line's text with every control, bidi and invisible character made visible
    (but the joiners inside emoji sequences, which a terminal draws as one picture)."""
    out = []
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if char == "\t":
            out.append(TAB)
        elif category == "Cc":
            out.append(f"\\x{ord(char):02x}")
        elif char == ZWJ and _joins_emoji(text, index):
            out.append(char)
        elif category in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"<U+{ord(char):04X}>")
        else:
            out.append(char)
    return "".join(out)


def clock(stamp: object) -> str:
    """HH:MM local time of an ISO 8601 stamp (now when there is none)."""
    when = datetime.now()
    if isinstance(stamp, str):
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
        except ValueError:
            pass
    return when.strftime("%H:%M")


def _body(lead: Fragments, text: str, own: str | None, style: str = "") -> Fragments:
    """`lead` then text; continuation lines indented to the column where the text starts."""
    indent = " " * sum(len(part) for _, part in lead)
    lines = text.split("\n")
    fragments = list(lead)
    for number, line in enumerate(lines):
        if number:
            fragments.append(("", "\n" + indent))
        fragments += _mentions(visible(line), own, style)
    return fragments


def _mentions(line: str, own: str | None, style: str) -> Fragments:
    """The line with mentions of one's own nickname highlighted."""
    if not own:
        return [(style, line)]
    fragments, folded, key, start = [], line.casefold(), own.casefold(), 0
    position = folded.find(key) if len(folded) == len(line) else -1
    while position >= 0:
        fragments.append((style, line[start:position]))
        fragments.append((MENTION_STYLE, line[position:position + len(own)]))
        start = position + len(own)
        position = folded.find(key, start)
    fragments.append((style, line[start:]))
    return [f for f in fragments if f[1]]


def mentions(frame: dict, own: str | None) -> bool:
    """True when a message from someone else names one's own nickname."""
    if not own or frame.get("type") != "message" or frame.get("nickname") == own:
        return False
    return own.casefold() in str(frame.get("message", "")).casefold()


def _in(room: str | None) -> list[tuple[str, str]]:
    """The mark of a line from another room than the one being talked in."""
    return [(ROOM_STYLE, f"#{visible(room)} ")] if room is not None else []


def message(frame: dict, own: str | None, room: str | None = None) -> Fragments:
    """A chat message: `HH:MM nick: text`, `HH:MM * nick waves`, or a private one; from
    another `room` than the current one, `HH:MM #room nick: text`."""
    text = str(frame.get("message", ""))
    sender = frame.get("nickname")
    stamp = clock(frame.get("time"))
    if not isinstance(sender, str):  # the original server: the text holds `nick: `
        sender, sep, rest = text.partition(": ")
        if not sep or "\n" in sender:
            return _body([("", f"{stamp} ")], text, own)
        text = rest
    else:
        for prefix in (f"{sender} (private): ", f"{sender}: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
    who = (nick_style(sender, own), visible(sender))
    if frame.get("private"):
        lead = [("", f"{stamp} "), ("italic", "[private] "), who, ("", ": ")]
    elif frame.get("action"):
        lead = [("", f"{stamp} "), *_in(room), ("", "* "), who, ("", " ")]
    else:
        lead = [("", f"{stamp} "), *_in(room), who, ("", ": ")]
    return _body(lead, text, own)


def notice(frame: dict, room: str | None = None) -> Fragments:
    """A system frame: `HH:MM -- text` (`HH:MM -- #room text` from another room)."""
    return _body([(NOTICE_STYLE, f"{clock(frame.get('time'))} -- "), *_in(room)],
                 str(frame.get("message", "")), None, NOTICE_STYLE)


def history(frame: dict, own: str | None, room: str | None = None) -> list[Fragments]:
    """The history frame as the messages it holds, one block each."""
    entries = frame.get("messages")
    if not isinstance(entries, list):
        return [notice(frame, room)]
    where = f" in #{visible(room)}" if room is not None else ""
    blocks = [[(NOTICE_STYLE, f"-- {len(entries)} earlier message"
                              f"{'' if len(entries) == 1 else 's'}{where} --")]]
    for entry in entries:
        if isinstance(entry, dict):
            blocks.append(message({"type": "message", **entry}, own, room))
    return blocks


def search(frame: dict, own: str | None) -> list[Fragments]:
    """A search's matches, newest first, each with its time."""
    entries = [e for e in frame.get("messages") or () if isinstance(e, dict)]
    room = frame.get("room")
    where = f" in #{visible(room)}" if isinstance(room, str) else ""
    blocks = [[(NOTICE_STYLE, f"-- {len(entries)} match{'' if len(entries) == 1 else 'es'}"
                              f"{where} --")]]
    blocks += [message({"type": "message", **entry}, own) for entry in entries]
    return blocks


def rooms(listed: list, mine: Iterable[str]) -> list[Fragments]:
    """The server's rooms: `#dev  3 members  topic`, those one is in marked `*`."""
    mine = set(mine)
    blocks: list[Fragments] = [[(NOTICE_STYLE, f"-- {len(listed)} room"
                                               f"{'' if len(listed) == 1 else 's'} --")]]
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("room"), str):
            continue
        name, count = entry["room"], entry.get("members", 0)
        topic = visible(str(entry.get("topic") or ""))
        blocks.append([("bold" if name in mine else "", f"{'*' if name in mine else ' '} "
                                                        f"#{visible(name)}"),
                       ("", f"  {count} member{'' if count == 1 else 's'}"),
                       (NOTICE_STYLE, f"  {topic}" if topic else "")])
    return blocks


def receipt(delivered: int | None, recipients: int | None, text: str,
            reason: str | None = None) -> Fragments:
    """`✓ 3/3 start of the message`, partial `◐ 2/3`, none `✗ 0/3`."""
    excerpt = _excerpt(text)
    if delivered is None:  # the original server: a bare confirm from the first recipient
        mark, kind, counts = "\u2713", "full", ""
    elif delivered == 0:  # counts only where the server gave them (not for an error)
        mark, kind = "\u2717", "none"
        counts = f" {delivered}/{recipients}" if recipients is not None else ""
    elif recipients is not None and delivered < recipients:
        mark, kind, counts = "\u25d0", "partial", f" {delivered}/{recipients}"
    else:
        mark, kind, counts = "\u2713", "full", f" {delivered}/{recipients}"
    fragments = [(RECEIPT_STYLES[kind], f"  {mark}{counts}"), ("", f" {excerpt}")]
    if reason:
        fragments.append((NOTICE_STYLE, f" ({reason})"))
    return fragments


def no_receipt(text: str, reason: str) -> Fragments:
    """`? start of the message (no receipt: reason)`: sent, but nobody can say if it arrived."""
    return [(RECEIPT_STYLES["partial"], "  ?"), ("", f" {_excerpt(text)}"),
            (NOTICE_STYLE, f" (no receipt: {reason})")]


def _excerpt(text: str) -> str:
    excerpt = visible(text.replace("\n", " "))
    return excerpt if len(excerpt) <= RECEIPT_EXCERPT else excerpt[:RECEIPT_EXCERPT - 1] + "…"


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)
