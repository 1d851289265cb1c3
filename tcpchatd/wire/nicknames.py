"""Nickname and room-name rules: what a name may hold and when two are the same; pure,
no sockets. A room's name follows the nickname's rules (but for the address rule), after
an optional `#`, which is not part of it: `#dev` and `dev` are one room.

Two nicknames are the same when their keys are equal: Unicode's identifier caseless
match (NFKC(casefold(NFKC(name)))), then the confusable skeleton of UTS #39 (from ICU's
SpoofChecker, which ships Unicode's confusables data), folded again. So `ANN`, `ａｎｎ`
(fullwidth) and `ann` collide, and so do look-alikes of one script or several: all-Cyrillic
`роре` and `pope`, Latin with Armenian `bօb` and `bob`, `ɑnn` (U+0251) and `ann`.
A nickname is refused (`nickname_invalid`, with the reason) when it:

- is empty, too long, or not UTF-8;
- holds a space, a control, format or other invisible (default-ignorable) character,
  or is made of blank-looking characters (the Hangul fillers and the Braille blank
  are neither spaces nor default-ignorable, hence the short explicit list);
- mixes scripts beyond Unicode TS #39's "moderately restrictive" level: one script;
  or Latin with Han, Hiragana and Katakana (Japanese), with Han and Bopomofo
  (Chinese) or with Han and Hangul (Korean); or Latin with one other recommended
  script except Cyrillic and Greek, whose letters look like Latin ones (`аnn`);
- uses a letter of no script recommended for identifiers (UAX #31, table 5);
- parses as an IP address or network: bans take those as targets.

Script properties come from the `regex` package (Unicode's Script_Extensions), not
from tables written here; the only lists here are the standard's names of scripts. It is
imported by prepare() (the daemon calls it once its loops serve) or at the first nickname
checked, not with this module: the new image of a hitless upgrade serves its carried
clients first (the import costs ~10 ms of that pause). ICU likewise (~50 ms): the room
keeps each member's key from its join, and an upgrade carries the keys.
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors
from .errors import ProtocolError

if TYPE_CHECKING:
    import icu
    import regex

# UAX #31 table 5, the scripts recommended for identifiers (ISO 15924 codes).
RECOMMENDED_SCRIPTS = (
    "Arab", "Armn", "Beng", "Bopo", "Cyrl", "Deva", "Ethi", "Geor", "Grek", "Gujr", "Guru",
    "Hang", "Hani", "Hebr", "Hira", "Kana", "Knda", "Khmr", "Laoo", "Latn", "Mlym", "Mymr",
    "Orya", "Sinh", "Taml", "Telu", "Thaa", "Thai", "Tibt")
# TS #39 section 5.2: the sets that "highly restrictive" allows besides a single script.
CJK_SETS = (("Latn", "Hani", "Hira", "Kana"), ("Latn", "Hani", "Bopo"),
            ("Latn", "Hani", "Hang"))
# Scripts that may not join Latin at the "moderately restrictive" level.
LOOK_ALIKE_SCRIPTS = ("Cyrl", "Grek")
# Visually blank, yet neither white space nor default-ignorable: U+115F, U+1160 and
# U+3164, U+FFA0 (Hangul fillers), U+2800 (Braille pattern blank).
BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")

_INVISIBLE = (r"[\p{White_Space}\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Z}"
              r"\p{Default_Ignorable_Code_Point}]")
_NEUTRAL = r"\p{scx=Zyyy}\p{scx=Zinh}"  # Common and Inherited go with any script


@functools.cache
def _invisible() -> regex.Pattern:
    import regex  # see the module's docstring: not before the first nickname
    return regex.compile(_INVISIBLE)


@functools.cache
def _spoof_checker() -> icu.SpoofChecker:
    import icu  # PyICU (pip: pyicu-wheels; Debian: python3-icu); see the module's docstring
    return icu.SpoofChecker()


def prepare() -> None:
    """Import and compile what every check needs, now rather than at the first join."""
    _invisible()
    _spoof_checker()


def _covered_by(scripts: tuple[str, ...]) -> regex.Pattern:
    """A pattern for names whose every character belongs to one of `scripts`."""
    import regex
    classes = "".join(rf"\p{{scx={script}}}" for script in scripts)
    return regex.compile(rf"[{classes}{_NEUTRAL}]+")


@functools.cache
def _script_patterns() -> tuple[regex.Pattern, tuple[regex.Pattern, ...]]:
    """(any recommended script, the allowed mixes), compiled when the first non-ASCII
    nickname comes: a daemon's start (and an upgrade's pause) need not wait for them."""
    allowed = tuple(
        [_covered_by((script,)) for script in RECOMMENDED_SCRIPTS]
        + [_covered_by(scripts) for scripts in CJK_SETS]
        + [_covered_by(("Latn", script)) for script in RECOMMENDED_SCRIPTS
           if script not in LOOK_ALIKE_SCRIPTS + ("Latn",)])
    return _covered_by(RECOMMENDED_SCRIPTS), allowed


def _fold(name: str) -> str:
    """UTS #31's identifier caseless match: NFKC(casefold(NFKC(name)))."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


@functools.lru_cache(maxsize=65536)
def nickname_key(name: str) -> str:
    """What makes two nicknames the same: the caseless match, then the confusable skeleton
    (UTS #39), folded again (the skeleton of `0` is `O`: `b0b` is `bob`)."""
    folded = _fold(name)
    return _fold(_spoof_checker().getSkeleton(0, folded))


def room_key(name: str) -> str:
    """What makes two room names the same (as for nicknames)."""
    return nickname_key(name)


def same_spelling(one: str, other: str) -> bool:
    """The caseless match alone: `Dev` is `dev`, but `dеv` (Cyrillic е) only looks like it."""
    return _fold(one) == _fold(other)


def _invalid(reason: str) -> ProtocolError:
    return ProtocolError(errors.NICKNAME_INVALID, f"nickname {reason}")


def _room_invalid(reason: str) -> ProtocolError:
    return ProtocolError(errors.ROOM_NAME_INVALID, f"room name {reason}")


def check_nickname(raw: bytes, max_length: int) -> str:
    """The nickname as text, or ProtocolError(nickname_invalid) saying why."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("is not valid UTF-8") from None
    _check_name(name, max_length, _invalid)
    _refuse_address(name)
    return name


def check_room_name(text: str, max_length: int) -> str:
    """The room's name (without the `#` it may be written with), or
    ProtocolError(room_name_invalid) saying why."""
    name = text[1:] if text.startswith("#") else text
    _check_name(name, max_length, _room_invalid)
    return name


def _check_name(name: str, max_length: int, invalid: Callable[[str], ProtocolError]) -> None:
    if not name:
        raise invalid("is empty")
    if len(name) > max_length:
        raise invalid(f"is longer than {max_length} characters")
    if _invisible().search(name):
        raise invalid("may not contain spaces, control or invisible characters")
    if name.isascii():  # Latin and Common only: no script to check
        return
    if all(char in BLANK_LOOKING or unicodedata.category(char)[0] == "M" for char in name):
        raise invalid("looks blank")
    if any(char in BLANK_LOOKING for char in name):
        raise invalid("may not contain blank-looking characters")
    any_recommended, allowed = _script_patterns()
    if not any_recommended.fullmatch(name):
        raise invalid("uses a script that names may not use")
    if not any(pattern.fullmatch(name) for pattern in allowed):
        raise invalid("mixes scripts that look alike (such as Latin with Cyrillic or Greek)")


_ADDRESS_LIKE = frozenset("0123456789.")
_V6_LIKE = frozenset("0123456789abcdefABCDEF:.")


def looks_like_an_address(text: str) -> bool:
    """Digits and dots (`127.1`, `10.0.0`), or hex digits and colons with a colon: what an
    operator means as an address even when it does not parse as one. Such a text is
    never a nickname, so a ban on it is never silently a nickname ban."""
    text = unicodedata.normalize("NFKC", text).split("/", 1)[0]
    if not text:
        return False
    return (set(text) <= _ADDRESS_LIKE and "." in text) or (
        ":" in text and set(text) <= _V6_LIKE)


def _refuse_address(name: str) -> None:
    for form in {name, unicodedata.normalize("NFKC", name)}:  # fullwidth digits too
        try:
            ipaddress.ip_network(form, strict=False)
        except ValueError:
            continue
        raise _invalid("may not be an IP address (bans take addresses as targets)")
    if looks_like_an_address(name):
        raise _invalid("may not look like an IP address (bans take addresses as targets)")
